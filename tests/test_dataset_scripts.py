"""scripts/{cwfid,ccp,msrc}.py: each dataset's files laid out as a `directory` dataset, read by its adapter
(fake source trees of a few 8×8 images; no data)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from stego_steps.datasets import build_index

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cwfid, ccp, msrc = load("cwfid"), load("ccp"), load("msrc")
RNG = np.random.default_rng(0)


def picture(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def index_of(root: Path, module, ignore: int) -> tuple[dict, dict]:
    return build_index("directory", {"root": str(root), "class_names": module.CLASS_NAMES, "ignore_label": ignore})


def label_of(root: Path, split: str, stem: str) -> np.ndarray:
    return np.asarray(Image.open(root / "labels" / split / f"{stem}.png"))


def test_cwfid(tmp_path: Path) -> None:
    top = tmp_path / "dataset-main"
    for n in range(1, 6):
        picture(top / "images" / f"{n:03d}_image.png")
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[:2] = (0, 255, 0)  # crop
        rgb[2:4] = (255, 0, 0)  # weed
        (top / "annotations").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(top / "annotations" / f"{n:03d}_annotation.png")
    (top / "train_test_split.yaml").write_text("train: [1, 2, 3, 5]\ntest: [4, 5]\n")
    out = tmp_path / "cwfid"
    cwfid.main([str(out), "--from", str(tmp_path)])
    splits, classes = index_of(out, cwfid, cwfid.IGNORE)
    assert {s: len(r) for s, r in splits.items()} == {"train": 3, "val": 2}  # 5 is in val only
    assert np.unique(label_of(out, "val", "004"), return_counts=True)[1].tolist() == [32, 16, 16]
    assert classes["names"] == ["soil", "crop", "weed"]
    cwfid.main([str(out), "--from", str(top)])  # a second layout replaces the first


def test_ccp(tmp_path: Path) -> None:
    top = tmp_path / "clothing-co-parsing"
    tags = ["null", "skin", "hair", "dress", "jeans", "boots", "bag"]
    top.mkdir()
    scipy.io.savemat(top / "label_list.mat", {"label_list": np.array(tags, dtype=object)[None]})
    for n in range(1, 6):
        picture(top / "photos" / f"{n:04d}.jpg")
        (top / "annotations" / "pixel-level").mkdir(parents=True, exist_ok=True)
        gt = np.tile(np.arange(7), (8, 2))[:, :8]  # tag values 0..6, then 0
        scipy.io.savemat(top / "annotations" / "pixel-level" / f"{n:04d}.mat", {"groundtruth": gt.astype(np.uint8)})
    picture(top / "photos" / "0006.jpg")  # a photo without pixel-level annotation is not used
    out = tmp_path / "ccp"
    ccp.main([str(out), "--from", str(top), "--train", "3", "--val", "1"])
    splits, _ = index_of(out, ccp, ccp.IGNORE)
    assert [r["id"] for r in splits["train"]] == ["0001", "0002", "0003"] and splits["val"][0]["id"] == "0005"
    assert label_of(out, "train", "0001")[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    with pytest.raises(SystemExit):
        ccp.main([str(out), "--from", str(top), "--train", "5", "--val", "1"])


def test_msrc(tmp_path: Path) -> None:
    top = tmp_path / "repo" / "MSRC_v2"
    for n in range(12):
        picture(top / "Images" / f"1_{n:02d}_s.bmp")
        seg = np.ones((8, 8), np.uint8)
        seg[4:] = 2  # segment 2 has no class: ignored
        (top / "newsegmentations_mats").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(top / "newsegmentations_mats" / f"1_{n:02d}_s_GT.mat",
                         {"newseg": seg, "newlabels": np.array([[7]], np.uint8)})
    out = tmp_path / "msrc"
    msrc.main([str(out), "--from", str(tmp_path / "repo")])
    splits, classes = index_of(out, msrc, msrc.IGNORE)
    assert {s: len(r) for s, r in splits.items()} == {"train": 10, "val": 2}
    label = label_of(out, "train", "1_00_s")
    assert (label[:4] == 6).all() and (label[4:] == 255).all()  # class 7 (1-based) is sky
    assert classes["names"][6] == "sky" and classes["lut"][255] == -1


def test_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out" / "imgs" / "train").mkdir(parents=True)
    top = tmp_path / "repo" / "MSRC_v2"
    (top / "Images").mkdir(parents=True)
    (top / "newsegmentations_mats").mkdir()
    with pytest.raises(SystemExit):
        msrc.main([str(tmp_path / "out"), "--from", str(tmp_path / "repo")])
    assert "not laid out by a dataset script" in capsys.readouterr().err
