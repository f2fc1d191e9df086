"""environment.yml (conda) and pyproject.toml (pip) name the same dependencies."""

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
# conda package → the pip package it stands for
CONDA_TO_PIP = {"pytorch-gpu": "torch", "faiss-gpu": "faiss-cpu"}


def names(specs):
    return {re.split(r"[<>=!\s\[]", s.strip(), maxsplit=1)[0].lower() for s in specs}


def conda_names(path):
    env = yaml.safe_load(path.read_text())["dependencies"]
    conda = {CONDA_TO_PIP.get(n, n) for n in names(d for d in env if isinstance(d, str))} - {"python", "pip"}
    return conda | names(d for d in next(d["pip"] for d in env if isinstance(d, dict)) if not d.startswith("-e"))


def test_conda_and_pip_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = names(project["dependencies"]) | names(project["optional-dependencies"]["dev"])
    assert conda_names(ROOT / "environment.yml") == pip
    # The rules' environment: what the jobs import, no development or cluster tools.
    assert conda_names(ROOT / "workflow" / "envs" / "stego.yaml") == names(project["dependencies"])
