"""The package installs like one: a non-editable `pip install` into a fresh environment, then the workflow
runs from another directory with nothing of the repository on the import path; and `--sdm conda` makes the
rules' environment as Snakemake and conda would (conda itself replaced by a stand-in that follows its steps)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, snakemake

IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def bare_venv(venv: Path, python: str | Path = sys.executable) -> Path:
    """A fresh environment without the project: the dependencies (torch, ...), pip and setuptools come from this
    test's environment through a path file, which does not process that environment's own path files, so its
    editable install of stego_steps stays invisible. Returns the environment's site-packages."""
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", where], check=True, capture_output=True, text=True)
    site = Path(out.stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return site


@pytest.mark.slow
def test_installed_package_runs_the_demo_from_another_directory(tmp_path):
    # Only what a source distribution holds: pyproject.toml, the licence and the package, copied away from the
    # repository.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "stego_steps", source / "stego_steps", ignore=IGNORE)
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "LICENSE", source)
    venv = tmp_path / "venv"
    site = bare_venv(venv)
    python = venv / "bin" / "python"
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


# ---------------------------------------------------------------------------------------------------------
# --sdm conda

ENV_FILE = ROOT / "workflow" / "envs" / "stego.yaml"

# A stand-in for conda that does what Snakemake asks of it the way conda does it: `env create --file F
# --prefix P` makes P (here a venv whose packages come from this test's environment) and then installs the
# file's pip section from a requirements file written beside F, with pip started in F's folder (conda's pip
# installer), so that relative paths resolve against the file Snakemake hands over: its copy in the conda prefix.
FAKE_CONDA = '''\
#!{python}
import json, subprocess, sys
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

sys.path.insert(0, {tests!r})
from test_install import bare_venv

args = sys.argv[1:]
if args == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": {prefix!r}, "platform": "linux-64"}}))
elif args == ["--version"]:
    print("conda 25.1.1")
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
elif args[0] == "clean":
    pass  # no package cache to clean
elif args[:2] == ["env", "create"]:
    file, prefix = Path(args[args.index("--file") + 1]), Path(args[args.index("--prefix") + 1])
    deps = yaml.safe_load(file.read_text())["dependencies"]
    (python,) = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert "{version}" in SpecifierSet(python[len("python"):]), python
    bare_venv(prefix)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    (file.parent / "condaenv.requirements.txt").write_text("\\n".join(pip) + "\\n")
    subprocess.run([str(prefix / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--no-build-isolation", "-r", "condaenv.requirements.txt"], cwd=file.parent, check=True)
else:
    sys.exit(f"fake conda: {{args}} is not implemented")
'''


def fake_conda(folder: Path) -> Path:
    """A conda stand-in in folder/bin (its `conda` and the `activate` script that Snakemake sources)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    version = ".".join(map(str, sys.version_info[:3]))
    conda = bin_dir / "conda"
    conda.write_text(FAKE_CONDA.format(python=sys.executable, tests=str(ROOT / "tests"), prefix=str(folder),
                                       version=version))
    conda.chmod(0o755)
    (bin_dir / "activate").write_text('export PATH="$1/bin:$PATH"\n')
    return bin_dir


def test_rules_env_holds_no_local_path():
    # Snakemake hands conda a copy of the file in its conda prefix: a path in it would be read from there.
    deps = yaml.safe_load(ENV_FILE.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert [p for p in pip if p.startswith(("-", ".", "/", "file:"))] == []
    assert ENV_FILE.with_suffix(".post-deploy.sh").is_file()


@pytest.mark.slow
def test_sdm_conda_jobs_run_this_checkout_from_another_directory(tmp_path):
    bin_dir = fake_conda(tmp_path / "conda")
    elsewhere, results = tmp_path / "elsewhere", tmp_path / "run"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "STEGO_STEPS_SOURCE")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "-s", ROOT / "Snakefile", "-d", results, "--configfile",
           ROOT / "tests" / "data" / "tiny_config.yaml", "--sdm", "conda", "--cores", "1", "results/demo/data"]
    out = subprocess.run([str(c) for c in cmd], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (results / "results" / "demo" / "data").is_dir()
    # The job ran in the new environment, whose only way to the package is the post-deploy start-up file.
    (made,) = [p for p in (results / ".snakemake" / "conda").iterdir() if p.is_dir()]
    (startup,) = made.glob("lib/python*/site-packages/stego_steps_source.pth")
    probe = "import stego_steps; print(stego_steps.__file__)"
    bare = {k: v for k, v in env.items() if k != "STEGO_STEPS_SOURCE"}
    alone = subprocess.run([str(made / "bin" / "python"), "-c", probe], cwd=elsewhere, env=bare,
                           capture_output=True, text=True)
    assert alone.returncode != 0 and "No module named 'stego_steps'" in alone.stderr
    found = subprocess.run([str(made / "bin" / "python"), "-c", probe], cwd=elsewhere, capture_output=True,
                           text=True, env={**bare, "STEGO_STEPS_SOURCE": str(ROOT)}, check=True)
    assert Path(found.stdout.strip()) == ROOT / "stego_steps" / "__init__.py"
    assert not any(elsewhere.iterdir())
