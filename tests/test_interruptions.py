"""Kill the workflow at the heavy stages (extraction, training, CRF), rerun it, and find the uninterrupted table.

Each test runs the tiny demo in its own folder, sends SIGKILL to Snakemake's whole process group (the workflow
and its running job) as soon as the stage has started writing, then runs `snakemake --unlock` and the same
command again. Outputs are written atomically and the heavy stages resume from their partial files, so the
rerun's table must equal the uninterrupted one exactly (the same computation on the same batches)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pandas as pd
import pytest
from helpers import SNAKEFILE, TINY, snakemake

pytestmark = pytest.mark.slow


def command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile", str(TINY),
            "--cores", "2"]


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return snakemake(workdir, "--cores", "2", *args)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = run(workdir)
    assert out.returncode == 0, out.stderr[-4000:]
    return pd.read_csv(workdir / "results" / "demo" / "miou.csv")


def kill_when(workdir: Path, pattern: str, timeout_s: float = 600) -> str:
    """Start the workflow, SIGKILL its process group once a file matching `pattern` appears; return the path.
    While it runs, a second workflow on the same folder is refused (Snakemake's lock)."""
    proc = subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, found, second = time.monotonic() + timeout_s, None, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = next(workdir.glob(pattern), None)
            if found is not None:
                if second is None:
                    second = run(workdir, "results/demo/miou.csv")
                break
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the workflow may have ended first
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert found is not None, f"the workflow ended or timed out before {pattern} appeared"
    assert second.returncode != 0 and "lock" in second.stderr.lower(), second.stderr[-2000:]
    return str(found)


@pytest.mark.parametrize("stage, pattern", [
    ("extract", "results/demo/features/*/train/*.h5.partial"),
    ("train", "results/demo/runs/default/seed0/head.pt.checkpoint"),
    ("crf", "logs/demo/runs/default/seed0/segment_cluster.*.log"),
])
def test_a_killed_run_resumes_to_the_uninterrupted_table(tmp_path, uninterrupted, stage, pattern):
    """`stage` names the case; `pattern` is the file whose appearance triggers the kill."""
    kill_when(tmp_path, pattern)
    assert not (tmp_path / "results" / "demo" / "miou.csv").exists()
    # What the killed run left to resume from (read now that no process holds it).
    partial = next((tmp_path / "results").rglob("*.h5.partial"), None)
    partial_done = 0
    if partial is not None:
        with contextlib.suppress(OSError, KeyError), h5py.File(partial, "r") as f:
            partial_done = int(f.attrs["done"])
    checkpoint = next((tmp_path / "results").rglob("*.checkpoint"), None)
    unlock = run(tmp_path, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    out = run(tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    logs = {path.name: path.read_text() for path in (tmp_path / "logs").rglob("*.log")}
    if partial_done:
        assert any(f"at sample {partial_done}" in text for text in logs.values())
    if checkpoint is not None:
        assert any("resuming training at step 10" in text for text in logs.values())
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results" / "demo" / "miou.csv"), uninterrupted)
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob("*.checkpoint"))
