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
