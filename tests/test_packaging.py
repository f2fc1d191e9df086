"""environment.yml (conda) and pyproject.toml (pip) name the same dependencies; the Python floor and the licence
are stated once and the same everywhere."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

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


def floor(spec: str) -> Version:
    (bound,) = [s for s in SpecifierSet(spec) if s.operator == ">="]
    return Version(bound.version)


def test_python_floor_is_the_dependencies_floor_everywhere():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    stated = floor(pyproject["project"]["requires-python"])
    assert stated == Version("3.11")
    # snakemake 9 (the dependency with a version bound) refuses Python 3.10.
    assert floor(importlib.metadata.metadata("snakemake")["Requires-Python"]) <= stated
    assert not SpecifierSet(importlib.metadata.metadata("snakemake")["Requires-Python"]).contains("3.10")
    assert pyproject["tool"]["ruff"]["target-version"] == "py311"
    for env in (ROOT / "environment.yml", *sorted((ROOT / "workflow" / "envs").glob("*.yaml"))):
        (python,) = [d for d in yaml.safe_load(env.read_text())["dependencies"]
                     if isinstance(d, str) and re.match(r"python\b", d)]
        assert floor(python[len("python"):]) == stated, env
    for doc in ("README.md", "Makefile"):
        text = (ROOT / doc).read_text()
        assert set(re.findall(r"Python (?:≥|>=) ?(3\.\d+)", text)) == {"3.11"}, doc
    stale = [p for p in ("README.md", "Makefile", "CITATION.cff", "environment.yml", "pyproject.toml",
                         *map(str, (ROOT / "workflow" / "envs").iterdir()), *map(str, (ROOT / "docs").glob("*.md")))
             if re.search(r"3\.10\b", (ROOT / p).read_text())]
    assert stale == []


def test_license_is_an_spdx_expression_that_the_build_accepts(tmp_path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().splitlines()[0] == "MIT License"
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["license"] == "MIT"
    # setuptools reads `license` as an SPDX expression from version 77 on.
    (setuptools,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    assert floor(setuptools[len("setuptools"):]) >= Version("77")
    # The metadata a build writes: the expression, the floor, and the licence file.
    shutil.copytree(ROOT / "stego_steps", tmp_path / "stego_steps", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path)
    (tmp_path / "meta").mkdir()
    build = "from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel('meta'))"
    out = subprocess.run([sys.executable, "-c", build], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    dist = tmp_path / "meta" / out.stdout.strip().splitlines()[-1]
    metadata = (dist / "METADATA").read_text()
    assert "License-Expression: MIT\n" in metadata and "Requires-Python: >=3.11\n" in metadata
    assert "License-File: LICENSE\n" in metadata and (dist / "licenses" / "LICENSE").is_file()


def test_the_citation_names_the_package_version():
    """The version lives in stego_steps/__init__.py (pyproject reads it); CITATION.cff cannot, so it is checked."""
    import stego_steps

    assert "version" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dynamic"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(citation["version"]) == stego_steps.__version__
