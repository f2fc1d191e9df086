"""Cache keys hold exactly what decides an artifact. For the feature key, the baseline key and each stage's
settings (which are Snakemake's params, so its rerun trigger, and part of every downstream provenance
digest): a deciding change changes them, a change that decides nothing leaves them equal."""

import copy
from pathlib import Path

import pytest
import yaml

from stego_steps import config as C
from stego_steps.backbones import backbone_id

CONFIG = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())


def _config(backbone: str | None = None, /, **overrides) -> dict:
    """The shipped config with a dataset `x` of the demo preset (its backbone replaced) and the overrides."""
    cfg = copy.deepcopy(CONFIG)
    base = {"backbone": backbone} if backbone else {}
    cfg["datasets"]["x"] = {"kind": "directory", "preset": "demo", "root": "somewhere", "class_names": ["a", "b"],
                            "overrides": C.deep_merge(base, overrides)}
    C.validate(cfg)
    return cfg


def _changed(key, change: dict, backbone: str | None = None) -> bool:
    return key(_config(backbone, **change)) != key(_config(backbone))


def _settings(stage: str, split: str = "train", seed: int | None = None):
    return lambda cfg: C.stage_settings(cfg, "x", stage, split, seed=seed)


def _features_key(cfg):
    return C.features_key(cfg, "x")


def _baseline_key(cfg):
    return C.baseline_key(cfg, "x")


PRETRAINED, RANDOM = "efficientnet_lite0", "dino_vits8_random"
# Changes that decide no artifact at all: bookkeeping.
BOOKKEEPING = {"train": {"checkpoint_every": 7}}

# (key, deciding changes, non-deciding changes), all on the pretrained demo backbone.
CASES = {
    "features_key": (_features_key, [
        {"train_res": 96}, {"eval_res": 128}, {"store_dtype": "int8"}, {"precision": "bfloat16"},
        {"five_crop": True}, {"backbone": "dino_vits8"},
    ], [
        {"seed": 5}, {"extract_batch": 3}, BOOKKEEPING, {"knn_k": 3}, {"head": {"code_dim": 9}},
        {"loss": {"samples": 3}}, {"train": {"lr": 0.1}}, {"cluster": {"iterations": 3}}, {"probe": {"lr": 0.1}},
    ]),
    "baseline_key": (_baseline_key, [
        {"train_res": 96}, {"cluster": {"iterations": 3}}, {"cluster": {"batch_images": 3}},
        {"probe": {"batch_size": 3}}, {"probe": {"lr": 0.1}},
    ], [
        {"seed": 5}, {"extract_batch": 3}, BOOKKEEPING, {"head": {"code_dim": 9}}, {"train": {"steps": 3}},
    ]),
    "extract": (_settings("extract"), [
        {"train_res": 96}, {"store_dtype": "int8"}, {"precision": "bfloat16"}, {"backbone": "dino_vits8"},
        # Decides each shard's rows (shards start on its multiples) and the batches' composition.
        {"extract_batch": 3},
    ], [
        {"seed": 5}, {"eval_res": 128}, BOOKKEEPING, {"knn_k": 3}, {"train": {"lr": 0.1}},
    ]),
    "extract_val": (_settings("extract", "val"), [
        {"eval_res": 128}, {"store_dtype": "int8"},
    ], [
        {"seed": 5}, {"train_res": 96}, {"five_crop": True}, BOOKKEEPING,
    ]),
    "train": (_settings("train"), [
        {"train": {"lr": 0.1}}, {"train": {"batch_size": 3}}, {"train": {"steps": 3}}, {"head": {"code_dim": 9}},
        {"loss": {"shifts": {"knn": 0.5}}}, {"knn_k": 3}, {"seed": 5},
    ], [
        BOOKKEEPING, {"extract_batch": 3}, {"cluster": {"iterations": 3}}, {"probe": {"lr": 0.1}},
    ]),
    "calibrate": (_settings("calibrate"), [
        {"calibration": {"batches": 3}}, {"calibrate": True}, {"train": {"lr": 0.1}},
        {"train": {"batch_size": 3}}, {"cluster": {"iterations": 3}}, {"seed": 5},
    ], [
        # The candidate heads train for calibration.selection.steps, not the train stage's steps.
        BOOKKEEPING, {"train": {"steps": 3}}, {"extract_batch": 3}, {"probe": {"lr": 0.1}},
    ]),
    "cluster": (_settings("cluster"), [
        {"cluster": {"iterations": 3}}, {"cluster": {"batch_images": 3}}, {"cluster": {"n_init": 7}}, {"seed": 5},
    ], [
        BOOKKEEPING, {"train": {"lr": 0.1}}, {"probe": {"lr": 0.1}}, {"extract_batch": 3},
    ]),
    "probe": (_settings("probe"), [
        {"probe": {"steps": 3}}, {"probe": {"batch_size": 3}}, {"probe": {"lr": 0.1}}, {"seed": 5},
    ], [
        BOOKKEEPING, {"train": {"lr": 0.1}}, {"cluster": {"iterations": 3}}, {"extract_batch": 3},
    ]),
}


@pytest.mark.parametrize("name", CASES)
def test_a_deciding_change_changes_the_key_and_a_non_deciding_one_does_not(name):
    key, deciding, not_deciding = CASES[name]
    # Every change is one: it alters the resolved preset.
    assert [c for c in deciding + not_deciding if not _changed(lambda cfg: C.resolve(cfg, "x"), c)] == []
    assert [c for c in deciding if not _changed(key, c)] == []
    assert [c for c in not_deciding if _changed(key, c)] == []


@pytest.mark.parametrize("key", [_features_key, _settings("extract"), _settings("extract", "val")],
                         ids=["features_key", "extract", "extract_val"])
def test_the_seed_decides_the_extraction_of_random_backbones_only(key):
    assert _changed(key, {"seed": 5}, backbone=RANDOM)
    assert not _changed(key, {"seed": 5}, backbone=PRETRAINED)
    assert not _changed(key, {"seed": 5}, backbone="dino_vitb8")


def test_the_run_seed_reaches_training_onward_but_not_the_extraction():
    cfg = _config(RANDOM)
    for stage in ("train", "calibrate", "cluster", "probe"):
        assert C.stage_settings(cfg, "x", stage, seed=4)["seed"] == 4
    # A random backbone is built with the preset's seed whatever the run's seed.
    assert C.stage_settings(cfg, "x", "extract", seed=4)["seed"] == CONFIG["presets"]["demo"]["seed"]
    assert "seed" not in C.stage_settings(_config(PRETRAINED), "x", "extract")


def test_bookkeeping_leaves_the_settings_and_reaches_the_job_apart():
    cfg = _config(train={"checkpoint_every": 7})
    assert C.bookkeeping(cfg, "x", "train") == {"checkpoint_every": 7}
    for stage in ("train", "calibrate"):
        assert "checkpoint_every" not in C.stage_settings(cfg, "x", stage)
    assert C.bookkeeping(cfg, "x", "cluster") == {}


def test_the_backbone_id_holds_the_seed_of_random_backbones_only():
    assert backbone_id(RANDOM, None, 1) != backbone_id(RANDOM, None, 2)
    assert backbone_id("dino_vits8", "w.pth", 1) == backbone_id("dino_vits8", "w.pth", 2)
    assert backbone_id("dino_vits8", "w.pth", 1) != backbone_id("dino_vits8", "other.pth", 1)
