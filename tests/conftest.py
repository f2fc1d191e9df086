import json
import os

import h5py
import numpy as np
import pytest

# Tests never reach a model hub: weights come from files or are seeded random.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_store(path, n=24, dim=16, grid=8, res=32, n_classes=3, seed=0, evaluation=False):
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


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "train.h5")
