"""Every command the docs quote still runs: each `snakemake …` line of a README.md or docs/*.md shell block as a
dry run in a fresh working directory, each `python -m …` line with `--help`. Install lines (pip, conda, git,
make) are not checked. The user's own files that a command names are made in the working directory: the
README's `# mine.yaml` block, a `my_photos` folder of one image, a small labelled tree at resources/camvid."""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, SNAKEFILE, jpg, png, rgb

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "shell", "sh", "console"}
CHECKED = re.compile(r"(snakemake|python -m|\.venv/bin/(snakemake|python -m))\b")


def doc_commands() -> list[tuple[str, int, str]]:
    """(file, line, command) of each checked command; `\\` continuations joined, a `$ ` prompt dropped."""
    found: list[tuple[str, int, str]] = []
    for path in DOCS:
        fence: str | None = None
        pending: tuple[int, str] | None = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if match := re.match(r"\s*```\s*(\w*)", line):
                fence = None if fence is not None else match.group(1)
                continue
            if fence not in SHELL_FENCES:
                continue
            text = line.strip().removeprefix("$ ")
            if pending:
                number, text = pending[0], f"{pending[1]} {text}"
                pending = None
            if text.endswith("\\"):
                pending = (number, text[:-1].strip())
                continue
            if CHECKED.match(text):
                found.append((str(path.relative_to(ROOT)), number, text))
    return found


def readme_file(name: str) -> str:
    """The README's YAML block whose first line is `# <name>`."""
    blocks = re.findall(r"```ya?ml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(f"# {name}\n")]
    return block


def labelled_tree(root: Path, train: int = 10, val: int = 2) -> Path:
    """imgs/{train,val}/*.jpg with labels/{train,val}/*.png: enough training images for the presets' knn_k."""
    for split, count in (("train", train), ("val", val)):
        for k in range(count):
            jpg(root / "imgs" / split / f"{split}{k}.jpg", rgb(16, 20, k))
            label = np.full((16, 20), 255, np.uint8)
            label[:, :10] = k % 3
            png(root / "labels" / split / f"{split}{k}.png", label)
    return root


def labelled_folder(root: Path, train: int = 12, val: int = 2) -> Path:
    """A `directory` dataset with more training images than the presets' knn_k (the DAG checks it)."""
    for split, n in (("train", train), ("val", val)):
        for k in range(n):
            jpg(root / "imgs" / split / f"{k}.jpg", rgb(32, 32, k))
            png(root / "labels" / split / f"{k}.png", np.full((32, 32), k % 2, np.uint8))
    return root


def user_files(workdir: Path) -> None:
    """What the docs' commands assume the reader has: their config, a folder of photos, the CamVid tree."""
    for name in ("config", "workflow"):  # `--configfile config/…`, `--workflow-profile workflow/profiles/…`
        (workdir / name).symlink_to(ROOT / name)
    mine = yaml.safe_load(readme_file("mine.yaml"))
    for ds in mine["datasets"].values():  # the reader's data: a small labelled folder
        ds["root"] = str(labelled_tree(workdir / "mine"))
    (workdir / "mine.yaml").write_text(yaml.safe_dump(mine))
    jpg(workdir / "my_photos" / "photo.jpg", rgb(32, 32, 0))
    labelled_tree(workdir / "resources" / "camvid")


@functools.cache
def workdir(root: str) -> Path:
    path = Path(root) / "doc_commands"
    path.mkdir()
    user_files(path)
    return path


@functools.cache
def run(command: str, cwd: str) -> subprocess.CompletedProcess:
    """The command as it is checked: `snakemake …` as a dry run of this checkout, `python -m M …` as `--help`."""
    words = shlex.split(command)
    if words[0].endswith("snakemake"):
        args = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", cwd, "-n", *words[1:]]
    else:
        module = words[words.index("-m") + 1]
        args = [sys.executable, "-m", module, "--help"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


COMMANDS = doc_commands()


def test_the_docs_quote_commands():
    assert any(c.startswith("snakemake") for _, _, c in COMMANDS)
    assert any(c.startswith("python -m") for _, _, c in COMMANDS)


@pytest.mark.parametrize(("doc", "line", "command"), COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_a_quoted_command_runs(doc, line, command, tmp_path_factory):
    cwd = workdir(str(tmp_path_factory.getbasetemp()))
    out = run(command, str(cwd))
    assert out.returncode == 0, f"{doc}:{line}: {command}\n{(out.stdout + out.stderr)[-3000:]}"
