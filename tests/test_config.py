"""Config validation and preset resolution: bad keys and values fail with the key named."""

import copy
from pathlib import Path

import pytest
import yaml

from stego_steps import config as C

CONFIG = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_every_preset_resolves():
    C.validate(CONFIG)
    for name in CONFIG["presets"]:
        cfg = copy.deepcopy(CONFIG)
        cfg["datasets"]["x"] = {"kind": "directory", "preset": name, "root": "somewhere"}
        # Keys a preset may leave out (the calibration's) come with their defaults.
        assert C.resolve(cfg, "x") == C.deep_merge(C.PRESET_DEFAULTS, CONFIG["presets"][name])
    assert C.resolve(cfg, "x")["calibrate"] == "auto"


def test_paper_presets_hold_the_checkpoint_values():
    coco, city, pots = (CONFIG["presets"][k] for k in ("cocostuff", "cityscapes", "potsdam"))
    assert (coco["backbone"], coco["head"]["code_dim"], coco["train"]["batch_size"], coco["train"]["steps"]) == \
        ("dino_vitb8", 90, 32, 7000)
    assert city["head"]["code_dim"] == 100 and city["loss"]["spatial_centering"] is False
    assert pots["backbone"] == "dino_vits8" and pots["loss"]["shifts"]["random"] == 0.76
    assert coco["loss"]["weights"]["random"] == 0.1538476246415498 and coco["jpeg_quality"] == 75


@pytest.mark.parametrize("path,value,named", [
    (("presets", "demo", "train", "stepz"), 5, "presets.demo.train"),
    (("presets", "demo", "train", "steps"), 0, "presets.demo.train.steps"),
    (("device",), "gpu", "device"),
    (("datasets", "demo", "kind"), "imagenet", "datasets.demo.kind"),
    (("datasets", "demo", "overrides", "loss", "shifts", "selff"), 0.1, "datasets.demo.overrides.loss.shifts"),
    (("unknown_top_level",), 1, "(top level)"),
])
def test_invalid_keys_and_values_are_named(path, value, named):
    cfg = copy.deepcopy(CONFIG)
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg)
    assert named in str(err.value)


def test_overrides_merge_deeply_and_missing_keys_are_reported():
    cfg = copy.deepcopy(CONFIG)
    cfg["datasets"]["demo"]["overrides"] = {"train": {"steps": 7}, "loss": {"shifts": {"knn": 0.5}}}
    r = C.resolve(cfg, "demo")
    assert r["train"]["steps"] == 7 and r["train"]["batch_size"] == CONFIG["presets"]["demo"]["train"]["batch_size"]
    assert r["loss"]["shifts"] == {**CONFIG["presets"]["demo"]["loss"]["shifts"], "knn": 0.5}
    del cfg["presets"]["demo"]["loss"]["weights"]["random"]
    with pytest.raises(C.ConfigError, match="loss.weights.random"):
        C.resolve(cfg, "demo")
    with pytest.raises(C.ConfigError, match="unknown preset"):
        C.resolve({**cfg, "datasets": {"d": {"kind": "demo", "preset": "nope", "root": "r"}}}, "d")


def test_stage_settings_carry_only_their_stage():
    ex = C.stage_settings(CONFIG, "demo", "extract", "val")
    assert ex["res"] == CONFIG["presets"]["demo"]["eval_res"] and ex["evaluation"] is True
    assert C.stage_settings(CONFIG, "demo", "extract", "train")["res"] == CONFIG["presets"]["demo"]["train_res"]
    tr = C.stage_settings(CONFIG, "demo", "train")
    assert {"code_dim", "steps", "weights", "shifts", "neighbours", "seed"} <= set(tr)
    cfg = copy.deepcopy(CONFIG)
    cfg["datasets"]["coco"] = {"kind": "cocostuff", "preset": "cocostuff", "root": "r"}
    # JPEG re-encoding applies to the five-crops of the training split only.
    assert C.stage_settings(cfg, "coco", "extract", "train")["jpeg_quality"] == 75
    assert C.stage_settings(cfg, "coco", "extract", "val")["jpeg_quality"] is None


def test_command_line_strings_are_typed_by_the_schema():
    cfg = copy.deepcopy(CONFIG)
    cfg["segment_shards"] = "3"
    cfg["datasets"]["demo"]["overrides"] = {"train": {"steps": "5", "lr": "1e-3"}, "jpeg_quality": "null",
                                            "loss": {"zero_clamp": "false"}}
    out = C.coerce(cfg, C.load_schema())
    C.validate(out)
    o = out["datasets"]["demo"]["overrides"]
    assert out["segment_shards"] == 3 and o["train"] == {"steps": 5, "lr": 1e-3}
    assert o["jpeg_quality"] is None and o["loss"]["zero_clamp"] is False
    assert out["datasets"]["demo"]["root"] == CONFIG["datasets"]["demo"]["root"]  # strings stay strings
    bad = C.coerce({**cfg, "segment_shards": "many"}, C.load_schema())
    with pytest.raises(C.ConfigError, match="segment_shards"):
        C.validate(bad)


