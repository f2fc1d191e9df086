"""Training from a store larger than the memory budget: the streamed steps are the in-memory steps (the same
draws, bitwise the same feature tensors), so the memory budget — and the environment variable that sets it —
never changes a head; determinism and resumption at any step."""

import h5py
import numpy as np
import pytest
import torch
from helpers import write_store

from stego_steps import head_training, knn
from stego_steps import store as store_mod
from stego_steps.batches import StepDraws, StreamingBatches
from stego_steps.store import FeatureStore

SETTINGS = {
    "code_dim": 6, "dropout": 0.1, "batch_size": 4, "steps": 12, "lr": 5e-4,
    "samples": 5, "negatives": 3, "spatial_centering": True, "zero_clamp": True,
    "weights": {"self": 0.67, "knn": 0.25, "random": 0.63}, "shifts": {"self": 0.08, "knn": 0.02, "random": 0.76},
    "neighbours": 3, "seed": 0,
}


def _draws(table, seed=0):
    return StepDraws(table, 4, 3, SETTINGS["samples"], SETTINGS["negatives"], seed)


def _streamed(store, table, steps, draws=None):
    with StreamingBatches(store, draws or _draws(table), steps=steps) as stream:
        return [stream.next() for _ in range(steps)]


def _int8_store(path, n=30, dim=16, grid=8):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        store_mod.create(f, store_mod.layout(n, dim, grid, grid * 4, evaluation=False, labelled=False, dtype="int8"))
        feats = torch.from_numpy(rng.standard_normal((n, dim, grid, grid), np.float32))
        store_mod.write_features(f, "feats", 0, feats)
        f["pooled"][...] = feats.mean(dim=(2, 3)).numpy()
        f.attrs.update(backbone="synthetic", res=grid * 4, stride=4, split="train", n_classes=3, class_names="[]")
    return path


