"""Every official layout, prepare → evaluate, in process: tiny fake trees, a random ViT, tiny resolutions.

Each stage runs through its module's `main([...])` with the settings the workflow would pass
(`stego_steps.config.stage_settings` on config/config.yaml with the dataset added), so the adapters, the
label mappings and the stage CLIs are checked together without Snakemake.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import LIST7, SHARED, make_cityscapes, make_coco, make_directory, make_potsdam

from stego_steps import config as C
from stego_steps import images, protocol
from stego_steps.index import read_index, row_box
from stego_steps.stages import cluster, evaluate, extract, knn, plan, predict, prepare, probe, segment, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
OVERRIDES = {
    "backbone": "dino_vits8_random", "train_res": 32, "eval_res": 48, "extract_batch": 8, "knn_k": 2,
    "head": {"code_dim": 16},
    "train": {"batch_size": 4, "steps": 3, "checkpoint_every": 10},
    "cluster": {"iterations": 3, "batch_images": 2, "init_images": 4, "n_init": 1},
    "probe": {"steps": 3, "batch_size": 2},
}
ROWS = list(protocol.ROWS)


# ---------------------------------------------------------------------------------------------------------
# Trees (the builders of helpers.py) and an independent statement of each layout's label mapping


def _coco(root: Path) -> dict:
    """Six training images (five-cropped: 30 samples); the val list is the real `_7` list, fetched from the
    file:// URL of the shared metadata and checksum-verified, every id a link to one of three images."""
    if not SHARED.is_dir():
        pytest.skip(f"shared COCO-Stuff metadata not found at {SHARED}")
    val_ids = (SHARED / f"val2017_{LIST7}.txt").read_text().split()
    make_coco(root, [f"{i:012d}" for i in range(1, 7)], val_ids[:3], train_list="Tiny")
    (root / "curated" / "val2017" / f"{LIST7}.txt").unlink()
    for k, i in enumerate(val_ids[3:]):
        (root / "images" / "val2017" / f"{i}.jpg").symlink_to(f"{val_ids[k % 3]}.jpg")
        (root / "annotations" / "val2017" / f"{i}.png").symlink_to(f"{val_ids[k % 3]}.png")
    return {"train_list": "Tiny", "curated_url": SHARED.as_uri() + "/{split}_{name}.txt"}


def _potsdam(root: Path) -> dict:
    make_potsdam(root, n=9)
    (root / "labelled_train.txt").write_text("".join(f"{i}\n" for i in range(6)))
    (root / "labelled_test.txt").write_text("".join(f"{i}.mat\n" for i in range(6, 9)))
    return {}


def _directory(root: Path) -> dict:
    make_directory(root)
    return {"class_names": ["sky", "grass", "road"], "ignore_label": 255}


def _cityscapes(root: Path) -> dict:
    make_cityscapes(root)
    return {}


POTSDAM_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: -1}
# kind → (tree builder, preset, five-crop, raw label value → class id, classes)
LAYOUTS: dict[str, tuple[Callable[[Path], dict], str, bool, Callable[[np.ndarray], np.ndarray], int]] = {
    # stuffthingmaps: 0 = person → person-things (9), 156 = sky-other → sky (23), 255 unlabeled.
    "cocostuff": (_coco, "cocostuff", True, lambda r: np.select([r == 0, r == 156], [9, 23], -1), 27),
    # labelId 7..33 → 0..26, all else ignored.
    "cityscapes": (_cityscapes, "cityscapes", True, lambda r: np.where((r >= 7) & (r <= 33), r - 7, -1), 27),
    "potsdam": (_potsdam, "potsdam", False, lambda r: np.vectorize(lambda v: POTSDAM_COARSE.get(v, 0))(r), 3),
    "directory": (_directory, "demo", False, lambda r: np.where(r < 3, r, -1), 3),
}


def _config(kind: str, root: Path, extra: dict, preset: str, five_crop: bool) -> dict:
    cfg = copy.deepcopy(CONFIG)
    cfg["device"] = "cpu"
    cfg["datasets"][kind] = {"kind": kind, "preset": preset, "root": str(root), **extra,
                             "overrides": {**OVERRIDES, "five_crop": five_crop}}
    C.validate(cfg)
    return cfg


