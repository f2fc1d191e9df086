"""User mistakes that the workflow names at start-up, and damaged artifacts that a stage names: the disk for the
whole request, targets outside the config, a second workflow on one folder, `device: cuda` without a GPU,
torch_threads above the cores, and truncated or garbage artifacts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from helpers import snakemake, write_store

from stego_steps import artifacts, disk_space, runlock, store, targets, validate
from stego_steps.errors import UserError
from stego_steps.head import SegmentationHead, load_head, save_head


def _store(split: str, samples: int, existing: int = 0) -> disk_space.RequestedStore:
    split_plan = disk_space.SplitPlan(split, samples, 64, 8, 152, split == "val", True)
    return disk_space.RequestedStore(f"results/x/features/{split}_key", split_plan, existing)


def test_the_request_is_refused_when_its_stores_sum_past_the_free_space():
    stores = [_store("train", 100), _store("val", 30)]
    each = [s.plan.bytes for s in stores]
    free = int(max(each) * disk_space.MARGIN) + 1
    for s in stores:  # each store alone fits
        disk_space.check_request([s], free, measured="/disk")
    with pytest.raises(disk_space.InsufficientSpace) as exc:
        disk_space.check_request(stores, free, measured="/disk", unknown=["results/y/features/k/train.h5"])
    message = str(exc.value)
    assert message.startswith("not enough disk for the feature stores of this request: together they need")
    assert f"({int(sum(each) * disk_space.MARGIN):,} bytes with a 10% margin) more at /disk, but only" in message
    assert all(f"  {s.path}: {disk_space.human(s.plan.bytes)}" in message for s in stores)
    assert "not counted: results/y/features/k/train.h5" in message
    for fix in ("free space on that disk", "fewer targets or variants", "store_dtype: int8", "--directory"):
        assert fix in message
    # What is already on disk (an older store, finished shards) is subtracted.
    stores[0] = _store("train", 100, existing=each[0])
    assert stores[0].needed == 0 and disk_space.request_needed(stores) == int(each[1] * disk_space.MARGIN)
    disk_space.check_request(stores, free, measured="/disk")


DATASETS = {"demo": targets.Dataset(("default", "ablate_mlp"), (0, 1), ("fk",), ("bk",)),
            "coco": targets.Dataset(("default", "released"), (0,), ("ck",), ("cb",))}


@pytest.mark.parametrize("target,problem", [
    ("results/dem/miou.csv", "no dataset 'dem' is configured (datasets: demo, coco)"),
    ("results/demo/runs/released/seed0/miou.csv", "dataset 'demo' has no variant 'released' (its variants: default, "
                                                  "ablate_mlp)"),
    ("results/demo/runs/default/seed7/miou.csv", "dataset 'demo' has no run 'seed7' (its seeds: seed0, seed1)"),
    ("results/demo/features/ck/train.h5", "dataset 'demo' has no feature key 'ck' (its keys: fk)"),
    ("results/coco/baselines/cb/seed3/kmeans.npy", "dataset 'coco' has no run 'seed3' (its seeds: seed0)"),
])
def test_a_target_outside_the_config_is_named_with_the_valid_ones(target, problem):
    message = targets.check_targets([target, "results/demo/miou.csv"], DATASETS, ["results/tables/main.csv"])
    assert message.startswith(f"{target}: {problem}")
    assert message.count("\n  results/") == 5 and "\n  results/tables/main.csv" in message
    assert ("\n  results/demo/runs/<variant>/seed<seed>/miou.csv, variant one of default, ablate_mlp; seed one of 0, 1"
            in message)


def test_good_targets_pass():
    good = ["results/demo/miou.csv", "results/demo/runs/ablate_mlp/seed1/miou.csv", "results/coco/features/ck/knn7.npy",
            "results/tables/main.csv", "tables", "resources/x"]
    assert targets.check_targets(good, DATASETS) is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_the_run_lock_refuses_a_live_holder_and_clears_a_stale_one(tmp_path):
    lock = tmp_path / ".snakemake" / "stego_steps.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runlock.acquire(lock, pid=holder.pid, command="snakemake --cores 2 a")
        with pytest.raises(UserError, match=rf"this run is refused: another workflow is running on this folder "
                                            rf"\(Snakemake process {holder.pid}: snakemake --cores 2 a; lock {lock}\)"):
            runlock.acquire(lock)
        with pytest.raises(UserError, match=rf"--unlock is refused: .*if that process is gone, delete {lock}"):
            runlock.check_unlock(lock)
        runlock.release(lock)  # not this process's lock: kept
        assert runlock.holder(lock)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    runlock.check_unlock(lock)  # its process died: stale, removed
    assert not lock.exists()
    lock.write_text(f'{{"pid": {_dead_pid()}, "host": "{socket.gethostname()}"}}')
    runlock.acquire(lock)
    assert runlock.holder(lock)["pid"] == os.getpid()
    runlock.release(lock)
    assert not lock.exists()
    # a live process that reuses a dead holder's id (ids wrap around) is not the holder: its start time differs
    if runlock.started(os.getpid()) is not None:
        lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": "1"}))
        runlock.check_unlock(lock)
        assert not lock.exists()


def test_knn_k_is_checked_against_the_written_index(tmp_path):
    index = tmp_path / "train.csv"
    assert validate.index_rows(index) is None
    index.write_text("id,image,label\n" + "".join(f"{i},a{i}.png,\n" for i in range(7)))
    assert validate.index_rows(index) == 7
    message = validate.knn_problem("coco", "cocostuff", {}, 7, samples=validate.index_rows(index))
    assert message.startswith("dataset 'coco': its train split has 7 samples but knn_k is 7")
    assert validate.knn_problem("coco", "cocostuff", {}, 7) is None  # unknown before prepare
    assert validate.split_samples("demo", {"generator": {"n_train": 4, "n_val": 3}, "five_crop": True}, "val") == 3


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _fix(path) -> str:
    return f"re-make it: delete {path} and rerun"


def _shard(path, start: int, stop: int):
    write_store(path, n=stop - start)
    with h5py.File(path, "a") as f:
        f["ids"] = np.array([str(i) for i in range(start, stop)], dtype="S")
        f.attrs.update(start=start, stop=stop)
    return path


def test_damaged_artifacts_are_named_with_their_fix(tmp_path):
    head = tmp_path / "head.pt"
    save_head(head, SegmentationHead(16, 8), {})
    _truncate(head)
    with pytest.raises(UserError, match=rf"^head {head} is damaged or truncated \(.*\); {_fix(head)}"):
        load_head(head)
    knn = tmp_path / "knn7.npy"
    knn.write_bytes(os.urandom(400))
    with pytest.raises(UserError, match=rf"^KNN table {knn} is damaged or truncated .*; {_fix(knn)}"):
        artifacts.read_npy(knn, "KNN table")
    codes = tmp_path / "codes.h5"
    with h5py.File(codes, "w") as f:
        f["codes"] = np.zeros((4, 8, 6, 6), np.float16)
    _truncate(codes)
    with pytest.raises(UserError, match=rf"^codes {codes} is damaged or truncated .*; {_fix(codes)}"):
        artifacts.open_h5(codes, "codes")
    # A truncated shard behind a gathered store: named when gathering, and when a stage opens the store.
    (tmp_path / "train").mkdir()
    shards = [_shard(tmp_path / "train" / f"{i}-of-2.h5", 8 * i, 8 * i + 8) for i in range(2)]
    store.gather(shards, tmp_path / "train.h5")
    with store.FeatureStore(tmp_path / "train.h5") as s:
        assert s.n == 16
    _truncate(shards[1])
    with pytest.raises(UserError, match=rf"^feature shard {shards[1]} is damaged or truncated .*; {_fix(shards[1])}"):
        store.gather(shards, tmp_path / "again.h5")
    with pytest.raises(UserError, match=rf"^feature shard {shards[1]} is damaged"):
        store.FeatureStore(tmp_path / "train.h5")


# ---------------------------------------------------------------------------------------------------------
# through snakemake: one dry run for the targets, a few start-ups that stop before their first job


def test_wrong_targets_stop_the_workflow_with_the_valid_ones(tmp_path):
    out = snakemake(tmp_path, "-n", "results/dem/miou.csv", "results/demo/runs/released/seed0/miou.csv", timeout=300)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in said and "KeyError" not in said
    assert "results/dem/miou.csv: no dataset 'dem' is configured (datasets: demo" in said
    assert "results/demo/runs/released/seed0/miou.csv: dataset 'demo' has no variant 'released'" in said
    assert "valid targets:\n  all (or no target)" in said and "\n  results/demo/miou.csv\n" in said


def test_start_up_refusals_before_any_job(tmp_path):
    lock = tmp_path / ".snakemake" / "stego_steps.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        runlock.acquire(lock, pid=holder.pid, command="snakemake results/demo/miou.csv")
        for args in (["--unlock"], ["--cores", "1", "results/demo/index/classes.json"]):
            out = snakemake(tmp_path, *args, timeout=300)
            said = out.stdout + out.stderr
            assert out.returncode != 0 and "Traceback" not in said, said
            assert f"another workflow is running on this folder (Snakemake process {holder.pid}" in said
    finally:
        holder.kill()
        holder.wait()
    # The holder died: its lock is stale. Each feature store of the request fits in 1 MB, both together do not.
    out = snakemake(tmp_path, "--cores", "1", "--config", "disk_free_bytes=1000000", "--", "results/demo/miou.csv",
                    timeout=300)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in said
    assert "not enough disk for the feature stores of this request" in said and "(1,000,000 bytes) are free" in said
    assert said.count("/train.h5: ") == 1 and said.count("/val.h5: ") == 1
    assert not (tmp_path / "results").exists() and not lock.exists()
    out = snakemake(tmp_path, "--cores", "1", "--config", "torch_threads=1000", "--", "results/demo/miou.csv",
                    timeout=300)
    assert "torch_threads is 1000 but this machine has" in out.stderr and not (tmp_path / "results").exists()
    if not torch.cuda.is_available():
        out = snakemake(tmp_path, "--cores", "1", "--config", "device=cuda", "--", "results/demo/miou.csv",
                        timeout=300)
        assert "`device: cuda` but torch sees no GPU on this machine (rules backbone_kmeans" in out.stderr
        assert not (tmp_path / "results").exists()
        out = snakemake(tmp_path, "-n", "--config", "device=cuda", "--", "results/demo/miou.csv", timeout=300)
        assert out.returncode == 0, out.stderr  # a dry run runs nothing here


def test_the_request_is_planned_from_the_extract_jobs_before_prepare():
    from types import SimpleNamespace

    from workflow_config import workflow_config

    from stego_steps import config as C
    from stego_steps import start_checks
    from stego_steps.experiment import Experiment

    exp = Experiment(workflow_config())
    fkey = exp.feature_key["demo"]["default"]
    settings = json.dumps(C.stage_settings(exp.config, "demo", "extract", "train"))
    job = SimpleNamespace(rule=SimpleNamespace(name="extract", resources={"device": "cpu"}),
                          wildcards=SimpleNamespace(ds="demo", fkey=fkey, split="train"),
                          input=SimpleNamespace(index="absent/train.csv"), params=SimpleNamespace(settings=settings),
                          resources={"device": "cpu"})
    stores, unknown = start_checks.requested_stores(exp, [("demo", fkey, "train", "absent/train.csv", settings)] * 2)
    assert unknown == [] and [s.path for s in stores] == [f"results/demo/features/{fkey}/train.h5"]
    assert stores[0].plan.samples == 24  # the demo's generator says it before `prepare`
    start_checks.check_jobs(exp, [job], local=True, torch_threads=1)
    with pytest.raises(disk_space.InsufficientSpace):
        start_checks.check_jobs(exp, [job], local=False, torch_threads=1, disk_free_bytes=0)
    with pytest.raises(UserError, match="torch_threads is 100000 but this machine has"):
        start_checks.check_local_machine(["train"], [], 100000)
