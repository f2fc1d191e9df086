"""Bad input through `snakemake` itself: the project's message reaches the terminal (no Python traceback),
bad configs stop before any job, and a changed dataset folder re-runs `prepare` in the same invocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from test_validate import label, make_directory, rgb

from stego_steps import config as C

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
run: [mine]
device: cpu
datasets:
  mine:
    kind: directory
    preset: demo
    root: data/mine
    class_names: [sky, grass, road]
"""
INDEX = "results/mine/index/classes.json"


def snakemake(workdir: Path, *args: str) -> tuple[int, str]:
    """The workflow on `workdir` with the test's own config files (in `args`): exit code and all output."""
    out = helpers.snakemake(workdir, *args, configfile=None, timeout=600)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture
def workdir(tmp_path):
    make_directory(tmp_path / "data" / "mine", n_train=10)
    (tmp_path / "mine.yaml").write_text(CONFIG)
    return tmp_path


def with_config(workdir: Path, extra: str) -> list[str]:
    (workdir / "extra.yaml").write_text(extra)
    return ["--configfile", str(workdir / "mine.yaml"), str(workdir / "extra.yaml")]


@pytest.mark.slow
def test_bad_files_reach_the_terminal_and_fixing_them_reruns_in_one_go(workdir):
    from PIL import Image

    images = workdir / "data" / "mine" / "imgs" / "train"
    (images / "train0.png").write_bytes(b"")
    Image.fromarray(rgb()).save(images / "train1.png", exif=_rotated())
    rc, said = snakemake(workdir, "--configfile", str(workdir / "mine.yaml"), "--cores", "1", INDEX)
    assert rc != 0 and "Traceback" not in said
    assert ("logs/mine/index/prepare.log:\nERROR: 2 problems with the files of the 'directory' dataset at "
            "data/mine") in said
    assert "    data/mine/imgs/train/train0.png is an empty file (0 bytes)" in said
    assert "    data/mine/labels/train/train1.png: the label map is 32x24 (width x height) but its image" in said
    # Following the advice (remove the bad samples) and rerunning works at once.
    for sub in ("imgs", "labels"):
        for name in ("train0.png", "train1.png"):
            (workdir / "data" / "mine" / sub / "train" / name).unlink()
    rc, said = snakemake(workdir, "--configfile", str(workdir / "mine.yaml"), "--cores", "1", INDEX)
    assert rc == 0, said
    rc, said = snakemake(workdir, "--configfile", str(workdir / "mine.yaml"), "-n", INDEX)
    assert rc == 0 and "Nothing to be done" in said
    # Adding an image (a name with a space and a non-ASCII letter) re-runs prepare, and the index has it.
    Image.fromarray(rgb()).save(images / "new é.png")
    Image.fromarray(label()).save(workdir / "data" / "mine" / "labels" / "train" / "new é.png")
    rc, said = snakemake(workdir, "--configfile", str(workdir / "mine.yaml"), "-n", INDEX)
    # (its record names the changed files: prepare is forced, beside Snakemake's own params check)
    assert rc == 0 and "rule prepare" in said, said
    assert "results/mine/index/train.csv was made by other code or settings (settings of data)" in said, said
    rc, said = snakemake(workdir, "--configfile", str(workdir / "mine.yaml"), "--cores", "1", INDEX)
    assert rc == 0, said
    assert "new é," in (workdir / "results" / "mine" / "index" / "train.csv").read_text(encoding="utf-8")


def _rotated():
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


@pytest.mark.parametrize("extra,message", [
    ("datasets:\n  mine:\n    overrides: {knn_k: 30}\n",
     "dataset 'mine': its train split has 10 samples but knn_k is 30; the nearest-neighbour table needs at least "
     "knn_k + 1 = 31 training samples"),
    ("datasets:\n  mine:\n    overrides: {backbone: vit_huge}\n",
     "dataset 'mine' (preset 'demo' and its overrides), key backbone: unknown backbone 'vit_huge'; valid names:"),
    ("datasets:\n  mine:\n    overrides: {train_res: 60}\n",
     "dataset 'mine': train_res 60 is not a multiple of backbone efficientnet_lite0's patch size 8; set "
     "`datasets.mine.overrides: {train_res: 56}`"),
    ("datasets:\n  mine:\n    preset: nope\n",
     "datasets.mine.preset: unknown preset 'nope'; known presets: cityscapes, cocostuff, demo, demo_hard, "
     "directory, potsdam"),
    ("datasets:\n  mine:\n    overrides: {train: {steps: many}}\n",
     "datasets.mine.overrides.train.steps: 'many' is not of type 'integer'"),
    ("datasets:\n  other:\n    kind: directory\n    preset: demo\n    root: data/mine\n",
     "datasets.other: 'class_names' is a required property: a 'directory' dataset needs class_names"),
    ("datasets:\n  mine: [unclosed\n", "Config file is not valid JSON or YAML"),
])
def test_bad_configs_stop_before_any_job_without_a_traceback(workdir, extra, message):
    rc, said = snakemake(workdir, *with_config(workdir, extra), "-n")
    assert rc != 0 and message in said and "Traceback" not in said
    assert not (workdir / "results").exists()


def test_the_config_checker_names_the_yaml_line(workdir):
    (workdir / "bad.yaml").write_text("run: [mine]\ndevice:\tcpu\n")
    out = subprocess.run([sys.executable, "-m", "stego_steps.config", str(workdir / "bad.yaml")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"ERROR: {workdir / 'bad.yaml'}, line 2, column 8: YAML syntax error: found "
                                 "character '\\t' that cannot start any token")
    with pytest.raises(C.ConfigError, match="segment_shards: 'many' is not of type 'integer'"):
        C.check_files([workdir / "mine.yaml", _write(workdir / "extra.yaml", "segment_shards: many\n")])
    assert C.check_files([workdir / "mine.yaml"])["datasets"]["mine"]["class_names"] == ["sky", "grass", "road"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
