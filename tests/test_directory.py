"""A `directory` dataset (your own images) through the whole workflow with the EfficientNet-Lite0 backbone,
from a config of a few lines: with labels to the metrics, without labels to the cluster segmentations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
from helpers import default_run, only_baseline, snakemake

from stego_steps import calibration, demo

ROOT = Path(__file__).resolve().parents[1]
CLASSES = list(demo.CLASS_NAMES)
# What a user writes (the README's mine.yaml), plus the tiny sizes of tests/data/tiny_config.yaml.
CONFIG = """\
run: [mine]
device: cpu
datasets:
  mine:
    kind: directory
    preset: {preset}
    root: {root}
    class_names: [{classes}]
    overrides:
      train_res: 64
      eval_res: 96
      train: {{batch_size: 8, steps: 20, checkpoint_every: 10}}
      cluster: {{iterations: 10, batch_images: 4, init_images: 4, n_init: 2}}
      probe: {{steps: 10, batch_size: 4}}
      calibration: {{batches: 4, selection: {{steps: 10, images: 4}}}}
"""


def make_folder(root: Path, labels: bool = True) -> Path:
    """Demo scenes rearranged into the `directory` layout: imgs/{train,val}/*.png (+ labels/{train,val}/*.png)."""
    scratch = root.parent / f"{root.name}_scenes"
    rows = demo.write_demo(scratch, {"train": 24, "val": 6}, height=96, width=128, seed=0)
    for split, split_rows in rows.items():
        for row in split_rows:
            for key, folder in (("image", "imgs"), ("label", "labels")):
                if key == "label" and not labels:
                    continue
                dest = root / folder / split / Path(row[key]).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(row[key], dest)
    shutil.rmtree(scratch)
    return root


def workdir_with_config(tmp_path: Path, labels: bool, preset: str = "directory") -> tuple[Path, Path]:
    make_folder(tmp_path / "data" / "mine", labels=labels)
    config = tmp_path / "mine.yaml"
    config.write_text(CONFIG.format(root="data/mine", classes=", ".join(CLASSES), preset=preset))
    return tmp_path, config


def test_labels_are_decided_from_the_folder_before_any_job(tmp_path):
    workdir, config = workdir_with_config(tmp_path, labels=False)
    out = snakemake(workdir, "-n", "--quiet", "rules", configfile=config)
    assert out.returncode == 0, out.stderr
    jobs = set((out.stdout + out.stderr).split())
    assert {"prepare", "plan", "extract", "cluster", "backbone_kmeans", "segment", "evaluate_unlabelled"} <= jobs
    assert not {"linear_probe", "evaluate"} & jobs
    # The metrics of an unlabelled dataset are refused with the reason, before any job.
    out = snakemake(workdir, "-n", "results/mine/miou.csv", configfile=config)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "has no labels" in said and "results/mine/clusters.csv" in said
    # `labelled: true` without the label folders: stopped while the DAG is built.
    forced = tmp_path / "forced.yaml"
    forced.write_text("datasets:\n  mine:\n    labelled: true\n")
    out = snakemake(workdir, str(forced), "--cores", "1", configfile=config)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "labels/train does not exist" in said and "labelled: false" in said
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_directory_with_labels_end_to_end(tmp_path):
    workdir, config = workdir_with_config(tmp_path, labels=True)
    out = snakemake(workdir, "--cores", "2", configfile=config)
    assert out.returncode == 0, out.stderr[-4000:]
    base = tmp_path / "results" / "mine"
    table = pd.read_csv(base / "miou.csv")
    assert list(zip(table["probe"], table["crf"], strict=True)) == [
        ("cluster", False), ("cluster", True), ("linear", False), ("linear", True), ("backbone_kmeans", False),
        ("backbone_kmeans", True), ("backbone_linear", False), ("backbone_linear", True)]
    assert (table["dataset"] == "mine").all() and (table["backbone"] == "efficientnet_lite0").all()
    assert (table["n_images"] == 6).all()
    assert table["pixel_accuracy"].between(0, 100).all() and table["miou"].between(0, 100).all()
    # The demo scenes are easy for a pretrained backbone: better than chance (1/6 of the pixels) everywhere.
    assert (table["pixel_accuracy"] > 100 / len(CLASSES)).all()
    per_class = pd.read_csv(default_run(tmp_path, "mine") / "per_class_iou.csv")
    assert per_class["class"].iloc[: len(CLASSES)].tolist() == CLASSES
    # The recipe's one candidate: its quantiles of the training correlations used as they are (nothing to
    # choose, no selection heads), and shown in the report.
    record = json.loads((default_run(tmp_path, "mine") / "calibration.json").read_text())
    assert record["calibrated"] and record["chosen"] == 0 and record["decision"] is None
    assert [c["quantiles"] for c in record["candidates"]] == [{"self": 0.2, "knn": 0.1, "random": 1.0}]
    assert "crf_agreement" not in record["candidates"][0]
    shown = pd.read_csv(default_run(tmp_path, "mine") / "figures" / "calibration.csv")
    assert shown["used"].tolist() == [False, True]
    (plans,) = (base / "plan").iterdir()
    assert "train       24" in (plans / "train.txt").read_text() and "val          6" in (plans / "val.txt").read_text()


@pytest.mark.slow
def test_directory_without_labels_ends_with_the_cluster_segmentations(tmp_path):
    # Through the demo preset, whose `calibrate: auto` chooses between two candidates on a directory dataset
    # (the choice reads no labels either).
    workdir, config = workdir_with_config(tmp_path, labels=False, preset="demo")
    out = snakemake(workdir, "--cores", "2", configfile=config)
    assert out.returncode == 0, out.stderr[-4000:]
    base = tmp_path / "results" / "mine"
    run = default_run(tmp_path, "mine")
    assert not (base / "miou.csv").exists() and not (run / "linear.pt").exists()
    for owner, probe in ((run, "cluster"), (only_baseline(tmp_path, "mine"), "backbone_kmeans")):
        with h5py.File(owner / "segment" / f"{probe}.1-of-1.h5", "r") as f:
            assert f["crf"].shape == (6, 96, 96) and f["raw"].shape == (6, 96, 96)
    table = pd.read_csv(base / "clusters.csv")
    assert set(zip(table["probe"], table["crf"], strict=True)) == {
        ("cluster", False), ("cluster", True), ("backbone_kmeans", False), ("backbone_kmeans", True)}
    for _, group in table.groupby(["probe", "crf"]):
        assert group["cluster"].tolist() == list(range(len(CLASSES)))
        assert group["share"].sum() == pytest.approx(100.0) and group["pixels"].sum() == 6 * 96 * 96
    # Each candidate scored, the one the rule picks used and shown in the report.
    record = json.loads((run / "calibration.json").read_text())
    scores = [c["crf_agreement"] for c in record["candidates"]]
    assert record["calibrated"] and len(scores) == 2 and record["chosen"] == calibration.choose(scores, 0.8)
    shown = pd.read_csv(run / "figures" / "calibration.csv")
    assert shown["used"].tolist() == [False, *(i == record["chosen"] for i in range(2))]
    # Pictures without labels: one colour per cluster, no metrics pictures.
    assert {p.name for p in (run / "figures").iterdir()} == {"panels.png", "training.png", "correlations.png",
                                                              "correlations.csv", "calibration.csv"}
