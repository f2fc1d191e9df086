"""Helpers shared by the tests: running the workflow, synthetic feature stores, fake dataset trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"


def snakemake(workdir: Path, *args: str | Path, configfile: Path | None = TINY, snakefile: Path = SNAKEFILE,
              python: str | Path = sys.executable, cwd: Path | None = None, timeout: float = 900
              ) -> subprocess.CompletedProcess:
    """`python -m snakemake -s SNAKEFILE -d WORKDIR [--configfile CONFIGFILE] ARGS`, output captured."""
    cmd = [python, "-m", "snakemake", "-s", snakefile, "-d", workdir]
    if configfile is not None:
        cmd += ["--configfile", configfile]
    return subprocess.run([str(c) for c in (*cmd, *args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


# ---------------------------------------------------------------------------------------------------------
# feature stores


def default_run(workdir: Path, ds: str = "demo", variant: str = "default", seed: int = 0) -> Path:
    """A run's folder (everything from training onward): results/<ds>/runs/<variant>/seed<seed>."""
    return workdir / "results" / ds / "runs" / variant / f"seed{seed}"


def only_features(workdir: Path, ds: str = "demo") -> Path:
    """The feature-store folder of a dataset that has exactly one (results/<ds>/features/<backbone>_<digest>)."""
    (folder,) = [p for p in (workdir / "results" / ds / "features").iterdir() if p.is_dir()]
    return folder


def only_baseline(workdir: Path, ds: str = "demo", seed: int = 0) -> Path:
    """The baseline folder of a dataset that has exactly one (results/<ds>/baselines/<key>/seed<seed>)."""
    (folder,) = (workdir / "results" / ds / "baselines").glob(f"*/seed{seed}")
    return folder


def write_store(path: Path, n: int = 24, dim: int = 16, grid: int = 8, res: int = 32, n_classes: int = 3,
                seed: int = 0, evaluation: bool = False) -> Path:
    """A synthetic feature store in the `extract` layout: each image has a left and a right region whose
    classes pick one of `n_classes` well-separated feature directions (plus noise)."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((n_classes, dim)) * 3
    classes = rng.integers(0, n_classes, (n, 2))
    half = grid // 2
    feats = np.empty((n, dim, grid, grid), np.float32)
    labels = np.empty((n, res, res), np.int16)
    for i, (a, b) in enumerate(classes):
        feats[i, :, :, :half] = protos[a][:, None, None]
        feats[i, :, :, half:] = protos[b][:, None, None]
        labels[i, :, : res // 2], labels[i, :, res // 2:] = a, b
    feats += rng.standard_normal(feats.shape) * 0.3
    with h5py.File(path, "w") as f:
        f["feats"] = feats.astype(np.float16)
        f["pooled"] = feats.mean(axis=(2, 3))
        f["label"] = labels
        if evaluation:
            f["feats_flip"] = feats[..., ::-1].astype(np.float16)
            f["image"] = np.zeros((n, res, res, 3), np.uint8)
        f.attrs.update(backbone="synthetic", res=res, stride=res // grid, split="train", n_classes=n_classes,
                       class_names=json.dumps([f"c{k}" for k in range(n_classes)]))
    return path


# ---------------------------------------------------------------------------------------------------------
# dataset trees

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cocostuff27"
LIST7 = "Coco164kFull_Stuff_Coarse_7"
LIST_FULL = "Coco164kFull_Stuff_Coarse"  # the default training list


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def jpg(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)
    return path


def text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def shared_coco() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared COCO-Stuff metadata not found at {SHARED}")
    return SHARED


def make_coco(root: Path, train_ids: list[str], val_ids: list[str], train_list: str = LIST_FULL) -> Path:
    for split_dir, ids, name in (("train2017", train_ids, train_list), ("val2017", val_ids, LIST7)):
        for k, i in enumerate(ids):
            jpg(root / "images" / split_dir / f"{i}.jpg", rgb(24, 32, k))
            label = np.full((24, 32), 255, np.uint8)
            label[:12] = 0  # person → 9
            label[12:, :16] = 156  # sky-other → 23
            png(root / "annotations" / split_dir / f"{i}.png", label)
        text(root / "curated" / split_dir / f"{name}.txt", ids)
    return root


def make_cityscapes(root: Path) -> Path:
    cities = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
    for split, names in cities.items():
        for c, city in enumerate(names):
            for n in range(2):
                stem = f"{city}_{n:06d}_000019"
                image = rgb(23, 37, c * 10 + n)
                png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
                label = (np.arange(23 * 37).reshape(23, 37) % 34).astype(np.uint8)  # labelIds 0..33
                png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
                png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgb(23, 37, 0))
    return root


def make_potsdam(root: Path, n: int = 4) -> Path:
    gt = np.array([[0, 1, 2, 3], [4, 5, 255, 0]], np.uint8).repeat(5, 0).repeat(5, 1)  # 10 x 20
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, (10, 20, 4), dtype=np.uint8)
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        (root / "gt").mkdir(parents=True, exist_ok=True)
        savemat(root / "imgs" / f"{i}.mat", {"img": img})
        savemat(root / "gt" / f"{i}.mat", {"gt": gt})
    text(root / "labelled_train.txt", [str(i) for i in range(n - 1)])
    text(root / "labelled_test.txt", [str(n - 1)])
    return root


def make_directory(root: Path, labels: bool = True) -> Path:
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["d", "e"])):
        for k, stem in enumerate(stems):
            ext = ".jpg" if k % 2 else ".png"
            (jpg if ext == ".jpg" else png)(root / "imgs" / split / f"{stem}{ext}", rgb(16, 20, k))
            if labels:
                label = np.full((16, 20), 255, np.uint8)
                label[:, :10] = k % 3
                png(root / "labels" / split / f"{stem}.png", label)
    (root / "imgs" / "train" / "notes.txt").write_text("not an image")
    return root