def _schema_keys(node: dict, defs: dict, prefix: str) -> list[str]:
    keys = []
    for key, sub in node.get("properties", {}).items():
        keys.append(prefix + key)
        target = defs[sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
        if key != "overrides":
            keys += _schema_keys(target, defs, f"{prefix}{key}.")
    return keys


def test_every_key_has_a_description_and_a_line_in_the_config_readme():
    schema = C.load_schema()
    defs = schema["$defs"]
    keys = (_schema_keys(schema, defs, "") + _schema_keys(defs["dataset"], defs, "datasets.<name>.")
            + _schema_keys(defs["preset"], defs, "presets.<name>."))
    assert "presets.<name>.loss.shifts.random" in keys and "datasets.<name>.generator.seed" in keys
    readme = (Path(__file__).resolve().parents[1] / "config" / "README.md").read_text()
    undocumented = [k for k in keys if f"`{k}`" not in readme and k not in ("datasets", "presets", "backbones")]
    assert undocumented == []
    assert "`backbones.<name>.weights`" in readme

    def described(node: dict, path: str) -> list[str]:
        missing = []
        for key, sub in node.get("properties", {}).items():
            if not isinstance(sub, dict) or not sub.get("description"):
                missing.append(path + key)
            elif "properties" in sub:
                missing += described(sub, f"{path}{key}.")
        return missing

    assert described(schema, "") + [m for d in defs.values() for m in described(d, "")] == []


def test_variants_share_features_unless_their_extraction_differs():
    cfg = copy.deepcopy(CONFIG)
    cfg["datasets"]["demo"]["variants"] = {"no_sc": {"loss": {"spatial_centering": False}},
                                           "big": {"train_res": 320}, "batch": {"extract_batch": 4}}
    C.validate(cfg)
    C.check_experiments(cfg)
    assert C.variants(cfg, "demo")[0] == "default" and "ablate_mlp" in C.variants(cfg, "demo")
    key = C.features_key(cfg, "demo")
    assert key.startswith("efficientnet_lite0_") and len(key) == len("efficientnet_lite0_") + 8
    # Head, loss, clustering and extraction batch size do not change what is extracted; resolution and
    # five-crop do.
    for same in ("no_sc", "batch", "ablate_mlp", "ablate_knn"):
        assert C.features_key(cfg, "demo", same) == key, same
    assert len({key, C.features_key(cfg, "demo", "big"), C.features_key(cfg, "demo", "ablate_five_crop")}) == 3
    assert C.resolve(cfg, "demo", "no_sc")["loss"]["spatial_centering"] is False
    assert C.resolve(cfg, "demo", "ablate_random")["loss"]["weights"]["random"] == 0.0
    assert C.resolve(cfg, "demo", "ablate_mlp")["head"]["nonlinear"] is False
    assert C.resolve(cfg, "demo", "ablate_five_crop")["five_crop"] is not C.resolve(cfg, "demo")["five_crop"]
    assert C.index_name(C.resolve(cfg, "demo", "ablate_five_crop")) == "index_five_crop_0.5"
    assert C.crop_of_index("index_five_crop_0.5") == {"five_crop": True, "crop_ratio": 0.5}
    # Baselines depend on the features and the clustering / probe settings only, not on the seed.
    assert C.baseline_key(cfg, "demo", "no_sc") == C.baseline_key(cfg, "demo")
    cfg["datasets"]["demo"]["variants"]["k"] = {"cluster": {"iterations": 5}}
    assert C.baseline_key(cfg, "demo", "k") != C.baseline_key(cfg, "demo")


def test_seeds_reach_the_stages_from_training_on_but_not_the_extraction():
    cfg = copy.deepcopy(CONFIG)
    cfg["datasets"]["demo"]["seeds"] = [3, 4]
    assert C.seeds(cfg, "demo") == [3, 4]
    for stage in ("train", "calibrate", "cluster", "probe"):
        assert C.stage_settings(cfg, "demo", stage, seed=4)["seed"] == 4
    # The demo's backbone has pretrained weights: no seed decides its extraction (tests/test_cache_keys.py).
    assert "seed" not in C.stage_settings(cfg, "demo", "extract", seed=4)
    assert C.seeds(CONFIG, "cocostuff") == [CONFIG["presets"]["cocostuff"]["seed"]]


@pytest.mark.parametrize("change,named", [
    (lambda c: c["datasets"]["demo"].update(variants={"default": {}}), "datasets.demo.variants"),
    (lambda c: c["datasets"]["demo"].update(variants={"ablate_x": {}}), "datasets.demo.variants"),
    (lambda c: c["datasets"]["demo"].update(variants={"v": {"train": {"stepz": 1}}}), "datasets.demo.variants.v"),
    (lambda c: c["datasets"]["demo"].update(seeds=[]), "datasets.demo.seeds"),
    (lambda c: c["datasets"]["demo"].update(main_variants=["nope"]), "datasets.demo.main_variants"),
    (lambda c: c.update(tables={"main": ["nope"], "ablation": []}), "tables.main"),
])
def test_bad_experiments_are_named(change, named):
    cfg = copy.deepcopy(CONFIG)
    change(cfg)
    with pytest.raises(C.ConfigError, match=named.replace(".", r"\.")):
        C.validate(cfg)
        C.check_experiments(cfg)


def test_camvid_config_is_valid_and_compares_the_recipe_with_fixed_shifts():
    extra = yaml.safe_load((Path(__file__).parents[1] / "config" / "camvid.yaml").read_text())
    cfg = C.deep_merge(CONFIG, extra)
    C.validate(cfg)
    # The `directory` recipe: the demo's values, with the shifts at one candidate's quantiles.
    default, demo = C.resolve(cfg, "camvid"), C.resolve(cfg, "demo")
    assert cfg["datasets"]["camvid"]["preset"] == "directory" and default["calibrate"] is True
    assert default["calibration"]["candidates"] == [{"self": 0.2, "knn": 0.1, "random": 1.0}]
    assert {k: v for k, v in default.items() if k not in ("calibrate", "calibration")} == {
        k: v for k, v in demo.items() if k not in ("calibrate", "calibration")}
    assert C.resolve(cfg, "camvid", "fixed_shifts")["calibrate"] is False
    assert len(cfg["datasets"]["camvid"]["class_names"]) == 11 and cfg["datasets"]["camvid"]["ignore_label"] == 11