def _same_heads(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_streamed_steps_are_the_in_memory_steps_bitwise(tmp_path):
    path = write_store(tmp_path / "train.h5", n=50)
    with FeatureStore(path) as memory, FeatureStore(path, max_memory_gb=0) as disk:
        assert memory.in_memory and not disk.in_memory
        table = knn.knn_table(memory.read("pooled"), 3)
        draws = _draws(table)
        seen = []
        for step, _, f, f_pos in _streamed(disk, table, 24):  # two epochs of 12 batches
            want = draws.next()
            np.testing.assert_array_equal(step.anchors, want.anchors)
            np.testing.assert_array_equal(step.positives, want.positives)
            assert torch.equal(step.coords1, want.coords1) and torch.equal(step.coords2, want.coords2)
            assert all(torch.equal(p, q) for p, q in zip(step.perms, want.perms, strict=True))
            assert torch.equal(f, memory.batch(step.anchors)) and torch.equal(f_pos, memory.batch(step.positives))
            ranks = [list(table[a]).index(p) for a, p in zip(step.anchors, step.positives, strict=True)]
            assert len(set(step.anchors)) == 4 and set(ranks) <= {1, 2, 3}
            seen.append(step.anchors)
    # Each epoch visits 48 distinct samples (the tail of 2 is dropped), and the two epochs differ.
    first, second = np.concatenate(seen[:12]), np.concatenate(seen[12:])
    assert len(set(first)) == 48 and len(set(second)) == 48
    assert not np.array_equal(first, second)


def test_streamed_int8_features_are_the_in_memory_ones(tmp_path):
    path = _int8_store(tmp_path / "train.h5")
    with FeatureStore(path) as memory, FeatureStore(path, max_memory_gb=0) as disk:
        table = knn.knn_table(memory.read("pooled"), 3)
        for step, _, f, f_pos in _streamed(disk, table, 10):
            assert torch.equal(f, memory.batch(step.anchors)) and torch.equal(f_pos, memory.batch(step.positives))


def test_draws_resume_at_any_step_from_their_state(tmp_path):
    path = write_store(tmp_path / "train.h5", n=50)
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        ref = _streamed(store, table, 30)
        for start in (1, 5, 12, 13, 17):
            draws = _draws(table)
            draws.set_state(ref[start - 1][1])  # the state after step `start`, as a checkpoint holds it
            for (step, _, f, _), (again, _, fa, _) in zip(ref[start:], _streamed(store, table, 30 - start, draws),
                                                          strict=True):
                np.testing.assert_array_equal(step.anchors, again.anchors)
                np.testing.assert_array_equal(step.positives, again.positives)
                assert torch.equal(step.coords1, again.coords1) and torch.equal(f, fa)


@pytest.mark.parametrize("make", [write_store, _int8_store], ids=["float16", "int8"])
def test_the_memory_budget_in_the_environment_changes_no_head(tmp_path, monkeypatch, make):
    path = make(tmp_path / "train.h5")
    heads, logs = {}, {}
    for budget in (None, "0"):  # unset: held in memory; 0: streamed from disk
        if budget is None:
            monkeypatch.delenv("STEGO_MAX_MEMORY_GB", raising=False)
        else:
            monkeypatch.setenv("STEGO_MAX_MEMORY_GB", budget)
        with FeatureStore(path) as store:
            assert store.in_memory is (budget is None)
            table = knn.knn_table(store.read("pooled"), 3)
            # 14 steps: the epochs of 6 batches end twice, so their reshuffles are compared too.
            heads[budget], logs[budget] = head_training.train(store, table, {**SETTINGS, "steps": 14}, device="cpu")
    assert _same_heads(heads[None], heads["0"])
    np.testing.assert_array_equal(logs[None]["total"].to_numpy(), logs["0"]["total"].to_numpy())


def test_training_from_a_streamed_store_learns(tmp_path):
    path = write_store(tmp_path / "train.h5", n=40)
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        _, log = head_training.train(store, table, {**SETTINGS, "steps": 60}, device="cpu")
    assert log["total"].tail(10).mean() < log["total"].head(10).mean()


@pytest.mark.parametrize("first, then", [(0, 0), (0, None), (None, 0)],
                         ids=["streamed", "streamed-then-memory", "memory-then-streamed"])
def test_a_killed_run_resumes_to_the_same_head_whatever_the_budgets(tmp_path, first, then):
    path = write_store(tmp_path / "train.h5", n=40)
    ckpt = tmp_path / "head.pt.checkpoint"
    with FeatureStore(path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        ref, ref_log = head_training.train(store, table, SETTINGS, device="cpu")
        key = head_training.checkpoint_key(SETTINGS, store, table)
    with FeatureStore(path, max_memory_gb=first) as store:
        head_training.train(store, table, {**SETTINGS, "steps": 11}, device="cpu", checkpoint=ckpt, checkpoint_every=5)
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 10
    state["fingerprint"] = key  # the key includes the step count: re-key it for the 12-step settings
    torch.save(state, ckpt)
    with FeatureStore(path, max_memory_gb=then) as store:
        resumed, log = head_training.train(store, table, SETTINGS, device="cpu", checkpoint=ckpt, checkpoint_every=5)
    np.testing.assert_array_equal(log["total"].to_numpy(), ref_log["total"].to_numpy())
    assert _same_heads(ref, resumed)


def test_a_checkpoint_of_the_former_streaming_order_is_not_resumed(tmp_path, caplog):
    path = write_store(tmp_path / "train.h5", n=40)
    ckpt = tmp_path / "head.pt.checkpoint"
    with FeatureStore(path, max_memory_gb=0) as store:
        table = knn.knn_table(store.read("pooled"), 3)
        head_training.train(store, table, {**SETTINGS, "steps": 11}, device="cpu", checkpoint=ckpt, checkpoint_every=5)
        state = torch.load(ckpt, weights_only=False)
        state.update(fingerprint=head_training.checkpoint_key(SETTINGS, store, table), streaming=True)
        torch.save(state, ckpt)
        with caplog.at_level("INFO"):
            _, log = head_training.train(store, table, SETTINGS, device="cpu", checkpoint=ckpt)
    assert "ignoring" in caplog.text and "resuming" not in caplog.text
    assert list(log["step"]) == list(range(1, 13))


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
