"""The cluster stage says where its cluster count came from when the store has no labels to check it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import write_store

from stego_steps.stages import cluster

SETTINGS = {"extra_clusters": 1, "iterations": 2, "batch_images": 4, "init_images": 4, "n_init": 1, "seed": 0}


@pytest.mark.parametrize("labelled", [True, False])
def test_cluster_count_source_is_logged(tmp_path: Path, labelled: bool, capfd: pytest.CaptureFixture) -> None:
    store = write_store(tmp_path / "train.h5", n=8)
    if not labelled:
        with h5py.File(store, "a") as f:
            del f["label"]
    cluster.main(["--features", str(store), "--settings", json.dumps(SETTINGS), "--out", str(tmp_path / "c.npy"),
                  "--device", "cpu"])
    assert np.load(tmp_path / "c.npy").shape[0] == 4
    said = "4 clusters: the number of class names in the config (3) plus extra_clusters (1)" in capfd.readouterr().err
    assert said != labelled
