import json

import h5py
import numpy as np
import pytest
import torch

from stego_steps import config as C
from stego_steps.errors import UserError
from stego_steps.knn import _self_first, chosen_method, knn_table, neighbour_table, search_argument, search_settings
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


# ----- the approximate search and the choice of method

IVF = {"method": "ivf", "ivf": {"lists": 24, "probe": 4}}


def _clustered(n: int = 3000, dim: int = 32, centres: int = 60, seed: int = 7) -> np.ndarray:
    """Rows around a few dozen directions: the structure of pooled descriptors, at a test's size."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    return (c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)


def _recall(table: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) for a, b in zip(table[:, 1:].tolist(), truth[:, 1:].tolist(),
                                                                   strict=True)])) / (truth.shape[1] - 1)


def test_ivf_is_deterministic_self_first_and_close_to_exact():
    import faiss

    faiss.omp_set_num_threads(2)
    x = _clustered()
    table = neighbour_table(x, 7, IVF)
    np.testing.assert_array_equal(table, neighbour_table(x, 7, IVF))  # seeded k-means, fixed threads
    assert table.shape == (3000, 8) and table.dtype == np.int64
    np.testing.assert_array_equal(table[:, 0], np.arange(3000))
    assert all(len(set(row)) == 8 for row in table.tolist())
    assert _recall(table, knn_table(x, 7)) >= 0.99
    sims = _cosine(x)
    got = np.take_along_axis(sims, table[:, 1:], axis=1)
    assert (np.diff(got, axis=1) <= 1e-6).all()  # descending similarity, as the exact table


def test_ivf_top_k_split_between_threads_gives_the_serial_rows():
    # Each row's top-k is its own: splitting a block's rows between threads cannot change it (exactly).
    from concurrent.futures import ThreadPoolExecutor

    from stego_steps.knn import TOP_ROWS_PER_THREAD, _top

    sims = np.random.default_rng(0).standard_normal((2 * TOP_ROWS_PER_THREAD + 37, 300)).astype(np.float32)
    sims[5, :20] = sims[5, 0]  # ties inside the top-k are ordered by higher column
    with ThreadPoolExecutor(3) as pool:
        split = _top(sims, 8, pool, 3)
    serial = _top(sims, 8)
    for a, b in zip(split, serial, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(serial[1][0], np.argsort(-sims[0], kind="stable")[:8])


def test_ivf_keeps_duplicates_right_after_self():
    rng = np.random.default_rng(3)
    base = _clustered(400, 16, 10)
    x = np.concatenate([base, base[:50], 2 * base[:50]])
    source = np.concatenate([np.arange(400), np.arange(50), np.arange(50)])
    table = neighbour_table(x, 4, {"method": "ivf", "ivf": {"lists": 8, "probe": 3}})
    np.testing.assert_array_equal(table[:, 0], np.arange(len(x)))
    for i in rng.choice(len(x), 60, replace=False):
        twins = set(np.flatnonzero(source == source[i])) - {i}
        assert i not in table[i, 1:] and set(table[i, 1 : 1 + len(twins)].tolist()) == twins


def test_ivf_with_short_lists_falls_back_to_exact_rows():
    x = _clustered(60, 8, 30)
    table = neighbour_table(x, 7, {"method": "ivf", "ivf": {"lists": 30, "probe": 1}})  # lists of about 2 rows
    assert table.shape == (60, 8) and (table >= 0).all() and (table[:, 0] == np.arange(60)).all()


def test_auto_is_exact_below_its_threshold():
    x = _clustered(500, 16, 10)
    assert chosen_method({"method": "auto", "exact_below": 501}, 500) == "exact"
    assert chosen_method({"method": "auto", "exact_below": 500}, 500) == "ivf"
    assert chosen_method(None, 10**6) == "ivf" and chosen_method({"method": "exact"}, 10**7) == "exact"
    np.testing.assert_array_equal(neighbour_table(x, 5, {"method": "auto", "exact_below": 501}), knn_table(x, 5))
    with pytest.raises(UserError, match="knn.method: unknown method 'hnsw'"):
        chosen_method({"method": "hnsw"}, 10)


def test_the_search_decides_the_cache_key_and_exact_keeps_todays():
    assert search_settings({"method": "exact", "ivf": {"probe": 3}}) == {}  # unused settings decide nothing
    assert search_argument({"method": "exact"}) == {"method": "exact"}
    auto, ivf = search_settings(None), search_settings({"method": "ivf"})
    assert auto["method"] == "auto" and "exact_below" in auto and "exact_below" not in ivf
    keys = [search_settings(s) for s in (None, {"method": "ivf"}, {"exact_below": 5}, {"ivf": {"probe": 8}},
                                         {"ivf": {"lists": 100}}, {"ivf": {"seed": 1}})]
    assert all(a != b for i, a in enumerate(keys) for b in keys[i + 1:])


def test_the_knn_step_of_the_workflow_carries_the_search():
    from workflow_config import workflow_config

    from stego_steps.download import load_table
    from stego_steps.experiment import Experiment
    from stego_steps.rule_inputs import RuleInputs
    from stego_steps.steps import DecidingSteps

    def knn_step(search):
        config = workflow_config(knn=search) if search else workflow_config()
        steps = DecidingSteps(RuleInputs(Experiment(config), load_table(None), gather_segment=lambda p: [p]))
        fkey = steps.exp.feature_key["demo"]["default"]
        return steps("knn", {"ds": "demo", "fkey": fkey, "k": "7"})["knn"]

    assert knn_step({"method": "exact"}) == ("stages.knn", {"k": 7})  # the key of before the choice
    assert knn_step(None)[1]["method"] == "auto"
    assert knn_step({"method": "ivf", "ivf": {"probe": 8}}) != knn_step({"method": "ivf"})


@pytest.mark.parametrize("search,named", [({"method": "hnsw2"}, "knn.method"),
                                          ({"ivf": {"probe": 0}}, "knn.ivf.probe"),
                                          ({"exact_below": 1}, "knn.exact_below"),
                                          ({"ivf": {"nprobe": 4}}, "knn.ivf")])
def test_the_config_key_is_validated(search, named):
    from workflow_config import workflow_config

    config = workflow_config(knn=search)
    with pytest.raises(C.ConfigError) as err:
        C.validate(config)
    assert named in str(err.value)
    C.validate(workflow_config(knn={"method": "ivf", "ivf": {"lists": None, "probe": 4}}))


def test_cli_searches_as_told(tmp_path):
    x = _clustered(400, 16, 10)
    features = tmp_path / "train.h5"
    with h5py.File(features, "w") as f:
        f["pooled"] = x
    out = tmp_path / "knn.npy"
    main(["--features", str(features), "--k", "5", "--out", str(out), "--search", json.dumps(IVF)])
    np.testing.assert_array_equal(np.load(out), neighbour_table(x, 5, IVF))
