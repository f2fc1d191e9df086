"""Training from a store larger than the memory budget: streamed batches, their randomness, determinism and
resumption, and the same training loop as from memory."""

import numpy as np
import torch
from helpers import write_store

from stego_steps import knn, training
from stego_steps.batches import StreamingBatches
from stego_steps.store import FeatureStore

SETTINGS = {
    "code_dim": 6, "dropout": 0.1, "batch_size": 4, "steps": 12, "lr": 5e-4, "checkpoint_every": 5,
    "samples": 5, "negatives": 3, "spatial_centering": True, "zero_clamp": True,
    "weights": {"self": 0.67, "knn": 0.25, "random": 0.63}, "shifts": {"self": 0.08, "knn": 0.02, "random": 0.76},
    "neighbours": 3, "seed": 0,
}


def _batches(store, table, steps, **kw):
    with StreamingBatches(store, table, 4, 3, seed=0, pool_rows=16, blocks_per_pool=4, **kw) as stream:
        return [stream.next() for _ in range(steps)]


def test_streamed_batches_are_the_stored_features_with_knn_positives(tmp_path):
    path = write_store(tmp_path / "train.h5", n=50)
    with FeatureStore(path, max_memory_gb=0) as store:
        assert not store.in_memory
        table = knn.knn_table(store.read("pooled"), 3)
        seen = []
        for anchors, positives, f, f_pos in _batches(store, table, 24):  # two epochs of 12 batches
            assert len(set(anchors)) == 4
            torch.testing.assert_close(f, store.batch(anchors), rtol=0, atol=0)
            torch.testing.assert_close(f_pos, store.batch(positives), rtol=0, atol=0)
            ranks = [list(table[a]).index(p) for a, p in zip(anchors, positives, strict=True)]
            assert set(ranks) <= {1, 2, 3}
            seen.append(anchors)
    # Each epoch visits 48 distinct samples (the tail of 2 is dropped), and the two epochs differ.
    first, second = np.concatenate(seen[:12]), np.concatenate(seen[12:])
    assert len(set(first)) == 48 and len(set(second)) == 48
    assert not np.array_equal(first, second)


def test_streamed_batches_mix_blocks_from_across_the_store(tmp_path):
    path = write_store(tmp_path / "train.h5", n=200)
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        anchors = np.concatenate([b[0] for b in _batches(store, table, 50)])
    # Blocks of 4 rows, pools of 4 blocks: the first pool's rows are not one contiguous range, and the
    # order of an epoch is far from sorted (a block-shuffled epoch keeps no long increasing runs).
    assert anchors[:16].max() - anchors[:16].min() > 16
    assert np.mean(np.diff(anchors) == 1) < 0.5


def test_streaming_is_deterministic_and_resumes_at_any_step(tmp_path):
    path = write_store(tmp_path / "train.h5", n=50)
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        ref = _batches(store, table, 30)
        again = _batches(store, table, 30)
        for start in (0, 1, 5, 12, 13, 17):
            resumed = _batches(store, table, 30 - start, start_step=start)
            for (a, p, _, _), (ra, rp, _, _) in zip(ref[start:], resumed, strict=True):
                np.testing.assert_array_equal(a, ra)
                np.testing.assert_array_equal(p, rp)
    for (a, p, f, _), (aa, pa, fa, _) in zip(ref, again, strict=True):
        np.testing.assert_array_equal(a, aa)
        np.testing.assert_array_equal(p, pa)
        assert torch.equal(f, fa)


def test_training_from_a_streamed_store_is_deterministic_and_learns(tmp_path):
    path = write_store(tmp_path / "train.h5", n=40)
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        head, log = training.train(store, table, {**SETTINGS, "steps": 60}, device="cpu")
        head2, log2 = training.train(store, table, {**SETTINGS, "steps": 60}, device="cpu")
    np.testing.assert_array_equal(log["total"].to_numpy(), log2["total"].to_numpy())
    for a, b in zip(head.state_dict().values(), head2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert log["total"].tail(10).mean() < log["total"].head(10).mean()


def test_a_killed_streaming_run_resumes_to_the_same_head(tmp_path):
    path = write_store(tmp_path / "train.h5", n=40)
    ckpt = tmp_path / "head.pt.checkpoint"
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        ref, ref_log = training.train(store, table, SETTINGS, device="cpu")
        training.train(store, table, {**SETTINGS, "steps": 11}, device="cpu", checkpoint=ckpt)
        state = torch.load(ckpt, weights_only=False)
        assert state["step"] == 10 and state["streaming"]
        state["fingerprint"] = training.checkpoint_key(SETTINGS, store, table)
        torch.save(state, ckpt)
        resumed, log = training.train(store, table, SETTINGS, device="cpu", checkpoint=ckpt)
    np.testing.assert_array_equal(log["total"].to_numpy(), ref_log["total"].to_numpy())
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_memory_budget_comes_from_the_environment(tmp_path, monkeypatch):
    path = write_store(tmp_path / "train.h5", n=8)
    monkeypatch.setenv("STEGO_MAX_MEMORY_GB", "0")
    with FeatureStore(path) as store:
        assert not store.in_memory
    monkeypatch.delenv("STEGO_MAX_MEMORY_GB")
    with FeatureStore(path) as store:
        assert store.in_memory


def test_reads_at_any_indices_equal_numpy_indexing(tmp_path):
    path = write_store(tmp_path / "train.h5", n=30)
    rng = np.random.default_rng(0)
    with FeatureStore(path, max_memory_gb=0) as store:
        whole = store.read("feats")
        # Repeats, runs of consecutive rows, any order, a single row, no row.
        for index in ([5], [], [3, 4, 5, 9, 3, 29, 0], rng.integers(0, 30, 40), rng.permutation(30)):
            index = np.asarray(index, dtype=int)
            np.testing.assert_array_equal(store.read("feats", index), whole[index])
            np.testing.assert_array_equal(store.raw(index)[0].numpy(), whole[index])
