"""Dataset adapters on tiny fake trees in the official layouts (cocostuff, cityscapes, potsdam, directory)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import LIST7, make_cityscapes, make_coco, make_directory, make_potsdam, png, rgb, shared_coco, text

from stego_steps import datasets, images, validate
from stego_steps.errors import UserError
from stego_steps.index import COLUMNS, SPLITS, read_index, row_box

# ---------------------------------------------------------------------------------------------------------
# COCO-Stuff


def test_coco_classes_table_matches_shared_mapping():
    shared = shared_coco()
    fine_to_coarse = json.loads((shared / "fine182_to_coarse27.json").read_text())
    names = (shared / "coarse27_names.txt").read_text().split()
    table = pd.read_csv(datasets.COCO_CLASSES_TABLE)
    assert list(table.columns) == ["fine_id", "fine_name", "coarse_id", "coarse_name"]
    assert table["fine_id"].tolist() == list(range(182))
    assert {int(k): v for k, v in fine_to_coarse.items()} == dict(zip(table["fine_id"], table["coarse_id"],
                                                                        strict=True))
    assert all(names[c] == n for c, n in zip(table["coarse_id"], table["coarse_name"], strict=True))
    assert table["fine_name"].is_unique

    classes = datasets.load_coco_classes()
    assert classes["names"] == names
    lut = classes["lut"]
    assert len(lut) == 256
    assert [lut[i] for i in range(182)] == [fine_to_coarse[str(i)] for i in range(182)]
    assert set(lut[182:]) == {-1}


def test_cocostuff_rows_and_labels(tmp_path):
    root = make_coco(tmp_path / "coco", ["000000000009", "000000000025"], ["000000000139"])
    splits, classes = datasets.build_index("cocostuff", {"root": str(root), "curated_url": ""})
    assert [r["id"] for r in splits["train"]] == ["000000000009", "000000000025"]
    row = splits["val"][0]
    assert row["image"] == str(root / "images" / "val2017" / "000000000139.jpg")
    assert row["label"] == str(root / "annotations" / "val2017" / "000000000139.png")
    assert classes["names"][9] == "person-things" and len(classes["names"]) == 27
    mapped = images.apply_lut(images.read_label(row["label"]), classes["lut"])
    assert set(np.unique(mapped)) == {-1, 9, 23}
    assert (mapped[:12] == 9).all() and (mapped[12:, :16] == 23).all() and (mapped[12:, 16:] == -1).all()


def test_cocostuff_train_list_setting_and_missing_image(tmp_path):
    root = make_coco(tmp_path / "coco", ["000000000009"], ["000000000139"],
                     train_list="Coco164kFull_Stuff_Coarse")
    splits, _ = datasets.build_index("cocostuff", {"root": str(root), "curated_url": "",
                                                   "train_list": "Coco164kFull_Stuff_Coarse"})
    assert [r["id"] for r in splits["train"]] == ["000000000009"]
    # Without the key: the list the official training used, not the smaller _7 list.
    assert datasets.build_index("cocostuff", {"root": str(root), "curated_url": ""})[0] == splits
    text(root / "curated" / "val2017" / f"{LIST7}.txt", ["000000000139", "000000000285"])
    with pytest.raises(FileNotFoundError, match="000000000285.jpg"):
        datasets.build_index("cocostuff", {"root": str(root), "curated_url": "",
                                           "train_list": "Coco164kFull_Stuff_Coarse"})


def test_cocostuff_missing_list_without_url(tmp_path):
    root = make_coco(tmp_path / "coco", ["000000000009"], ["000000000139"])
    (root / "curated" / "val2017" / f"{LIST7}.txt").unlink()
    with pytest.raises(FileNotFoundError, match=f"val2017/{LIST7}.txt.*curated_url"):
        datasets.build_index("cocostuff", {"root": str(root), "curated_url": "", "train_list": LIST7})


def test_fetch_curated_lists_file_url(tmp_path, caplog):
    shared = shared_coco()
    url = shared.as_uri() + "/{split}_{name}.txt"
    paths = datasets.fetch_curated_lists(tmp_path, url, lists=[("train2017", LIST7), ("val2017", LIST7)])
    assert paths == [tmp_path / "curated" / "train2017" / f"{LIST7}.txt",
                     tmp_path / "curated" / "val2017" / f"{LIST7}.txt"]
    for path, split in zip(paths, ("train2017", "val2017"), strict=True):
        assert path.read_bytes() == (shared / f"{split}_{LIST7}.txt").read_bytes()
    assert len(paths[0].read_text().split()) == 49629 and len(paths[1].read_text().split()) == 2175
    # Present files are not fetched again (a broken URL does not matter).
    assert datasets.fetch_curated_lists(tmp_path, "file:///nonexistent/{split}/{name}.txt",
                                        lists=[("train2017", LIST7), ("val2017", LIST7)]) == paths

    # A list without a known checksum is accepted with a warning.
    serve = tmp_path / "serve"
    text(serve / "train2017_Custom.txt", ["000000000009"])
    with caplog.at_level(logging.WARNING, logger="stego_steps.datasets"):
        (custom,) = datasets.fetch_curated_lists(tmp_path, serve.as_uri() + "/{split}_{name}.txt",
                                                 lists=[("train2017", "Custom")])
    assert custom.read_text() == "000000000009\n"
    assert "no known checksum" in caplog.text


def test_fetch_curated_lists_checksum_mismatch(tmp_path):
    shared = shared_coco()
    serve = tmp_path / "serve"
    serve.mkdir()
    shutil.copy(shared / f"val2017_{LIST7}.txt", serve / f"val2017_{LIST7}.txt")
    with open(serve / f"val2017_{LIST7}.txt", "a") as f:
        f.write("000000999999\n")
    dest = tmp_path / "root" / "curated" / "val2017" / f"{LIST7}.txt"
    with pytest.raises(datasets.ChecksumError, match=f"val2017/{LIST7}.txt.*Fix: point the 'curated_url'"):
        datasets.fetch_curated_lists(tmp_path / "root", serve.as_uri() + "/{split}_{name}.txt",
                                     lists=[("val2017", LIST7)])
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary left behind
    with pytest.raises(UserError, match="could not download"):
        datasets.fetch_curated_lists(tmp_path / "root", serve.as_uri() + "/missing_{split}_{name}.txt",
                                     lists=[("val2017", LIST7)])


def test_cocostuff_fetches_missing_lists(tmp_path):
    """The adapter downloads a missing val list (real `_7`, checksum verified) before indexing."""
    shared = shared_coco()
    val_ids = (shared / f"val2017_{LIST7}.txt").read_text().split()
    root = make_coco(tmp_path / "coco", ["000000000009"], val_ids[:1], train_list="Tiny")
    (root / "curated" / "val2017" / f"{LIST7}.txt").unlink()
    jpg = root / "images" / "val2017" / f"{val_ids[0]}.jpg"
    png = root / "annotations" / "val2017" / f"{val_ids[0]}.png"
    for i in val_ids[1:]:
        (root / "images" / "val2017" / f"{i}.jpg").symlink_to(jpg)
        (root / "annotations" / "val2017" / f"{i}.png").symlink_to(png)
    settings = {"root": str(root), "train_list": "Tiny",
                "curated_url": shared.as_uri() + "/{split}_{name}.txt"}
    splits, _ = datasets.build_index("cocostuff", settings)
    assert [r["id"] for r in splits["val"]] == val_ids
    assert (root / "curated" / "val2017" / f"{LIST7}.txt").read_bytes() == \
        (shared / f"val2017_{LIST7}.txt").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# Cityscapes, Potsdam, directory


def test_cityscapes_rows_lut_and_five_crop(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    splits, classes = datasets.build_index("cityscapes", {"root": str(root)})
    assert [r["id"] for r in splits["train"]] == ["aachen_000000_000019", "aachen_000001_000019",
                                                  "bochum_000000_000019", "bochum_000001_000019"]
    assert len(splits["val"]) == 2 and all(r.get("x0") is None for r in splits["val"])
    assert splits["val"][0]["label"] == str(
        root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png")
    assert len(classes["names"]) == 27 and classes["names"][0] == "road" and classes["names"][26] == "bicycle"
    raw = images.read_label(splits["train"][0]["label"])
    mapped = images.apply_lut(raw, classes["lut"])
    expected = np.where((raw >= 7) & (raw <= 33), raw - 7, -1)
    np.testing.assert_array_equal(mapped, expected)
    assert {0, 26, -1} <= set(np.unique(mapped)) and (mapped[raw == 3] == -1).all()  # 0..6 are void

    cropped, _ = datasets.build_index("cityscapes", {"root": str(root), "five_crop": True, "crop_ratio": 0.5})
    assert len(cropped["train"]) == 5 * 4 and len(cropped["val"]) == 2
    assert [r["id"] for r in cropped["train"][:5]] == [f"aachen_000000_000019_c{k}" for k in range(5)]
    assert all(r["label"] == splits["train"][0]["label"] for r in cropped["train"][:5])


@pytest.mark.parametrize("hw", [(23, 37), (24, 32), (7, 5)])
def test_five_crop_boxes_match_torchvision(tmp_path, hw):
    import torch
    from torchvision.transforms import functional as tf

    h, w = hw
    arr = rgb(h, w, 3)
    path = png(tmp_path / "img.png", arr)
    rows = datasets.five_crop_rows([{"id": "x", "image": str(path), "label": ""}], 0.5)
    assert [r["id"] for r in rows] == [f"x_c{k}" for k in range(5)]
    crop = (int(h * 0.5), int(w * 0.5))
    crops = tf.five_crop(torch.from_numpy(arr).permute(2, 0, 1), list(crop))
    for row, ref in zip(rows, crops, strict=True):
        assert (row["y1"] - row["y0"], row["x1"] - row["x0"]) == crop
        got = arr[row["y0"]:row["y1"], row["x0"]:row["x1"]]
        np.testing.assert_array_equal(got, ref.permute(1, 2, 0).numpy())
        # The image pipeline cuts the same pixels.
        np.testing.assert_array_equal(np.asarray(images.read_image(path).crop(
            (row["x0"], row["y0"], row["x1"], row["y1"]))), got)


def test_potsdam_rows_lut_and_mat_sizes(tmp_path):
    root = make_potsdam(tmp_path / "potsdam")
    splits, classes = datasets.build_index("potsdam", {"root": str(root)})
    assert [r["id"] for r in splits["train"]] == ["0", "1", "2"] and [r["id"] for r in splits["val"]] == ["3"]
    assert classes["names"] == ["roads and cars", "buildings and clutter", "trees and vegetation"]
    raw = images.read_label(splits["val"][0]["label"])
    mapped = images.apply_lut(raw, classes["lut"])
    fine_to_coarse = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: -1}
    np.testing.assert_array_equal(mapped, np.vectorize(fine_to_coarse.get)(raw))
    assert images.read_image(splits["val"][0]["image"]).size == (20, 10)
    assert datasets.image_size(splits["val"][0]["image"]) == (10, 20)

    cropped, _ = datasets.build_index("potsdam", {"root": str(root), "five_crop": True, "crop_ratio": 0.5})
    assert len(cropped["train"]) == 15
    assert [(r["x0"], r["y0"], r["x1"], r["y1"]) for r in cropped["train"][:5]] == [
        (0, 0, 10, 5), (10, 0, 20, 5), (0, 5, 10, 10), (10, 5, 20, 10), (5, 2, 15, 7)]

    (root / "gt" / "1.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"gt/1\.mat"):
        datasets.build_index("potsdam", {"root": str(root)})


def test_directory_with_labels(tmp_path):
    root = make_directory(tmp_path / "mine")
    settings = {"root": str(root), "class_names": ["sky", "grass", "road"], "ignore_label": 255}
    splits, classes = datasets.build_index("directory", settings)
    assert [r["id"] for r in splits["train"]] == ["a", "b", "c"]
    assert splits["train"][1]["image"].endswith("b.jpg") and splits["train"][1]["label"].endswith("b.png")
    assert classes["names"] == ["sky", "grass", "road"]
    raw = images.read_label(splits["train"][2]["label"])
    assert set(np.unique(images.apply_lut(raw, classes["lut"]))) == {2, -1}
    assert classes["lut"][:4] == [0, 1, 2, -1] and classes["lut"][255] == -1

    (root / "labels" / "val" / "e.png").unlink()
    png(root / "labels" / "val" / "zz.png", np.zeros((16, 20), np.uint8))
    assert datasets.labelled_splits(root) == ["train", "val"] and datasets.has_labels_folder(root)
    with pytest.raises(FileNotFoundError, match=r"not paired.*e\.jpg: no label .*zz\.png: a label without an image"):
        datasets.build_index("directory", settings)
    png(root / "imgs" / "train" / "b.png", np.zeros((16, 20, 3), np.uint8))  # b.jpg exists
    assert "imgs/train: 2 files share the name stem 'b' (b.jpg, b.png)" in datasets.directory_problems(root)[0]


def test_directory_without_labels(tmp_path):
    root = make_directory(tmp_path / "mine", labels=False)
    splits, classes = datasets.build_index("directory", {"root": str(root), "class_names": ["a", "b"]})
    assert all(r["label"] == "" for rows in splits.values() for r in rows)
    assert len(splits["train"]) == 3 and len(splits["val"]) == 2
    assert datasets.labelled_splits(root) == [] and not datasets.has_labels_folder(root)
    assert sorted(datasets.directory_images(root, "val")) == ["d", "e"] and datasets.directory_images(root, "x") is None
    with pytest.raises(ValueError, match="class_names"):
        datasets.build_index("directory", {"root": str(root)})
    with pytest.raises(ValueError, match="ignore_label 1"):
        datasets.build_index("directory", {"root": str(root), "class_names": ["a", "b"], "ignore_label": 1})


@pytest.mark.parametrize("kind", ["cocostuff", "cityscapes", "potsdam", "directory"])
def test_missing_root_and_split_folder(tmp_path, kind):
    settings = {"root": str(tmp_path / "nowhere"), "class_names": ["a"], "curated_url": ""}
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expects the layout.*docs/datasets.md"):
        datasets.build_index(kind, settings)
    makers = {"cocostuff": lambda r: make_coco(r, ["1"], ["2"]), "cityscapes": make_cityscapes,
              "potsdam": make_potsdam, "directory": make_directory}
    root = makers[kind](tmp_path / "ds")
    victim = {"cocostuff": "annotations/val2017", "cityscapes": "gtFine/val", "potsdam": "gt",
              "directory": "imgs/val"}[kind]
    shutil.rmtree(root / victim)
    settings["root"] = str(root)
    with pytest.raises(FileNotFoundError, match=rf"{victim}.*expects the layout.*docs/datasets.md"):
        datasets.build_index(kind, settings)


@pytest.mark.parametrize("kind", ["cocostuff", "cityscapes", "potsdam", "directory"])
def test_prepare_writes_index_and_classes(tmp_path, kind):
    makers = {"cocostuff": lambda r: make_coco(r, ["1", "2"], ["3"]), "cityscapes": make_cityscapes,
              "potsdam": make_potsdam, "directory": make_directory}
    root = makers[kind](tmp_path / "ds")
    # crop_ratio 0.8: five-crops of the 10x20 Potsdam tiles need at least 8 pixels a side (validate.MIN_SIDE)
    settings = {"root": str(root), "five_crop": True, "crop_ratio": 0.8, "curated_url": "",
                "class_names": ["a", "b", "c"]}
    out = tmp_path / "index"
    counts = validate.write_index(kind, settings, out)
    classes = json.loads((out / "classes.json").read_text())
    assert classes["names"] and len(classes["lut"]) >= 256
    for split in SPLITS:
        frame = read_index(out / f"{split}.csv")
        assert len(frame) == counts[split] > 0
        assert list(frame.columns) == COLUMNS
        if split == "train":
            assert frame["x0"].notna().all() and frame["id"].str.endswith("_c4").sum() == len(frame) // 5
            first = frame.iloc[0]
            assert row_box(first) == (0, 0, int(first["x1"]), int(first["y1"]))
        else:
            assert frame["x0"].isna().all() and row_box(frame.iloc[0]) is None
        first = frame.iloc[0]
        img = images.read_image(first["image"])
        assert img.mode == "RGB"
        if first["label"]:
            label = images.apply_lut(images.read_label(first["label"]), classes["lut"])
            assert label.shape == img.size[::-1]