def _run_stages(cfg: dict, ds: str, out: Path, labelled: bool = True) -> None:
    """prepare → plan → extract → knn → train → cluster → backbone K-Means → (linear probes) → predict →
    segment → evaluate, with the arguments the rules pass."""
    idx, feats = out / "index", out / "features"
    prepare.main(["--kind", cfg["datasets"][ds]["kind"], "--settings", json.dumps(C.dataset_settings(cfg, ds)),
                  "--out-dir", str(idx)])
    if ds == "cocostuff":  # the fetched val list has 2,175 ids; keep three for speed
        val = read_index(idx / "val.csv")
        assert len(val) == 2175
        val.head(3).to_csv(idx / "val.csv", index=False)
    settings = {s: C.stage_settings(cfg, ds, "extract", s) for s in ("train", "val")}
    plan.main(["--index", f"train={idx / 'train.csv'}", f"val={idx / 'val.csv'}", "--settings",
               json.dumps(settings), "--store-dir", str(feats), "--out", str(out / "plan.txt")])
    for split in ("train", "val"):
        extract.main(["--index", str(idx / f"{split}.csv"), "--classes", str(idx / "classes.json"), "--split", split,
                      "--settings", json.dumps(settings[split]), "--out", str(feats / f"{split}.h5"),
                      "--device", "cpu"])
    r = C.resolve(cfg, ds)
    cpu = ["--device", "cpu", "--threads", "1"]
    train_h5, val_h5, head = str(feats / "train.h5"), str(feats / "val.h5"), str(out / "head.pt")
    knn.main(["--features", train_h5, "--k", str(r["knn_k"]), "--out", str(out / "knn.npy"), *cpu])
    train.main(["--features", train_h5, "--knn", str(out / "knn.npy"), "--head", head,
                "--settings", json.dumps(C.stage_settings(cfg, ds, "train")), "--log-csv", str(out / "log.csv"),
                "--resolved", str(out / "settings.json"), *cpu])
    cluster_settings = json.dumps(C.stage_settings(cfg, ds, "cluster"))
    cluster.main(["--features", train_h5, "--head", head, "--settings", cluster_settings,
                  "--out", str(out / "centroids.npy"), *cpu])
    cluster.main(["--features", train_h5, "--settings", cluster_settings, "--out", str(out / "bb_centroids.npy"),
                  *cpu])
    predict.main(["--features", val_h5, "--head", head, "--out", str(out / "codes.h5"), *cpu])
    probes = {"cluster": ["--codes", str(out / "codes.h5"), "--centroids", str(out / "centroids.npy")],
              "backbone_kmeans": ["--centroids", str(out / "bb_centroids.npy")]}
    if labelled:
        probe.main(["--features", train_h5, "--head", head, "--settings",
                    json.dumps(C.stage_settings(cfg, ds, "probe")), "--out", str(out / "linear.pt"), *cpu])
        probes["linear"] = ["--codes", str(out / "codes.h5"), "--linear", str(out / "linear.pt")]
        probe.main(["--features", train_h5, "--settings", json.dumps(C.stage_settings(cfg, ds, "probe")),
                    "--out", str(out / "bb_linear.pt"), *cpu])
        probes["backbone_linear"] = ["--linear", str(out / "bb_linear.pt")]
    segments = []
    for name, args in probes.items():
        segments.append(str(out / f"{name}.0.h5"))
        segment.main(["--features", val_h5, "--probe", name, *args, "--out", segments[-1], "--threads", "1"])
    evaluate.main(["--features", val_h5, "--segments", *segments, "--dataset", ds, "--out-dir", str(out),
                   *([] if labelled else ["--no-labels"])])


def _check_labels(store: Path, index: Path, mapping: Callable[[np.ndarray], np.ndarray], res: int) -> None:
    """The stored labels are the raw label files mapped by the layout's table, cut like the images."""
    frame = read_index(index)
    with h5py.File(store, "r") as f:
        stored = f["label"][...]
    assert len(stored) == len(frame)
    for k, (_, row) in enumerate(frame.iterrows()):
        raw = images.read_label(row["label"]).astype(np.int64)
        np.testing.assert_array_equal(stored[k], images.transform_label(mapping(raw), res, row_box(row)))


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_layout_runs_prepare_to_evaluate(tmp_path, kind):
    build, preset, five_crop, mapping, n_classes = LAYOUTS[kind]
    extra = build(tmp_path / "data")
    cfg = _config(kind, tmp_path / "data", extra, preset, five_crop)
    out = tmp_path / "out"
    _run_stages(cfg, kind, out)

    if kind == "cocostuff":  # fetched from the file:// URL, byte for byte the published list
        fetched = tmp_path / "data" / "curated" / "val2017" / f"{LIST7}.txt"
        assert fetched.read_bytes() == (SHARED / f"val2017_{LIST7}.txt").read_bytes()
    classes = json.loads((out / "index" / "classes.json").read_text())
    assert len(classes["names"]) == n_classes
    train_index = read_index(out / "index" / "train.csv")
    assert train_index["x0"].notna().all() == five_crop
    _check_labels(out / "features" / "train.h5", out / "index" / "train.csv", mapping, 32)
    _check_labels(out / "features" / "val.h5", out / "index" / "val.csv", mapping, 48)
    assert "train" in (out / "plan.txt").read_text() and "free disk" in (out / "plan.txt").read_text()

    table = pd.read_csv(out / "miou.csv")
    assert list(zip(table["probe"], table["crf"], strict=True)) == ROWS
    assert (table["dataset"] == kind).all() and (table["backbone"] == "dino_vits8_random").all()
    n_val = len(read_index(out / "index" / "val.csv"))
    assert (table["n_images"] == n_val).all()
    assert table["pixel_accuracy"].between(0, 100).all() and table["miou"].between(0, 100).all()
    assert (table["pixel_accuracy"] > 0).any()
    per_class = pd.read_csv(out / "per_class_iou.csv")
    assert len(per_class) == len(ROWS) * n_classes


def test_directory_without_labels_ends_with_cluster_shares(tmp_path):
    make_directory(tmp_path / "data", labels=False)
    cfg = _config("directory", tmp_path / "data", {"class_names": ["a", "b", "c"]}, "demo", False)
    out = tmp_path / "out"
    _run_stages(cfg, "directory", out, labelled=False)
    with h5py.File(out / "features" / "val.h5", "r") as f:
        assert "label" not in f
    assert not (out / "miou.csv").exists()
    table = pd.read_csv(out / "clusters.csv")
    assert list(table.columns) == ["dataset", "backbone", "probe", "crf", "cluster", "pixels", "share", "images",
                                   "n_images"]
    rows = [("cluster", False), ("cluster", True), ("backbone_kmeans", False), ("backbone_kmeans", True)]
    assert list(dict.fromkeys(zip(table["probe"], table["crf"], strict=True))) == rows
    for _, group in table.groupby(["probe", "crf"]):
        assert group["cluster"].tolist() == [0, 1, 2]
        assert group["pixels"].sum() == 2 * 48 * 48 and group["share"].sum() == pytest.approx(100.0)
        assert group["images"].between(0, 2).all() and (group["n_images"] == 2).all()
