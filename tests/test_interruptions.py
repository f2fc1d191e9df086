"""Stop a heavy job at a known point, kill it there, rerun, and find that it resumed and gave the uninterrupted table.

The test hook (`stego_steps.testhooks`, `STEGO_TEST_PAUSE`) makes a job pause right after it has made its
resumable state durable: the first batch of an extraction shard in its `.partial` store, the first training
checkpoint, the first image of a CRF shard in its `.partial` file. The test then sends SIGINT, SIGTERM or
SIGKILL either to Snakemake's process group (Ctrl-C, `timeout`, a scheduler's cancel, the OOM killer taking
everything) or to the paused job alone (the pid it wrote to the marker file), and asserts every time that

- the partial file or checkpoint is still there after the kill,
- the rerun (after `snakemake --unlock` where a lock is left) logs that it resumed from exactly that state,
- the table equals the uninterrupted run's exactly, and no partial file or checkpoint is left.

While one workflow is paused, a second one on the folder is refused (checked once).

One uninterrupted run is made in stages (module fixture); each case starts from a copy of the folder as it
was just before its stage, so it runs only the interrupted stage and what follows. The default run covers every
point, every signal and both targets (6 cases); `STEGO_ALL_INTERRUPTIONS=1` runs all 18 combinations.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
import yaml
from helpers import SNAKEFILE, TINY, snakemake

from stego_steps import testhooks

pytestmark = pytest.mark.slow

TARGET = "results/demo/miou.csv"
# Batches of 4 give the 6 evaluation images two extraction batches, so a paused shard has one left to do.
OVERRIDES = {"extract_batch": 4}

# Where each case starts: the uninterrupted run is made in these steps, the folder copied after each.
STEPS = {
    "extract": ["--until", "calibrate", "backbone_kmeans", "backbone_linear"],  # the val split is not extracted
    "train": ["--omit-from", "train"],  # everything except the head and what uses it
    "segment": ["--until", "predict", "cluster", "linear_probe"],  # everything before the run's CRF shards
}
POINTS = {"extract": "extract:shard", "train": "train:checkpoint", "segment": "segment:shard"}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
# Every point, every signal and both targets, each signal once per target.
DEFAULT = {("extract", "SIGKILL", "snakemake"), ("extract", "SIGINT", "job"), ("train", "SIGTERM", "snakemake"),
           ("train", "SIGKILL", "job"), ("segment", "SIGINT", "snakemake"), ("segment", "SIGTERM", "job")}
ALL = os.environ.get("STEGO_ALL_INTERRUPTIONS") == "1"


def cases() -> list:
    params = []
    for stage in POINTS:
        for sig in SIGNALS:
            for target in ("snakemake", "job"):
                marks = [] if ALL or (stage, sig, target) in DEFAULT else [
                    pytest.mark.skip(reason="one of the 18 combinations; STEGO_ALL_INTERRUPTIONS=1 runs them all")]
                params.append(pytest.param(stage, sig, target, marks=marks, id=f"{stage}-{sig}-of-{target}"))
    return params


def run(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    return snakemake(workdir, "--cores", "2", *args, configfile=config)


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict:
    """The uninterrupted table, the config, and a copy of the run's folder before each stage."""
    root = tmp_path_factory.mktemp("interruptions")
    config = root / "config.yaml"
    settings = yaml.safe_load(TINY.read_text())
    settings["datasets"]["demo"]["overrides"].update(OVERRIDES)
    config.write_text(yaml.safe_dump(settings))
    workdir, before = root / "uninterrupted", {}
    for stage, args in STEPS.items():
        out = run(workdir, config, TARGET, *args)
        assert out.returncode == 0, out.stderr[-4000:]
        before[stage] = root / f"before_{stage}"
        shutil.copytree(workdir, before[stage], symlinks=True)  # keeps modification times
    out = run(workdir, config, TARGET)
    assert out.returncode == 0, out.stderr[-4000:]
    return {"config": config, "before": before, "table": pd.read_csv(workdir / TARGET),
            "steps": settings["datasets"]["demo"]["overrides"]["train"]["steps"]}


