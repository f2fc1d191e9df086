"""Training the head from cached features: the sampler, the log, and resuming after a kill."""

import numpy as np
import pytest
import torch

from stego_steps import knn, train
from stego_steps.artifacts import fingerprint
from stego_steps.head import SegmentationHead, flip_tta_code
from stego_steps.store import FeatureStore

SETTINGS = {
    "code_dim": 6, "dropout": 0.1, "batch_size": 4, "steps": 12, "lr": 5e-4, "checkpoint_every": 5,
    "samples": 5, "negatives": 3, "spatial_centering": True, "zero_clamp": True,
    "weights": {"self": 0.67, "knn": 0.25, "random": 0.63}, "shifts": {"self": 0.08, "knn": 0.02, "random": 0.76},
    "neighbours": 3, "seed": 0,
}


def test_head_dropout_only_in_training_and_flip_tta():
    head = SegmentationHead(8, 4, dropout=0.5)
    x = torch.randn(2, 8, 5, 5)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    assert not torch.equal(head(x), head(x))
    head.eval()
    # A mirror-symmetric input gives the plain code.
    sym = x + x.flip(-1)
    torch.testing.assert_close(flip_tta_code(head, sym, sym.flip(-1)), head(sym))


def test_sampler_draws_positives_from_ranks_one_to_k():
    table = np.array([[i, *((i + d) % 10 for d in range(1, 6))] for i in range(10)])
    s = train.BatchSampler(table, batch_size=4, neighbours=3, generator=torch.Generator().manual_seed(0))
    for _ in range(50):
        anchors, positives = s.next()
        assert len(anchors) == 4 and len(set(anchors)) == 4
        offsets = (positives - anchors) % 10
        assert set(offsets) <= {1, 2, 3}


def test_training_lowers_the_loss_and_logs_every_step(store_path):
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        head, log = train.train(store, table, {**SETTINGS, "steps": 60}, device="cpu")
    assert list(log["step"]) == list(range(1, 61))
    assert {"self", "knn", "random", "total", "seconds"} <= set(log.columns)
    assert log["total"].tail(10).mean() < log["total"].head(10).mean()
    assert not head.training


def test_a_killed_run_resumes_to_the_same_head(store_path, tmp_path):
    ckpt = tmp_path / "head.pt.checkpoint"
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        ref, ref_log = train.train(store, table, SETTINGS, device="cpu")
        # "Kill" after step 10: run 10 steps with checkpoints, then continue to 12 from the checkpoint.
        train.train(store, table, {**SETTINGS, "steps": 11}, device="cpu", checkpoint=ckpt)
        assert ckpt.exists()
        state = torch.load(ckpt, weights_only=False)
        assert state["step"] == 10
        # The fingerprint includes the step count, so use the same settings to resume.
        state["fingerprint"] = fingerprint(SETTINGS, str(store_path), table.shape)
        torch.save(state, ckpt)
        resumed, log = train.train(store, table, SETTINGS, device="cpu", checkpoint=ckpt)
    assert list(log["step"]) == list(range(1, 13))
    np.testing.assert_allclose(log["total"].to_numpy(), ref_log["total"].to_numpy(), rtol=1e-5)
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_knn_table_must_match_the_store(store_path):
    with FeatureStore(store_path) as store, pytest.raises(ValueError, match="rerun the knn stage"):
        train.train(store, np.zeros((3, 4), int), SETTINGS, device="cpu")


def test_a_damaged_store_names_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "train.h5"
    bad.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="train.h5 is unreadable.*delete it and rerun"):
        FeatureStore(bad)
