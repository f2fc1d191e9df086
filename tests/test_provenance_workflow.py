"""Provenance through the workflow: an edit of a compute function re-runs exactly the stages that call it; a
setting changed before a killed job, or after `rm -rf .snakemake`, still ends in the table of an
uninterrupted run after one plain rerun.

All cases start from copies of one finished tiny run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, SNAKEFILE, TINY, snakemake

pytestmark = pytest.mark.slow

TABLE = "results/demo/runs/default/seed0/miou.csv"
HEAD = "results/demo/runs/default/seed0/head.pt"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("finished")
    out = snakemake(workdir, "--cores", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def more_steps(tmp_path_factory) -> Path:
    """The tiny config with 30 training steps instead of 20."""
    config = yaml.safe_load(TINY.read_text())
    config["datasets"]["demo"]["overrides"]["train"]["steps"] = 30
    path = tmp_path_factory.mktemp("config") / "tiny_30_steps.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(finished, more_steps, tmp_path_factory) -> pd.DataFrame:
    """The table of an uninterrupted run with 30 steps, from a copy of the finished 20-step run."""
    workdir = copy_run(finished, tmp_path_factory.mktemp("reference"))
    out = snakemake(workdir, "--cores", "2", TABLE, configfile=more_steps)
    assert out.returncode == 0, out.stderr[-4000:]
    return pd.read_csv(workdir / TABLE)


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def planned(out: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule → job count of a dry run's job table ({} when there is nothing to be done)."""
    assert out.returncode == 0, out.stderr[-4000:]
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    lines = text.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the workflow and the package, to edit; Snakemake and its jobs import this copy."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("Snakefile", "workflow", "stego_steps", "config"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, copy / name)
    return copy


def dry_run(repo: Path, workdir: Path, *args: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir), "--configfile",
           str(TINY), "-n", *args]
    # from the copy's folder: `python -m` puts the working directory first on the import path
    return planned(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=repo))


def insert_before_return(path: Path, function: str, line: str) -> None:
    """Add a statement before the first `return` of `function` (a change of what the function does)."""
    text = path.read_text()
    start = text.index(f"def {function}(")
    at = text.index("return", start)
    path.write_text(text[:at] + line + "\n    " + text[at:])


def test_code_edits_rerun_exactly_the_stages_that_compute_with_them(finished, repo):
    assert dry_run(repo, finished) == {}
    # A docstring, a comment, a log message: nothing re-runs.
    loss = repo / "stego_steps" / "loss.py"
    loss.write_text(loss.read_text().replace('"""', '"""Edited: ', 1) + "\n# a comment\n")
    train = repo / "stego_steps" / "stages" / "train.py"
    assert 'log.info("loss shifts %s' in train.read_text()
    train.write_text(train.read_text().replace('log.info("loss shifts %s', 'log.info("shifts %s', 1))
    assert dry_run(repo, finished) == {}
    # The correlation loss: the stages that train (calibration trains short heads) and everything after them.
    insert_before_return(loss, "stego_loss", "edited = True")
    jobs = dry_run(repo, finished)
    assert set(jobs) == {"calibrate", "train", "cluster", "linear_probe", "predict", "segment", "evaluate",
                         "dataset_table", "figure_panels", "figure_metrics", "figure_training",
                         "figure_correlations", "all"}, jobs
    assert jobs["segment"] == 2  # the run's probes; the backbone baselines do not use the head
    # ... unless artifacts made by other code are kept on purpose.
    assert dry_run(repo, finished, "--config", "code_changes=keep") == {}


def test_an_evaluation_edit_reruns_only_the_evaluation(finished, repo):
    insert_before_return(repo / "stego_steps" / "metrics.py", "scores", "edited = True")
    jobs = dry_run(repo, finished)
    assert "evaluate" in jobs and not set(jobs) & {"extract", "knn", "calibrate", "train", "cluster", "segment",
                                                    "predict", "backbone_kmeans", "backbone_linear"}, jobs


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, "the workflow ended before the pause point"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


@pytest.mark.parametrize(("target", "sig"), [("job", signal.SIGKILL), ("job", signal.SIGTERM),
                                             ("workflow", signal.SIGKILL), ("workflow", signal.SIGTERM)],
                         ids=["job-SIGKILL", "job-SIGTERM", "workflow-SIGKILL", "workflow-SIGTERM"])
def test_a_killed_job_that_carried_a_setting_change_is_redone(finished, more_steps, reference, tmp_path, target,
                                                                sig):
    workdir = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "paused"
    env = {**os.environ, "STEGO_TEST_PAUSE": "train:checkpoint", "STEGO_TEST_MARKER": str(marker)}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile",
           str(more_steps), "--cores", "2", TABLE]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(marker, proc)
        assert (workdir / f"{HEAD}.checkpoint").exists()
        if target == "job":
            os.kill(int(marker.read_text()), sig)
        else:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with_unlock = target == "workflow" and sig == signal.SIGKILL  # a killed Snakemake leaves its lock
    if with_unlock:
        assert snakemake(workdir, "--unlock", configfile=more_steps).returncode == 0
    out = snakemake(workdir, "--cores", "2", TABLE, configfile=more_steps)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "train" in out.stderr  # the training ran again rather than keeping the 20-step head
    pd.testing.assert_frame_equal(pd.read_csv(workdir / TABLE), reference)
    assert not (workdir / f"{HEAD}.checkpoint").exists()


def test_a_setting_changed_after_deleting_snakemakes_metadata_reruns(finished, more_steps, reference, tmp_path):
    workdir = copy_run(finished, tmp_path / "run")
    shutil.rmtree(workdir / ".snakemake")
    out = snakemake(workdir, "--cores", "2", TABLE, configfile=more_steps)
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"{HEAD} was made by other code or settings (settings of train" in out.stdout + out.stderr
    pd.testing.assert_frame_equal(pd.read_csv(workdir / TABLE), reference)
    # and the next run has nothing to do
    assert planned(snakemake(workdir, "-n", TABLE, configfile=more_steps)) == {}


def test_a_truncated_artifact_is_re_made(finished, tmp_path):
    workdir = copy_run(finished, tmp_path / "run")
    knn = next((workdir / "results" / "demo" / "features").glob("*/knn7.npy"))
    knn.write_bytes(knn.read_bytes()[:100])
    out = snakemake(workdir, "-n", TABLE)
    text = out.stdout + out.stderr  # a dry run logs to stdout
    assert f"{knn.relative_to(workdir)} is damaged" in text, text[-3000:]
    jobs = planned(out)
    assert {"knn", "calibrate", "train"} <= set(jobs) and "extract" not in jobs, jobs