def wait_for(marker: Path, proc: subprocess.Popen, output: Path, timeout_s: float = 600) -> int:
    """The pid the paused job wrote to `marker`; fails if the workflow ends (or times out) first."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the workflow ended or timed out before the pause:\n{output.read_text()[-4000:]}")
        time.sleep(0.05)
    return int(marker.read_text())


def resumable_state(workdir: Path, stage: str, steps: int) -> tuple[Path, int]:
    """The partial file or checkpoint a killed job left, and how far it got (samples, steps or images)."""
    pattern = {"extract": "results/demo/features/*/val/*.h5.partial",
               "train": "results/demo/runs/default/seed0/head.pt.checkpoint",
               "segment": "results/demo/runs/default/seed0/segment/*.h5.partial"}[stage]
    found = sorted(workdir.glob(pattern))
    assert len(found) == 1, f"expected one file matching {pattern} after the kill, found {found}"
    path = found[0]
    if stage == "train":
        done = int(torch.load(path, map_location="cpu", weights_only=False)["step"])
        total = steps
    else:
        with h5py.File(path, "r") as f:
            done, total = int(f.attrs["done"]), len(f["crf"] if stage == "segment" else f["feats"])
    assert 0 < done < total, f"{path} holds {done} of {total}: nothing, or everything, to resume"
    return path, done


def resume_line(workdir: Path, stage: str, path: Path, done: int) -> tuple[Path, str]:
    """The job log the rerun writes, and the line it must hold."""
    rel = path.relative_to(workdir)
    if stage == "extract":
        fkey, item = rel.parts[3], rel.name.removesuffix(".h5.partial")
        return workdir / f"logs/demo/features/{fkey}/extract.val.{item}.log", f"resuming {rel} at sample {done} of"
    if stage == "train":
        return workdir / "logs/demo/runs/default/seed0/train.log", f"resuming training at step {done} from {rel}"
    probe, item = re.fullmatch(r"(\w+)\.(\S+)\.h5\.partial", rel.name).groups()
    return workdir / f"logs/demo/runs/default/seed0/segment.{probe}.{item}.log", f"resuming {rel} at image {done} of"


def group_gone(pgid: int, timeout_s: float = 30) -> None:
    """Wait until the group's processes have exited: a SIGKILLed job's loader processes hold the partial store
    open (and HDF5's file lock) until the kernel has torn them down, which is not instant. (Where nothing reaps
    orphans, zombies stay in the group: then this waits `timeout_s` and the checks below say what is wrong.)"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def interrupted_output(text: str, stage: str, sig: str) -> None:
    """Ctrl-C or SIGTERM of the whole run: no traceback, no failed-job report, and the last line names the job
    that was stopped and the signal (beside any other job the signal stopped at the same time)."""
    for failure in ("Traceback", "Error in rule", "did not complete successfully", "CalledProcessError",
                    "Exiting because a job execution failed"):
        assert failure not in text, f"'{failure}' in the output of an interrupted run:\n{text[-4000:]}"
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith("INTERRUPTED: ") and f"{stage} stopped by {sig} (logs/" in last, text[-4000:]
    assert "run the same command again" in last


@pytest.mark.parametrize("stage, sig, target", cases())
def test_a_job_killed_at_its_first_durable_state_resumes_to_the_uninterrupted_table(tmp_path, stages, stage, sig,
                                                                                     target):
    config, workdir = stages["config"], tmp_path / "run"
    shutil.copytree(stages["before"][stage], workdir, symlinks=True)
    marker, output = tmp_path / "paused", tmp_path / "snakemake.out"
    env = {**os.environ, testhooks.PAUSE: POINTS[stage], testhooks.MARKER: str(marker)}
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile",
               str(config), "--cores", "2", TARGET]
    with output.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        pid = wait_for(marker, proc, output)
        if (stage, sig, target) == ("train", "SIGTERM", "snakemake"):  # once: a second workflow is refused
            second = run(workdir, config, TARGET)
            assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower(), second.stderr
        if target == "snakemake":
            os.killpg(proc.pid, SIGNALS[sig])
        else:
            os.kill(pid, SIGNALS[sig])
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the group (e.g. a killed job's CRF workers)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        group_gone(proc.pid)
    assert not (workdir / TARGET).exists()
    if target == "snakemake" and sig != "SIGKILL":
        interrupted_output(output.read_text(), stage, sig)
    if target == "job" and sig == "SIGKILL":  # the out-of-memory killer's way: the summary names the signal
        assert f"KILLED: {stage} was ended by SIGKILL" in output.read_text(), output.read_text()[-4000:]
    path, done = resumable_state(workdir, stage, stages["steps"])
    if any((workdir / ".snakemake" / "locks").glob("*")):  # a killed Snakemake leaves its lock
        unlock = run(workdir, config, "--unlock")
        assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = run(workdir, config, TARGET)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    log, line = resume_line(workdir, stage, path, done)
    assert line in log.read_text(), f"{log} does not say '{line}':\n{log.read_text()[-2000:]}"
    pd.testing.assert_frame_equal(pd.read_csv(workdir / TARGET), stages["table"])
    assert not list(workdir.rglob("*.partial")) and not list(workdir.rglob("*.checkpoint"))


def test_sigterm_of_snakemake_alone_finishes_the_running_jobs_and_ends_with_one_line(tmp_path, stages):
    """SIGTERM to Snakemake's process only (not its group): it lets the running job finish, starts no other and
    ends with one line, not with "did not complete"; the rerun goes on to the uninterrupted table."""
    config, workdir = stages["config"], tmp_path / "run"
    shutil.copytree(stages["before"]["train"], workdir, symlinks=True)
    output = tmp_path / "snakemake.out"
    train_log = workdir / "logs/demo/runs/default/seed0/train.log"
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile",
               str(config), "--cores", "2", TARGET]
    with output.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not train_log.exists():  # the train job has started
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the workflow ended or timed out before training:\n{output.read_text()[-4000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        group_gone(proc.pid)
    text = output.read_text()
    assert proc.returncode != 0 and not (workdir / TARGET).exists(), text[-4000:]
    assert (workdir / "results/demo/runs/default/seed0/head.pt").exists(), "the running train job did not finish"
    for failure in ("Traceback", "Error in rule", "did not complete successfully"):
        assert failure not in text, f"'{failure}' in the output of a run stopped by SIGTERM:\n{text[-4000:]}"
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last == ("INTERRUPTED: the run was stopped by SIGTERM once the jobs it was running had finished. Nothing "
                    "failed: run the same command again to go on"), text[-4000:]
    rerun = run(workdir, config, TARGET)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    pd.testing.assert_frame_equal(pd.read_csv(workdir / TARGET), stages["table"])
