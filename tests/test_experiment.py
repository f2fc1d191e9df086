"""The experiment as the workflow sees it: resolved variants, shared keys, the DAG-time checks, the table runs;
and the ablation axes, whose one home is stego_steps.config."""

import pytest
from workflow_config import workflow_config

from stego_steps import config as C
from stego_steps import experiment_tables
from stego_steps.config import ConfigError
from stego_steps.errors import UserError
from stego_steps.experiment import Experiment


def test_variants_resolve_once_and_share_their_stores():
    exp = Experiment(workflow_config())
    assert list(exp.resolved["demo"])[:2] == ["default", "ablate_mlp"]
    key = exp.feature_key["demo"]["default"]
    # The head does not change what is extracted: both variants read one store, made with the default's settings.
    assert exp.feature_key["demo"]["ablate_mlp"] == key and exp.features[("demo", key)] == "default"
    assert exp.features_dir("demo", "ablate_mlp") == f"results/demo/features/{key}"
    assert exp.variant_of({"ds": "demo", "variant": "ablate_mlp"}) == "ablate_mlp"
    assert exp.variant_of({"ds": "demo", "fkey": key}) == "default"
    bkey = exp.baseline_key["demo"]["default"]
    assert exp.variant_of({"ds": "demo", "bkey": bkey}) == "default"
    assert exp.owner_variant("demo", f"baselines/{bkey}/seed3") == ("baselines", "default", 3)
    assert exp.owner_variant("demo", "runs/ablate_mlp/seed0") == ("runs", "ablate_mlp", 0)
    assert exp.default_run("demo") == "results/demo/runs/default/seed0"
    assert exp.index_dir("demo", "default") == "results/demo/index"
    assert exp.index_variant("demo", "index_five_crop_0.5") == "ablate_five_crop"
    assert "default" in exp.trained() and exp.imported() == ["released"]


def test_an_imported_checkpoint_has_one_seed():
    exp = Experiment(workflow_config(datasets={"cocostuff": {"seeds": [0, 1]}}))
    assert exp.run_seeds("cocostuff", "released") == [0] and exp.run_seeds("cocostuff", "default") == [0, 1]


def test_bad_experiments_stop_before_any_job():
    with pytest.raises(ConfigError, match="run lists 'nope'"):
        Experiment(workflow_config(run=["nope"]))
    exp = Experiment(workflow_config(datasets={"demo": {"overrides": {"train_res": 65}}}))
    with pytest.raises(UserError, match="train_res 65 is not a multiple of backbone efficientnet_lite0's patch size"):
        exp.check_datasets()
    Experiment(workflow_config()).check_datasets()


def test_labels_decide_the_target_and_refuse_the_metrics(tmp_path):
    root = tmp_path / "mine"
    (root / "imgs" / "train").mkdir(parents=True)
    exp = Experiment(workflow_config(datasets={"mine": {"kind": "directory", "preset": "demo", "root": str(root)}}))
    assert not exp.labelled("mine") and exp.final_target("mine") == "results/mine/clusters.csv"
    assert exp.run_table("mine", "default", 0) == "results/mine/runs/default/seed0/clusters.csv"
    with pytest.raises(UserError, match="dataset 'mine' has no labels, so the x cannot be computed"):
        exp.require_labels("mine", "the x")
    assert len(exp.figure_targets("mine")) == 3 and len(exp.figure_targets("demo")) > 3
    assert exp.final_target("demo") == "results/demo/miou.csv"
    (root / "labels" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"labels/val does not exist"):
        exp.labelled("mine")


def test_table_runs_and_targets():
    exp = Experiment(workflow_config(tables={"main": ["demo"], "ablation": ["demo"]},
                                     datasets={"demo": {"seeds": [0, 1]}}))
    main = exp.main_table_runs()
    assert [(r["variant"], r["seed"]) for r in main] == [("default", 0), ("default", 1)]
    assert main[0] == {"dataset": "demo", "variant": "default", "seed": 0, "kind": "demo",
                       "backbone": "efficientnet_lite0", "path": "results/demo/runs/default/seed0/miou.csv"}
    runs = exp.ablation_runs("demo")
    assert {r["variant"] for r in runs} == {"default", *C.ablations(exp.resolved["demo"]["default"])}
    assert all(r["axes"] == C.ablation_axes(exp.resolved["demo"][r["variant"]]) for r in runs)
    assert exp.table_targets()[0] == "results/tables/main.csv" and len(exp.table_targets()) == 4
    targets = exp.target_datasets()["demo"]
    assert targets.seeds == (0, 1) and targets.labelled and "ablate_mlp" in targets.variants


def test_each_ablation_switches_its_own_axis_only():
    full = Experiment(workflow_config()).resolved["demo"]["default"]
    kept = C.ablation_axes(full)
    for axis in C.ABLATION_AXES:
        ablated = C.resolve(workflow_config(), "demo", f"ablate_{axis}")
        assert C.ablation_axes(ablated) == {**kept, axis: not kept[axis]}, axis
    # the ablation table's columns: the axes and the CRF
    assert set(experiment_tables.AXES) == {*C.ABLATION_AXES, "crf"}
    assert C.is_ablation("ablate_mlp") and not C.is_ablation("default")
