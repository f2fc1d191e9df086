"""Training the head from cached features: the sampler, the log, and resuming after a kill."""

import h5py
import numpy as np
import pytest
import torch

from stego_steps import head_training, knn
from stego_steps.batches import BatchSampler
from stego_steps.head import SegmentationHead, flip_tta_code, load_head, save_head
from stego_steps.store import FeatureStore

SETTINGS = {
    "code_dim": 6, "dropout": 0.1, "batch_size": 4, "steps": 12, "lr": 5e-4,
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
    s = BatchSampler(table, batch_size=4, neighbours=3, generator=torch.Generator().manual_seed(0))
    for _ in range(50):
        anchors, positives = s.next()
        assert len(anchors) == 4 and len(set(anchors)) == 4
        offsets = (positives - anchors) % 10
        assert set(offsets) <= {1, 2, 3}


def test_training_lowers_the_loss_and_logs_every_step(store_path):
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        head, log = head_training.train(store, table, {**SETTINGS, "steps": 60}, device="cpu")
    assert list(log["step"]) == list(range(1, 61))
    assert {"self", "knn", "random", "total", "seconds"} <= set(log.columns)
    assert log["total"].tail(10).mean() < log["total"].head(10).mean()
    assert not head.training


def test_a_killed_run_resumes_to_the_same_head(store_path, tmp_path, caplog):
    ckpt = tmp_path / "head.pt.checkpoint"
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        ref, ref_log = head_training.train(store, table, SETTINGS, device="cpu")
        # "Kill" after step 10: run 10 steps with checkpoints, then continue to 12 from the checkpoint.
        head_training.train(store, table, {**SETTINGS, "steps": 11}, device="cpu", checkpoint=ckpt, checkpoint_every=5)
        assert ckpt.exists()
        state = torch.load(ckpt, weights_only=False)
        assert state["step"] == 10
        # The key includes the step count, so re-key the checkpoint for the 12-step settings.
        state["fingerprint"] = head_training.checkpoint_key(SETTINGS, store, table)
        torch.save(state, ckpt)
        with caplog.at_level("INFO"):
            resumed, log = head_training.train(store, table, SETTINGS, device="cpu", checkpoint=ckpt)
    assert "resuming training at step 10" in caplog.text
    assert list(log["step"]) == list(range(1, 13))
    # The same steps on the same batches from the exact saved state: equal by construction.
    np.testing.assert_array_equal(log["total"].to_numpy(), ref_log["total"].to_numpy())
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_never_resumes_on_other_features(store_path, tmp_path, caplog):
    ckpt = tmp_path / "head.pt.checkpoint"
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        head_training.train(store, table, {**SETTINGS, "steps": 11}, device="cpu", checkpoint=ckpt, checkpoint_every=5)
    state = torch.load(ckpt, weights_only=False)
    with FeatureStore(store_path) as store:
        state["fingerprint"] = head_training.checkpoint_key(SETTINGS, store, table)
    torch.save(state, ckpt)
    # Same path, same shapes, same settings: only the features differ.
    with h5py.File(store_path, "r+") as f:
        f["pooled"][0] += 1.0
    with FeatureStore(store_path) as store, caplog.at_level("INFO"):
        _, log = head_training.train(store, table, SETTINGS, device="cpu", checkpoint=ckpt)
    assert "ignoring" in caplog.text and "resuming" not in caplog.text
    assert list(log["step"]) == list(range(1, 13))


def test_knn_table_must_match_the_store(store_path):
    with FeatureStore(store_path) as store, pytest.raises(ValueError, match="rerun the knn stage"):
        head_training.train(store, np.zeros((3, 4), int), SETTINGS, device="cpu")


def test_a_damaged_store_names_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "train.h5"
    bad.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="train.h5 is unreadable.*delete it and rerun"):
        FeatureStore(bad)


def test_a_head_meets_only_features_of_its_own_backbone(tmp_path):
    head = SegmentationHead(8, 4, 0.1)
    save_head(tmp_path / "head.pt", head, {"backbone": "dino_vits8_random", "backbone_id": "aaaa"})
    assert load_head(tmp_path / "head.pt", backbone_id="aaaa").code_dim == 4
    with pytest.raises(ValueError, match=r"head .*head\.pt was trained on features of backbone dino_vits8_random"
                                         r".*delete .*head\.pt and rerun"):
        load_head(tmp_path / "head.pt", backbone_id="bbbb")
