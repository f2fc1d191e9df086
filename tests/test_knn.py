import h5py
import numpy as np
import pytest
import torch

from stego_steps.errors import UserError
from stego_steps.knn import _self_first, knn_table
from stego_steps.stages.knn import main


def _cosine(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_self_first_and_exact_topk():
    x = np.random.default_rng(0).standard_normal((300, 48)).astype(np.float32)
    table = knn_table(x, 7)
    assert table.shape == (300, 8) and table.dtype == np.int64
    np.testing.assert_array_equal(table[:, 0], np.arange(300))
    sims = _cosine(x)
    np.fill_diagonal(sims, -np.inf)
    brute = -np.sort(-sims, axis=1)[:, :7]
    got = np.take_along_axis(sims, table[:, 1:], axis=1)
    assert (table[:, 1:] != np.arange(300)[:, None]).all()
    np.testing.assert_allclose(got, brute, atol=1e-5)  # same similarities, in descending order
    assert all(len(set(row)) == 8 for row in table.tolist())


def test_scale_invariance_and_torch_input():
    x = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    scaled = x * np.random.default_rng(2).uniform(0.1, 10, (50, 1)).astype(np.float32)
    np.testing.assert_array_equal(knn_table(x, 5), knn_table(torch.as_tensor(scaled), 5))


def test_duplicates_keep_self_first():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((20, 8)).astype(np.float32)
    x = np.concatenate([base, base, base[:5], 3 * base[:5]])  # exact copies and scaled copies
    n = len(x)
    source = np.concatenate([np.arange(20), np.arange(20), np.arange(5), np.arange(5)])
    table = knn_table(x, 4)
    np.testing.assert_array_equal(table[:, 0], np.arange(n))
    for i in range(n):
        twins = set(np.flatnonzero(source == source[i])) - {i}
        assert i not in table[i, 1:]
        assert set(table[i, 1 : 1 + len(twins)].tolist()) == twins  # the copies come right after self


def test_self_first_repair():
    table = np.array([[0, 1, 2], [2, 1, 0], [0, 3, 1], [1, 0, 2]])
    # row 1: self moved to the front; rows 2 and 3: self missing, inserted and the last neighbour dropped
    np.testing.assert_array_equal(_self_first(table), [[0, 1, 2], [1, 2, 0], [2, 0, 3], [3, 1, 0]])


def test_k_bounds():
    x = np.random.default_rng(4).standard_normal((6, 4))
    assert knn_table(x, 5).shape == (6, 6)
    with pytest.raises(ValueError, match="6 samples.*k <= 5"):
        knn_table(x, 6)
    with pytest.raises(ValueError, match="6 samples"):
        knn_table(x, 0)
    with pytest.raises(ValueError, match="at least 2"):
        knn_table(x[:1], 1)


def test_bad_rows():
    x = np.random.default_rng(5).standard_normal((10, 4))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3 .*NaN"):
        knn_table(x, 2)
    x[3, 1] = 0
    x[7] = 0
    with pytest.raises(ValueError, match="row 7 .*zero"):
        knn_table(x, 2)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        knn_table(x[0], 2)


def test_use_gpu_without_gpu_is_an_error():
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no GPU"):
        knn_table(np.eye(5), 2, use_gpu=True)


def test_cli_round_trip(tmp_path):
    x = np.random.default_rng(6).standard_normal((40, 12)).astype(np.float32)
    features = tmp_path / "train.h5"
    with h5py.File(features, "w") as f:
        f["pooled"] = x
        f["other"] = np.zeros(3)
    out = tmp_path / "knn" / "train.npy"
    main(["--features", str(features), "--k", "7", "--out", str(out), "--threads", "2"])
    np.testing.assert_array_equal(np.load(out), knn_table(x, 7))
    assert [p.name for p in out.parent.iterdir()] == ["train.npy"]  # no temporary files left behind

    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(UserError, match="no dataset 'pooled'"):
        main(["--features", str(tmp_path / "empty.h5"), "--k", "7", "--out", str(tmp_path / "x.npy")])
