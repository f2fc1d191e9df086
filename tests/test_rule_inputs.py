"""The rules' input functions and params, from plain wildcard values (no Snakemake run)."""

import json

import pytest
from workflow_config import workflow_config

from stego_steps.config import stage_settings
from stego_steps.download import load_table
from stego_steps.errors import UserError
from stego_steps.experiment import Experiment
from stego_steps.rule_inputs import RuleInputs


def gather(pattern: str) -> list[str]:
    return [pattern.format(scatteritem=f"{i}-of-2") for i in (1, 2)]


def rule_inputs(**changes: object) -> RuleInputs:
    config = workflow_config(**changes)
    return RuleInputs(Experiment(config), load_table(config.get("downloads")), gather_segment=gather)


def test_features_knn_index_and_settings_of_a_run():
    ins = rule_inputs()
    w = {"ds": "demo", "variant": "default", "seed": "1"}
    store = ins.exp.features_dir("demo", "default")
    assert ins.run_features("train")(w) == f"{store}/train.h5"
    assert ins.run_knn(w) == f"{store}/knn7.npy"
    assert ins.index_of(w) == "results/demo/index"
    assert json.loads(ins.settings("train")(w)) == stage_settings(ins.config, "demo", "train", seed=1)
    assert ins.bookkeeping_of("train", "checkpoint_every")(w) == 10
    bkey = ins.exp.baseline_key["demo"]["default"]
    assert ins.baseline_features({"ds": "demo", "bkey": bkey}) == f"{store}/train.h5"
    assert ins.shard_index({"scatteritem": "2-of-3"}) == 1 and ins.shard_count({"scatteritem": "2-of-3"}) == 3


def test_segment_inputs_belong_to_their_owner():
    ins = rule_inputs()
    bkey = ins.exp.baseline_key["demo"]["default"]
    run = ins.segment_inputs({"ds": "demo", "owner": "runs/default/seed0", "probe": "cluster"})
    assert run["codes"] == "results/demo/runs/default/seed0/codes.h5"
    assert run["centroids"] == "results/demo/runs/default/seed0/centroids.npy"
    base = ins.segment_inputs({"ds": "demo", "owner": f"baselines/{bkey}/seed0", "probe": "backbone_kmeans"})
    assert "codes" not in base and base["centroids"].endswith("/kmeans.npy")
    with pytest.raises(UserError, match="the backbone_\\* probes belong to"):
        ins.segment_inputs({"ds": "demo", "owner": "runs/default/seed0", "probe": "backbone_linear"})
    evaluated = ins.evaluate_inputs({"ds": "demo", "variant": "default", "seed": "0"})
    assert len(evaluated["segments"]) == 2 * 4 and evaluated["features"].endswith("/val.h5")
    assert evaluated["segments"][0] == "results/demo/runs/default/seed0/segment/cluster.1-of-2.h5"


def test_downloads_and_checkpoints():
    offline, online = rule_inputs(), rule_inputs(offline=False)
    weights = "resources/dino/dino_vitbase8_pretrain.pth"
    assert online.downloadable(weights) and not offline.downloadable(weights)
    assert online.backbone_weights_input({"ds": "cocostuff", "variant": "default"}) == [weights]
    with pytest.raises(UserError, match="not found"):
        offline.backbone_weights_input({"ds": "cocostuff", "variant": "default"})
    with pytest.raises(UserError, match="does not exist and `offline` is true"):
        offline.checkpoint_input({"ds": "cocostuff", "variant": "released"})
    assert online.checkpoint_input({"ds": "cocostuff", "variant": "released"}).endswith(".ckpt")
    assert "resources/cocostuff/images/train2017" in online.dataset_resources("cocostuff")
    with pytest.raises(UserError, match="train2017 is missing"):
        offline.dataset_resources("cocostuff")


def test_a_dry_run_warns_where_a_real_run_stops():
    config = workflow_config()
    said: list[str] = []
    ins = RuleInputs(Experiment(config), load_table(None), gather_segment=gather, dryrun=lambda: True,
                     warn=said.append)
    assert ins.backbone_weights_input({"ds": "cocostuff", "variant": "default"}) == []
    assert said and said[0].startswith("a real run would stop here")
