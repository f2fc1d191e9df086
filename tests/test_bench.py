"""The benchmark scripts' pure parts: the configurations they run validate, and their tables add up."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from stego_steps.config import deep_merge, load_yaml, resolve, validate

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("steps", [None, 100])
def test_growth_sizes_are_valid_demo_configs(steps):
    growth = bench_module("growth")
    config = deep_merge(load_yaml(ROOT / "config" / "config.yaml"), growth.size_config(1600, steps))
    validate(config)
    r = resolve(config, "demo")
    assert config["run"] == ["demo"]
    assert config["datasets"]["demo"]["generator"]["n_train"] == 1600
    assert config["datasets"]["demo"]["generator"]["n_val"] == 320
    assert r["train"]["steps"] == (steps or 400)


def test_growth_table_sums_and_ratios():
    growth = bench_module("growth")
    walls = {100: pd.Series({"train": 10.0, "extract": 2.0, "dataset_table": 1.0}),
             400: pd.Series({"train": 10.0, "extract": 8.0, "dataset_table": 1.0})}
    table = growth.growth_table(walls)
    assert list(table.index) == ["extract", "train", "dataset_table", "total"]
    assert table.loc["extract", "×400/100"] == 4.0
    assert table.loc["train", "×400/100"] == 1.0
    assert table.loc["total", 400] == 19.0
    assert table.loc["total", "×400/100"] == 19.0 / 13.0


def test_calibration_summary_uses_sample_std_and_ranks_the_heads():
    calibration = bench_module("calibration")
    rows = [{"dataset": "demo", "setting": "backbone_kmeans", "seed": s, "raw": 40.0, "crf": 50.0 + s,
             "crf_agree": 0.5, "km_score": 0.5, "knn_consistency": 0.5} for s in (0, 1)]
    # Seed 0's heads: the CRF agreement and the KNN overlap rise with the mIoU, the K-Means score falls.
    for i, name in enumerate(("preset", "calibrated", "grid_0.1_0.3", "grid_0.2_0.5")):
        for s in (0, 1):
            rows.append({"dataset": "demo", "setting": name, "seed": s, "raw": 60.0 + i, "crf": 70.0 + 2 * i + 2 * s,
                         "crf_agree": 0.6 + 0.1 * i, "km_score": 1.0 - 0.1 * i, "knn_consistency": 0.3 + 0.01 * i})
    table = calibration.summarize(pd.DataFrame(rows))
    # Two seeds 2 points apart: sample std sqrt(2) (the population std would be 1.0).
    assert "| demo | head, preset shifts | 2 | 60.0 ± 0.0 | 71.0 ± 1.4 |" in table
    assert "over the 4 heads of seed 0" in table
    assert table.splitlines()[-1] == "| 1.00 | -1.00 | 1.00 | 70.0–76.0 |"


def _fake_benchmarks(workdir: Path, walls: dict[str, list[tuple[float, float]]]) -> None:
    """Snakemake-style benchmark files: one per job, `s` and `max_rss` columns, in the workflow's folders."""
    paths = {"extract": "scale/features/f/extract.train.{i}-of-2.tsv",
             "extract_val": "scale/features/f/extract.val.1-of-1.tsv",
             "knn": "scale/features/f/knn.7.tsv",
             "train": "scale/runs/default/seed0/train.tsv",
             "segment": "scale/runs/default/seed0/segment.cluster.{i}-of-2.tsv"}
    for stage, jobs in walls.items():
        for i, (seconds, rss) in enumerate(jobs, start=1):
            path = workdir / "benchmarks" / paths[stage].format(i=i)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"s": [seconds], "h:m:s": ["0:00:01"], "max_rss": [rss]}).to_csv(path, sep="\t", index=False)


