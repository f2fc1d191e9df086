"""What decides each rule's outputs: the steps that provenance digests, from plain wildcard values."""

import pytest
from workflow_config import workflow_config

from stego_steps.download import load_table
from stego_steps.errors import UserError
from stego_steps.experiment import Experiment
from stego_steps.rule_inputs import RuleInputs
from stego_steps.steps import DecidingSteps


@pytest.fixture(scope="module")
def steps() -> DecidingSteps:
    config = workflow_config(tables={"main": ["demo"], "ablation": ["demo"]})
    exp = Experiment(config)
    return DecidingSteps(RuleInputs(exp, load_table(None), gather_segment=lambda p: [p]))


RUN = {"ds": "demo", "variant": "default", "seed": "0"}


def test_each_stage_decides_itself_and_what_follows(steps):
    train = steps("train", RUN)
    assert list(train) == ["data", "prepare", "extract_train", "knn", "calibrate", "train"]
    assert train["train"][0] == "stages.train" and train["data"][0] == "stages.prepare"  # the demo is rendered
    assert "train" not in steps("calibrate", RUN)
    evaluate = steps("evaluate", RUN)
    assert {"segment_cluster", "segment_backbone_linear", "extract_val", "predict", "evaluate"} <= set(evaluate)
    assert steps("dataset_table", {"ds": "demo", "table": "miou"}) == evaluate
    assert steps("figure_training", RUN)["figures"] == ("stages.figures", {})


def test_a_baseline_needs_no_head(steps):
    bkey = steps.exp.baseline_key["demo"]["default"]
    kmeans = steps("segment", {"ds": "demo", "owner": f"baselines/{bkey}/seed0", "probe": "backbone_kmeans"})
    assert "train" not in kmeans and kmeans["backbone_kmeans"][0] == "stages.cluster"
    assert kmeans["segment_backbone_kmeans"] == ("stages.segment", {"probe": "backbone_kmeans"})


def test_an_imported_checkpoint_decides_its_probes_as_data(steps):
    released = steps.probe("cocostuff", "released", 0, "cluster")
    assert released["import"][0] == "stages.import_checkpoint" and released["cluster"][0] is None
    assert "train" not in released


def test_tables_name_every_run(steps):
    main = steps("table_main", {})
    assert main["table"] == ("stages.tables", {"kind": "table_main"})
    assert "demo/default/seed0/evaluate" in main
    ablation = steps("table_ablation", {"ds": "demo"})
    assert "demo/ablate_mlp/seed0/train" in ablation


def test_every_module_is_a_stage_and_unknown_rules_are_refused(steps):
    modules = {m for s in (steps("evaluate", RUN), steps("table_ablation", {"ds": "demo"})) for m, _ in s.values()}
    assert all(m is None or m.startswith("stages.") for m in modules)
    with pytest.raises(UserError, match="no provenance steps for rule 'nope'"):
        steps("nope", RUN)
