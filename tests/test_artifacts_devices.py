"""Plumbing: atomic outputs and the choice of a GPU on multi-GPU machines."""

import os

import pytest
import torch

from stego_steps import artifacts, devices
from stego_steps.errors import UserError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), artifacts.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    artifacts.write_text(target, "done")
    assert target.read_text() == "done"
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)


def test_cpu_when_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device("auto") == "cpu"
    with pytest.raises(UserError, match="no GPU"):
        devices.select_device("cuda")


def test_concurrent_jobs_take_different_gpus(monkeypatch, tmp_path):
    free = {0: 10, 1: 30, 2: 20}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 100))
    monkeypatch.setattr(devices, "_gpu_locks", [])
    picks = [devices.pick_gpu(tmp_path) for _ in range(4)]
    # Most free memory first, each GPU once; then all are held and the roomiest is shared.
    assert picks == ["cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    for handle in devices._gpu_locks:
        handle.close()


def test_single_visible_gpu_is_used_as_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.pick_gpu() == "cuda:0"


def test_progress_logs_count_rate_and_time_left_without_a_terminal(caplog, monkeypatch):
    import logging

    from stego_steps import cli

    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="stego_steps"):
        assert list(cli.progress(range(40), desc="work", every_fraction=0.25, every_s=3600)) == list(range(40))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("work:")]
    assert [line.split()[1] for line in lines] == ["10/40", "20/40", "30/40", "40/40"]
    assert all("it/s" in line and "left" in line for line in lines)
