"""The plan before extraction: samples per split, bytes per feature store, and the refusal on a full disk."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import snakemake

from stego_steps import disk_space
from stego_steps.artifacts import write_csv
from stego_steps.config import stage_settings
from stego_steps.errors import EXIT_USER_ERROR, cli
from stego_steps.index import index_frame
from stego_steps.stages import plan

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _index(path: Path, n: int, labelled: bool = True) -> Path:
    rows = [{"id": str(i), "image": f"img/{i}.jpg", "label": f"lab/{i}.png" if labelled else ""}
            for i in range(n)]
    write_csv(path, index_frame(rows))
    return path


def _settings(backbone: str = "dino_vitb8", train_res: int = 224, eval_res: int = 320) -> dict:
    return {"train": {"backbone": backbone, "res": train_res, "evaluation": False},
            "val": {"backbone": backbone, "res": eval_res, "evaluation": True}}


def _usage(free: int):
    return lambda path: shutil._ntuple_diskusage(10**15, 10**15 - free, free)


def test_bytes_per_store_follow_the_extract_layout():
    train = disk_space.SplitPlan("train", samples=10, res=224, stride=8, channels=768, evaluation=False, labelled=True)
    assert train.grid == 28
    assert train.parts == {"feats": 10 * 768 * 28 * 28 * 2, "pooled": 10 * 768 * 4, "label": 10 * 224 * 224 * 2}
    val = disk_space.SplitPlan("val", samples=3, res=320, stride=8, channels=768, evaluation=True, labelled=True)
    feats = 3 * 768 * 40 * 40 * 2
    assert val.parts == {"feats": feats, "pooled": 3 * 768 * 4, "label": 3 * 320 * 320 * 2,
                         "image": 3 * 320 * 320 * 3, "feats_flip": feats}
    assert val.bytes == sum(val.parts.values())
    unlabelled = disk_space.SplitPlan("val", samples=3, res=320, stride=8, channels=768, evaluation=True,
                                labelled=False)
    assert "label" not in unlabelled.parts and unlabelled.bytes == val.bytes - 3 * 320 * 320 * 2
    # The figure in docs/performance.md ("Sizes"): COCO-Stuff five-crop of the full list at ViT-B/8, ≈ 590 GB.
    coco = disk_space.SplitPlan("train", samples=488_510, res=224, stride=8, channels=768, evaluation=False,
                          labelled=True)
    assert coco.parts["feats"] == pytest.approx(590e9, rel=0.01)


def test_make_plan_reads_the_index_and_the_backbone_facts(tmp_path):
    indexes = {"train": _index(tmp_path / "train.csv", 12), "val": _index(tmp_path / "val.csv", 4, False)}
    plans = disk_space.make_plan(indexes, _settings("efficientnet_lite0"))
    assert [(p.split, p.samples, p.res, p.stride, p.channels, p.evaluation, p.labelled) for p in plans] == [
        ("train", 12, 224, 8, 152, False, True), ("val", 4, 320, 8, 152, True, False)]
    vit16 = disk_space.make_plan(indexes, _settings("dino_vits16_random"))
    assert vit16[0].grid == 14 and vit16[0].channels == 384
    assert vit16[0].parts["feats"] * 4 == disk_space.make_plan(indexes, _settings("dino_vits8"))[0].parts["feats"]
    with pytest.raises(ValueError, match="val: resolution 320 is not a multiple.*stride 14"):
        disk_space.make_plan(indexes, _settings("dinov2_vits14"))
    with pytest.raises(ValueError, match="no extract settings for split"):
        disk_space.make_plan(indexes, {"train": _settings()["train"]})


def test_settings_come_from_the_stage_settings(tmp_path):
    """The rule passes stage_settings(config, ds, 'extract', split): train_res for train, eval_res for val."""
    cfg = copy.deepcopy(CONFIG)
    cfg["datasets"]["mine"] = {"kind": "directory", "preset": "potsdam", "root": "x",
                               "overrides": {"train_res": 64, "eval_res": 96}}
    settings = {s: stage_settings(cfg, "mine", "extract", s) for s in ("train", "val")}
    indexes = {s: _index(tmp_path / f"{s}.csv", 5) for s in ("train", "val")}
    train, val = disk_space.make_plan(indexes, settings)
    assert (train.res, train.grid, train.channels, train.evaluation) == (64, 8, 384, False)
    assert (val.res, val.grid, val.evaluation) == (96, 12, True)


def test_free_space_of_the_nearest_existing_parent(tmp_path, monkeypatch):
    assert disk_space.existing_parent(tmp_path / "results" / "x" / "features") == tmp_path
    seen = []
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: seen.append(Path(p)) or _usage(123)(p))
    assert disk_space.free_bytes(tmp_path / "a" / "b") == (tmp_path, 123) and seen == [tmp_path]
    store = tmp_path / "stores"
    store.mkdir()
    (store / "train.h5").write_bytes(b"x" * 100)
    (store / "val.h5.partial").write_bytes(b"x" * 10)
    (store / "other.h5").write_bytes(b"x" * 1000)
    assert disk_space.reclaimable_bytes(store, ["train", "val"]) == 110
    # Sharded extraction: the shard files (and their partial files) count too.
    (store / "train").mkdir()
    (store / "train" / "0.h5").write_bytes(b"x" * 7)
    (store / "train" / "1.h5.partial").write_bytes(b"x" * 3)
    assert disk_space.reclaimable_bytes(store, ["train", "val"]) == 120
    assert disk_space.reclaimable_bytes(tmp_path / "missing", ["train"]) == 0


def _run(tmp_path: Path, *extra: str, settings: dict | None = None) -> tuple[Path, list[str]]:
    indexes = {"train": _index(tmp_path / "index" / "train.csv", 20), "val": _index(tmp_path / "index" / "val.csv", 5)}
    out = tmp_path / "plan" / "bb.txt"
    argv = ["--index", *(f"{s}={p}" for s, p in indexes.items()), "--settings", json.dumps(settings or _settings()),
            "--store-dir", str(tmp_path / "features" / "bb"), "--out", str(out), "--title", "plan: test", *extra]
    return out, argv


def test_cli_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(disk_space.shutil, "disk_usage", _usage(10**12))
    out, argv = _run(tmp_path)
    plan.main(argv)
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    lines = text.splitlines()
    assert lines[0] == "plan: test"
    train = next(line for line in lines if line.startswith("train"))
    val = next(line for line in lines if line.startswith("val"))
    total = next(line for line in lines if line.startswith("total"))
    expected = disk_space.make_plan({"train": tmp_path / "index" / "train.csv", "val": tmp_path / "index" / "val.csv"},
                              _settings())
    assert train.split()[:5] == ["train", "20", "224×224", "28×28", "768"]
    assert val.split()[:5] == ["val", "5", "320×320", "40×40", "768"]
    assert f"{expected[0].bytes:,}" in train and f"{expected[1].bytes:,}" in val
    assert f"{expected[0].bytes + expected[1].bytes:,}" in total and total.split()[1] == "25"
    assert f"free disk: {10**12:,} bytes (1.0 TB) at {tmp_path}" in text


def test_cli_refuses_when_the_disk_cannot_hold_the_stores(tmp_path, monkeypatch, capsys):
    out, argv = _run(tmp_path)
    total = sum(p.bytes for p in disk_space.make_plan(
        {"train": tmp_path / "index" / "train.csv", "val": tmp_path / "index" / "val.csv"}, _settings()))
    # Exactly total × 1.1 free is enough; a little less is refused.
    monkeypatch.setattr(disk_space.shutil, "disk_usage", _usage(int(total * 1.1)))
    plan.main(argv)
    assert out.exists()
    out.unlink()
    monkeypatch.setattr(disk_space.shutil, "disk_usage", _usage(int(total * 1.1) - 1000))
    with pytest.raises(SystemExit) as exc:
        cli(lambda: plan.main(argv))
    assert exc.value.code == EXIT_USER_ERROR
    assert not out.exists()
    captured = capsys.readouterr()
    message = captured.out
    assert "PLAN REFUSED: not enough disk for the feature stores" in message
    assert f"({int(total * 1.1):,} bytes" in message and f"({int(total * 1.1) - 1000:,} bytes) are free" in message
    for choice in ("Coco164kFull_Stuff_Coarse_7", "five_crop: false", "a /16 backbone", "--directory"):
        assert choice in message
    assert "\nERROR: not enough disk" in captured.err  # the rule's log, shown by onerror
    # Stores already in the folder are replaced, so their bytes count as free.
    store = tmp_path / "features" / "bb"
    store.mkdir(parents=True)
    (store / "train.h5").write_bytes(b"x" * 2000)
    plan.main(argv)
    assert out.exists()


def test_refusal_choices_fit_the_backbone():
    p16 = [disk_space.SplitPlan("train", 10**6, 224, 16, 768, False, True)]
    with pytest.raises(disk_space.InsufficientSpace) as exc:
        disk_space.check_space(p16, 10, store_dir="results/x/features/bb")
    assert "/16 backbone" not in str(exc.value) and "five_crop: false" in str(exc.value)
    p8 = [disk_space.SplitPlan("train", 10**6, 224, 8, 768, False, True)]
    with pytest.raises(disk_space.InsufficientSpace, match=r"/16 backbone.*0\.25× the feature bytes"):
        disk_space.check_space(p8, 10, store_dir="results/x/features/bb")


def test_plan_runs_before_extraction_in_the_workflow(tmp_path):
    out = snakemake(tmp_path, "-n", "--quiet", "rules", "--", "results/demo/miou.csv", timeout=300)
    assert out.returncode == 0, out.stderr
    assert {"prepare", "plan", "extract"} <= set((out.stdout + out.stderr).split())