def test_scale_table_sums_shards_and_growth_exponents(tmp_path):
    scale = bench_module("scale")
    # extract ×10 in time at ×10 samples (linear), knn ×100 (quadratic), train constant; segment's memory ×10.
    sizes = {1000: 1.0, 10000: 10.0}
    per_size = {}
    for n, f in sizes.items():
        _fake_benchmarks(tmp_path / str(n), {"extract": [(3.0 * f, 200.0), (1.0 * f, 300.0)],
                                             "extract_val": [(6.0, 500.0)],
                                             "knn": [(2.0 * f * f, 100.0 * f)], "train": [(50.0, 400.0)],
                                             "segment": [(5.0, 100.0 * f), (5.0, 50.0)]})
        per_size[n] = scale.size_stages(tmp_path / str(n))
    table = scale.scale_table(per_size)
    # A split's jobs are told apart (only the train jobs see the training set), in the workflow's order.
    assert list(table["stage"][table["samples"] == 1000]) == ["extract train", "extract val", "knn", "train",
                                                             "segment"]
    row = table.set_index(["samples", "stage"]).loc[(10000, "extract train")]
    assert (row["jobs"], row["wall_s"], row["max_rss_mb"]) == (2, 40.0, 300.0)  # shards summed, peak the largest
    exponents = scale.growth(table).set_index("stage")
    assert exponents.loc["extract train", "time_exp"] == pytest.approx(1.0)
    assert exponents.loc["extract val", "time_exp"] == pytest.approx(0.0)
    assert exponents.loc["knn", "time_exp"] == pytest.approx(2.0)
    assert exponents.loc["train", "time_exp"] == pytest.approx(0.0)
    assert exponents.loc["segment", "rss_exp"] == pytest.approx(1.0)
    # knn may be quadratic and hold more; segment's memory growing with the images is the one problem: the
    # allowed ones are those that the resource table lets hold the training store or the pooled descriptors.
    assert {"train", "knn", "cluster"} <= set(scale.MEMORY_ALLOWED) and "segment" not in scale.MEMORY_ALLOWED
    assert "evaluate" not in scale.MEMORY_ALLOWED
    assert scale.check(scale.growth(table)) == ["segment: peak RSS grows as samples^1.00 (1000 → 10000)"]
    estimate = scale.extrapolate(table, scale.growth(table), train_samples=100000, val_images=120, measured_val=60)
    est, fit = estimate.set_index("stage")["estimate_s"], estimate.set_index("stage")["fit_s"]
    assert est["extract train"] == pytest.approx(400.0)
    assert est["knn"] == pytest.approx(200.0 * 100)
    assert est["train"] == pytest.approx(50.0)
    # Validation stages: linear in the validation images.
    assert (est["segment"], est["extract val"]) == (pytest.approx(20.0), pytest.approx(12.0))
    assert est["total"] == pytest.approx(400.0 + 12.0 + 20000.0 + 50.0 + 20.0)
    # Fits through every size: start-up + cost × samples, × samples² for the KNN search (2 s at 1,000, 200 s
    # at 10,000: 2e-6 s per pair, no start-up).
    assert (fit["extract train"], fit["knn"], fit["train"]) == (
        pytest.approx(400.0), pytest.approx(20000.0), pytest.approx(50.0))
    assert fit["segment"] == est["segment"]
    # Another validation split at 1,000 samples: segment 4× the time on 4× the images, extract val constant;
    # the validation stages then grow as measured there.
    _fake_benchmarks(tmp_path / "1000_val240", {"extract": [(3.0, 200.0), (1.0, 300.0)], "extract_val": [(6.0, 500.0)],
                                                "knn": [(2.0, 100.0)], "train": [(50.0, 400.0)],
                                                "segment": [(20.0, 100.0), (20.0, 50.0)]})
    per_size[(1000, 240)] = scale.size_stages(tmp_path / "1000_val240")
    main, val = scale.split_table(scale.scale_table(per_size))
    assert main.equals(table) and set(val["val_images"]) == {60, 240} and set(val["samples"]) == {1000}
    estimate = scale.extrapolate(main, scale.growth(main), train_samples=100000, val_images=120, measured_val=60,
                                 val_table=val).set_index("stage")
    assert (estimate.loc["segment", "estimate_s"], estimate.loc["segment", "fit_s"]) == (
        pytest.approx(20.0), pytest.approx(20.0))
    assert (estimate.loc["extract val", "estimate_s"], estimate.loc["extract val", "fit_s"]) == (6.0, 6.0)
    assert estimate.loc["extract train", "estimate_s"] == pytest.approx(400.0)


def test_scale_config_is_a_valid_coco_shaped_run():
    scale = bench_module("scale")
    config = deep_merge(load_yaml(ROOT / "config" / "config.yaml"), scale.scale_config(10000, steps=30))
    validate(config)
    r = resolve(config, "scale")
    assert config["datasets"]["scale"]["generator"]["n_train"] * 5 == 10000
    assert (r["five_crop"], r["backbone"], r["train"]["steps"], r["probe"]["steps"]) == (
        True, "dino_vits16_random", 30, 30)
    with pytest.raises(ValueError):
        scale.scale_config(1001)


def test_knn_scale_mixture_matches_its_targets_and_recall_counts_sets():
    import numpy as np

    knn_scale = bench_module("knn_scale")
    alpha, sigma = knn_scale.mixture_parameters(0.5, 0.9)
    total = alpha**2 + 1 + sigma**2
    assert alpha**2 / total == pytest.approx(0.5) and (alpha**2 + 1) / total == pytest.approx(0.9)
    x = knn_scale.synthetic(3000, 64, 20, alpha, sigma)
    assert x.shape == (3000, 64) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert knn_scale.spread(x, pairs=5000, queries=200)["pair_mean"] == pytest.approx(0.5, abs=0.05)
    table = np.array([[0, 1, 2], [1, 0, 3]])
    assert knn_scale.recall(table, np.array([0, 1]), np.array([[2, 1], [0, 2]])) == pytest.approx(0.75)


def test_knn_recall_cost_counts_shared_neighbours_and_reports_changes_per_seed():
    cost = bench_module("knn_recall_cost")
    import numpy as np

    exact = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    approx = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]])  # same sets, other orders
    assert cost.recall(approx, exact) == 1.0
    assert cost.recall(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 0]]), exact) == 5 / 6
    rows = [{"dataset": "msrc", "table": t, "recall": r, "seed": s, "raw": 20.0 + s + d, "crf": 25.0 + s + d}
            for t, r, d in (("exact", 1.0, 0.0), ("ivf lists 61 probe 1", 0.9, -1.0)) for s in (0, 1)]
    table = cost.report(pd.DataFrame(rows))
    assert "| msrc | exact | 1.0000 | 20.5 ± 0.7 / 25.5 ± 0.7 | +0.0 / +0.0 |" in table
    assert "| msrc | ivf lists 61 probe 1 | 0.9000 | 19.5 ± 0.7 / 24.5 ± 0.7 | -1.0 / -1.0 |" in table
