"""The package installs like one: a non-editable `pip install` into a fresh environment, then the workflow
runs from another directory with nothing of the repository on the import path."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, snakemake

IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_installed_package_runs_the_demo_from_another_directory(tmp_path):
    # Only what a source distribution holds: pyproject.toml and the package, copied away from the repository.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "stego_steps", source / "stego_steps", ignore=IGNORE)
    shutil.copy(ROOT / "pyproject.toml", source)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    # The dependencies (torch, ...), pip and setuptools come from this test's environment through a path file,
    # which does not process that environment's own path files: its editable install stays invisible.
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", source],
        tmp_path)
    where = run([python, "-c", "import stego_steps; print(stego_steps.__file__)"], tmp_path).stdout.strip()
    assert Path(where).is_relative_to(site), where

    # The workflow without the package, run from a third directory.
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    for part in ("Snakefile", "workflow", "config"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, workflow / part)
    elsewhere, results = tmp_path / "elsewhere", tmp_path / "run"
    elsewhere.mkdir()
    out = snakemake(results, "--cores", "2", snakefile=workflow / "Snakefile", python=python, cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(results / "results" / "demo" / "miou.csv")
    assert len(table) == 8 and table["miou"].between(0, 100).all()
    assert not any(elsewhere.iterdir())
