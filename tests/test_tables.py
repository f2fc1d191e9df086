"""The experiment tables, assembled from hand-written miou.csv files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from stego_steps import experiment_tables
from stego_steps.errors import UserError
from stego_steps.stages import tables

COLUMNS = "dataset,backbone,probe,crf,pixel_accuracy,miou,n_images\n"


def write_run(path, scores: dict[tuple[str, bool], tuple[float, float]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"x,bb,{probe},{crf},{acc},{miou},10" for (probe, crf), (acc, miou) in scores.items()]
    path.write_text(COLUMNS + "\n".join(lines) + "\n")
    return str(path)


def test_main_table_means_stds_n_and_paper_deltas(tmp_path):
    runs = []
    for seed, (acc, miou) in enumerate([(50.0, 20.0), (54.0, 26.0), (55.0, 29.0)]):
        path = write_run(tmp_path / f"coco{seed}.csv", {("cluster", False): (acc - 5, miou - 5),
                                                        ("cluster", True): (acc, miou),
                                                        ("backbone_kmeans", True): (30.0, 10.0)})
        runs.append({"dataset": "coco", "variant": "default", "seed": seed, "kind": "cocostuff",
                     "backbone": "dino_vitb8", "path": path})
    runs.append({"dataset": "mine", "variant": "default", "seed": 0, "kind": "directory", "backbone": "dino_vitb8",
                 "path": write_run(tmp_path / "mine.csv", {("cluster", True): (60.0, 40.0)})})
    table = experiment_tables.main_table(experiment_tables.read_runs(runs))
    coco = table[(table["dataset"] == "coco") & (table["probe"] == "cluster") & table["crf"]].iloc[0]
    assert coco["n"] == 3
    assert coco["acc_mean"] == pytest.approx(53.0)
    assert coco["miou_mean"] == pytest.approx(25.0)
    assert coco["miou_std"] == pytest.approx(math.sqrt(((20 - 25) ** 2 + 1 + 16) / 2))  # sample std (ddof 1)
    assert (coco["paper_acc"], coco["paper_miou"]) == (56.9, 28.2)
    assert coco["delta_miou"] == pytest.approx(25.0 - 28.2)
    # The paper reports with the CRF only; baselines and other datasets have no sourced numbers: blank.
    raw = table[(table["dataset"] == "coco") & (table["probe"] == "cluster") & ~table["crf"]].iloc[0]
    assert math.isnan(raw["paper_miou"]) and math.isnan(raw["delta_miou"])
    baseline = table[table["probe"] == "backbone_kmeans"].iloc[0]
    assert baseline["method"] == "backbone K-Means" and baseline["miou_std"] == 0.0
    mine = table[table["dataset"] == "mine"].iloc[0]
    assert mine["n"] == 1 and math.isnan(mine["miou_std"]) and math.isnan(mine["paper_miou"])

    text = experiment_tables.main_markdown(table)
    assert ("| coco | dino_vitb8 | default | STEGO cluster | ✓ | 53.0 ± 2.6 | 25.0 ± 4.6 | 3 | 56.9 | 28.2 | -3.9 "
            "| -3.2 |") in text
    assert "| mine | dino_vitb8 | default | STEGO cluster | ✓ | 60.0 | 40.0 | 1 |  |  |  |  |" in text


def test_ablation_table_axes_and_deltas(tmp_path):
    keep = {"mlp": True, "zero_clamp": True, "five_crop": False, "spatial_centering": True,
            "self": True, "knn": True, "random": True}
    runs = []
    for variant, axes, miou in [("default", keep, 60.0), ("ablate_mlp", {**keep, "mlp": False}, 50.0),
                                ("ablate_knn", {**keep, "knn": False}, 40.0)]:
        for seed in (0, 1):
            path = write_run(tmp_path / variant / f"{seed}.csv", {
                ("cluster", False): (70.0, miou - 10 + seed), ("cluster", True): (80.0, miou + seed),
                ("linear", False): (85.0, 70.0), ("linear", True): (86.0, 71.0)})
            runs.append({"dataset": "d", "variant": variant, "seed": seed, "path": path, "axes": axes})
    table = experiment_tables.ablation_table(experiment_tables.read_runs(runs), {r["variant"]: r["axes"] for r in runs})
    assert list(table["variant"]) == ["default", "default without CRF", "ablate_mlp", "ablate_knn"]
    assert list(table["crf"]) == [True, False, True, True]
    assert list(table["mlp"]) == [True, True, False, True]
    assert list(table["knn"]) == [True, True, True, False]
    assert list(table["cluster_miou_mean"]) == [60.5, 50.5, 50.5, 40.5]
    assert list(table["delta_cluster_miou"]) == [0.0, -10.0, -10.0, -20.0]
    assert list(table["n"]) == [2, 2, 2, 2]
    assert table["cluster_miou_std"].iloc[0] == pytest.approx(math.sqrt(0.5))
    text = experiment_tables.ablation_markdown(table)
    assert ("| ablate_knn | ✓ | ✓ | ✗ | ✓ | ✓ | ✓ | ✗ | ✓ | 80.0 ± 0.0 | 40.5 ± 0.7 | 86.0 ± 0.0 | 71.0 ± 0.0 | 2 "
            "| -20.0 |") in text


def test_cli_writes_both_files_and_names_a_missing_run(tmp_path):
    path = write_run(tmp_path / "r.csv", {("cluster", True): (80.0, 60.0)})
    runs = [{"dataset": "d", "variant": "default", "seed": 0, "kind": "demo", "backbone": "b", "path": path}]
    tables.main(["main", "--runs", json.dumps(runs), "--out-csv", str(tmp_path / "t.csv"),
                 "--out-md", str(tmp_path / "t.md")])
    assert pd.read_csv(tmp_path / "t.csv")["miou_mean"].tolist() == [60.0]
    assert "STEGO cluster" in (tmp_path / "t.md").read_text()
    missing = [{**runs[0], "path": str(tmp_path / "absent.csv")}]
    with pytest.raises(UserError, match="absent.csv is missing"):
        experiment_tables.read_runs(missing)
