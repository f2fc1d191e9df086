"""The workflow end to end on a tiny demo config, in a temporary working directory."""

import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import default_run, only_features, snakemake

from stego_steps.protocol import ROWS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
STAGES = {"prepare", "plan", "extract", "gather_features", "knn", "calibrate", "train", "cluster", "backbone_kmeans",
          "backbone_linear", "linear_probe", "predict", "segment", "evaluate", "dataset_table"}


def test_dry_run_lists_every_stage(tmp_path):
    out = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr
    assert STAGES <= set(out.stdout.split()) | set(out.stderr.split())


def test_bad_config_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  demo:\n    overrides:\n      train: {stepz: 3}\n")
    out = snakemake(tmp_path, "--configfile", str(bad), "--cores", "1")
    assert out.returncode != 0
    assert "datasets.demo.overrides.train" in out.stderr and "stepz" in out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    out = snakemake(tmp_path, "--cores", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results" / "demo" / "miou.csv")
    assert list(zip(table["probe"], table["crf"], strict=True)) == [
        ("cluster", False), ("cluster", True), ("linear", False), ("linear", True), ("backbone_kmeans", False),
        ("backbone_kmeans", True), ("backbone_linear", False), ("backbone_linear", True)]
    assert set(table.columns) >= {"dataset", "backbone", "probe", "crf", "pixel_accuracy", "miou", "n_images"}
    assert (table["n_images"] == 6).all() and (table["backbone"] == "efficientnet_lite0").all()
    assert table["pixel_accuracy"].between(0, 100).all() and table["miou"].between(0, 100).all()
    run = default_run(tmp_path)
    # results/demo/miou.csv is the default variant's first seed.
    pd.testing.assert_frame_equal(pd.read_csv(run / "miou.csv"), table)
    per_class = pd.read_csv(run / "per_class_iou.csv")
    assert len(per_class) == len(ROWS) * 6
    for name in ("train_log.csv", "settings.json", "head.pt", "calibration.json", "centroids.npy", "linear.pt"):
        assert (run / name).exists()
    steps = pd.read_csv(run / "train_log.csv")
    assert len(steps) == 20
    features = only_features(tmp_path)
    assert features.name.startswith("efficientnet_lite0_") and (features / "knn7.npy").exists()

    # Another variant or seed of the finished dataset reuses its feature stores and KNN table (and, where its
    # clustering settings are the same, its baselines): its dry run lists no extraction, KNN or baseline job.
    for target in ("results/demo/runs/ablate_mlp/seed0/miou.csv", "results/demo/runs/default/seed1/miou.csv"):
        dry = snakemake(tmp_path, "-n", "--quiet", "rules", "--", target)
        assert dry.returncode == 0, dry.stderr[-2000:]
        jobs = set((dry.stdout + dry.stderr).split())
        assert {"train", "cluster", "evaluate"} <= jobs and not {"prepare", "plan", "extract", "knn"} & jobs, jobs
        assert ("backbone_kmeans" in jobs) == target.endswith("seed1/miou.csv")
    # One that changes the extraction (five-crop) gets its own stores.
    dry = snakemake(tmp_path, "-n", "--quiet", "rules", "--", "results/demo/runs/ablate_five_crop/seed0/miou.csv")
    assert {"prepare", "extract", "knn"} <= set((dry.stdout + dry.stderr).split())
    # Nothing left to do: a second run is a no-op, also on another device (the tiny config says cpu).
    again = snakemake(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    other_device = snakemake(tmp_path, "--cores", "2", "-n", "--config", "device=auto")
    assert other_device.returncode == 0, other_device.stderr[-2000:]
    assert "Nothing to be done" in other_device.stdout + other_device.stderr
    # Bookkeeping is no setting: another checkpoint interval re-runs nothing.
    bookkeeping = snakemake(tmp_path, "--cores", "2", "-n", "--config",
                            'datasets={"demo": {"overrides": {"train": {"checkpoint_every": 3}}}}')
    assert "Nothing to be done" in bookkeeping.stdout + bookkeeping.stderr, bookkeeping.stdout[-3000:]
    # The preset's seed does not seed pretrained weights: its features and KNN table are those of any seed.
    seeded = snakemake(tmp_path, "--cores", "2", "-n", "--config", 'datasets={"demo": {"overrides": {"seed": 5}}}',
                       "--", str((features / "knn7.npy").relative_to(tmp_path)))
    assert "Nothing to be done" in seeded.stdout + seeded.stderr, seeded.stdout[-3000:]

    # A changed extraction setting is brought up to date by one invocation, which then leaves nothing to do.
    changed = ["--config", 'datasets={"demo": {"overrides": {"train_res": 96}}}']
    out = snakemake(tmp_path, "--cores", "2", *changed)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "rule extract:" in out.stderr and "rule evaluate:" in out.stderr
    assert len([p for p in (tmp_path / "results" / "demo" / "features").iterdir() if p.is_dir()]) == 2
    again = snakemake(tmp_path, "--cores", "2", "-n", *changed)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]

    # The same configuration gives the same table whatever --cores is: torch's compute threads are fixed by
    # the config, not by the job's share of the cores. Nor does the memory budget change it: with a budget of
    # 0, training streams the store from disk through the same batches. Equal by construction, so compared
    # exactly.
    monkeypatch.setenv("STEGO_MAX_MEMORY_GB", "0")
    out = snakemake(tmp_path, "--cores", "1", "--forceall", "results/demo/miou.csv")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "streaming" in (tmp_path / "logs" / "demo" / "runs" / "default" / "seed0" / "train.log").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results" / "demo" / "miou.csv"), table)


def test_offline_missing_resources_stop_the_run_before_any_job(tmp_path):
    # The tiny config says `offline: true`: the COCO images are not downloaded, and the run says from where.
    out = snakemake(tmp_path, "--cores", "1", "results/cocostuff/index/train.csv")
    assert out.returncode != 0
    assert "resources/cocostuff/images/train2017 is missing" in out.stderr
    assert "http://images.cocodataset.org/zips/train2017.zip" in out.stderr
    # Data in place (a root outside resources/), weights missing: stopped while the DAG is built, too.
    own_data = ["--config", 'datasets={"cocostuff": {"root": "data/cocostuff"}}']
    out = snakemake(tmp_path, "--cores", "1", "results/cocostuff/miou.csv", *own_data)
    assert out.returncode != 0
    assert "weights file for backbone 'dino_vitb8' not found: resources/dino/dino_vitbase8_pretrain.pth" in out.stderr
    assert "offline: false" in out.stderr
    assert not (tmp_path / "results").exists()
    # A dry run still shows the DAG, with the preset's values, and the warning.
    dry = snakemake(tmp_path, "-n", "-p", "results/cocostuff/miou.csv", *own_data)
    assert dry.returncode == 0, dry.stderr[-2000:]
    text = dry.stdout + dry.stderr
    assert "a real run would stop here" in text and '"jpeg_quality": 75' in text and '"code_dim": 90' in text


def test_online_the_dag_downloads_weights_data_and_the_released_checkpoint(tmp_path):
    """Only the DAG: nothing is fetched in a dry run."""
    dry = snakemake(tmp_path, "-n", "--quiet", "rules", "--config", "offline=false", "--",
                    "results/cocostuff/miou.csv", "results/cocostuff/runs/released/seed0/miou.csv")
    assert dry.returncode == 0, dry.stderr[-2000:]
    jobs = (dry.stdout + dry.stderr).split()
    assert {"download", "unpack_resource", "import_checkpoint", "train", "evaluate"} <= set(jobs)
    dry = snakemake(tmp_path, "-n", "-p", "--config", "offline=false", "--", "results/cocostuff/miou.csv")
    text = dry.stdout + dry.stderr
    for url in ("dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain", "images.cocodataset.org/zips/val2017.zip",
                "stuffthingmaps_trainval2017.zip"):
        assert url in text, url


def test_the_device_reaches_every_model_stage_as_a_resource(tmp_path):
    dry = snakemake(tmp_path, "-n", "-p", "--config", "device=cuda")
    assert dry.returncode == 0, dry.stderr[-2000:]
    text = dry.stdout + dry.stderr
    for stage in ("extract", "knn", "train", "cluster", "probe", "predict"):
        commands = [line for line in text.splitlines() if f"python -m stego_steps.stages.{stage} --" in line]
        assert commands and all("--device cuda" in line for line in commands), stage
    assert "--device" not in " ".join(line for line in text.splitlines() if "stego_steps.stages.segment " in line)


def test_command_line_overrides_reach_the_stages(tmp_path):
    dry = snakemake(tmp_path, "-n", "-p", "--config", 'datasets={"demo": {"overrides": {"train": {"steps": 5}}}}')
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert '"steps": 5, "lr"' in dry.stdout + dry.stderr


def test_the_default_profile_applies_to_every_run(tmp_path):
    """Snakemake finds workflow/profiles/default through the top-level `profiles` link (it looks beside the
    Snakefile); without it an interrupted run would stop with IncompleteFilesException."""
    out = snakemake(tmp_path, "-n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"Using workflow specific profile \S*profiles/default", out.stdout + out.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "settings", "dim", "grid"), [
    ("dinov3_vits16_random", {}, 384, 4),  # ViT-S/16 with 4 registers: 64 px → 4×4 patch tokens
    ("timm/resnet18_random", {"layers": [2, 3]}, 128 + 256, 8),  # any timm model: stride-8 ⊕ stride-16 stages
])
def test_the_tiny_demo_runs_with_other_backbones(tmp_path, backbone, settings, dim, grid):
    """DINOv3 and a generic timm model (seeded random weights) through the whole DAG of the tiny demo; the store
    folder is the backbone's safe name, and the store holds its channels at its grid."""
    import json

    import h5py

    from stego_steps.config import safe_name

    config = [f"datasets={json.dumps({'demo': {'overrides': {'backbone': backbone}}})}"]
    if settings:
        config.append(f"backbones={json.dumps({backbone: settings})}")
    out = snakemake(tmp_path, "--cores", "2", "--config", *config)
    assert out.returncode == 0, out.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results" / "demo" / "miou.csv")
    assert (table["backbone"] == backbone).all() and table["miou"].between(0, 100).all()
    features = only_features(tmp_path)
    assert features.name.startswith(safe_name(backbone) + "_") and "/" not in features.name
    with h5py.File(features / "train.h5") as f:
        assert f["feats"].shape[1:] == (dim, grid, grid) and f.attrs["backbone"] == backbone
