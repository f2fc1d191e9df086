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
