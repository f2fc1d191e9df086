"""The config the workflow sees for the unit tests of its library: the shipped config with the tiny demo merged
over it (as `--configfile tests/data/tiny_config.yaml` does), no Snakemake involved."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from stego_steps import config as C

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
TINY = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())


def workflow_config(**changes: object) -> dict:
    """A fresh copy, with top-level `changes` merged deeply over it."""
    return C.deep_merge(C.deep_merge(copy.deepcopy(SHIPPED), TINY), changes)
