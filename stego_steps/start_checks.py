"""The checks before the first job of a real run that need the DAG: the disk for every feature store the request
creates, a GPU for `device: cuda`, and the cores for torch_threads. Given plain job values, or Snakemake's jobs
(read for their rule name, wildcards, input, params and resources only: no Snakemake import)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from stego_steps import disk_space
from stego_steps import validate as stego_validate
from stego_steps.config import dataset_settings
from stego_steps.errors import UserError
from stego_steps.experiment import Experiment
from stego_steps.layout import features_dir


def requested_stores(exp: Experiment, extract_jobs: Iterable[tuple[str, str, str, str, str]]
                     ) -> tuple[list[disk_space.RequestedStore], list[str]]:
    """The feature stores that the extract jobs (ds, fkey, split, index path, settings JSON) of this invocation
    write, and the stores whose sample count is not known before `prepare`."""
    stores, unknown, seen = [], [], set()
    for ds, fkey, split, index, settings in extract_jobs:
        if (ds, fkey, split) in seen:
            continue
        seen.add((ds, fkey, split))
        store_dir = features_dir(ds, fkey)
        variant = exp.features[(ds, fkey)]
        if os.path.exists(index):
            samples, has_labels = disk_space.index_summary(index)
        else:
            kind = exp.config["datasets"][ds]["kind"]
            samples = stego_validate.split_samples(kind, dataset_settings(exp.config, ds, variant), split)
            has_labels = exp.labelled(ds)
        if samples is None:
            unknown.append(f"{store_dir}/{split}.h5")
            continue
        split_plan = disk_space.split_plan(split, samples, has_labels, json.loads(settings))
        stores.append(disk_space.RequestedStore(
            store_dir, split_plan, disk_space.reclaimable_bytes(store_dir, [split]),
            five_crop=split == "train" and exp.resolved[ds][variant]["five_crop"],
        ))
    return stores, unknown


def check_request_disk(stores: list[disk_space.RequestedStore], unknown: list[str],
                       disk_free_bytes: int | None = None) -> None:
    """Refuse a request whose new feature stores do not fit together on their disk (`disk_free_bytes`, the
    config's, replaces the measured free space)."""
    by_disk: dict[int, tuple] = {}
    for store in stores:
        measured, free = disk_space.free_bytes(store.store_dir)
        by_disk.setdefault(os.stat(measured).st_dev, (measured, free, []))[2].append(store)
    for measured, free, group in by_disk.values():
        if disk_free_bytes is not None:
            free = int(disk_free_bytes)
        disk_space.check_request(group, free, measured=measured, unknown=unknown)


def check_local_machine(model_rules: Iterable[str], cuda_rules: Iterable[str], torch_threads: int) -> None:
    """Jobs that run here: a GPU where they ask for cuda (`cuda_rules`), and no more torch threads than this
    machine's cores where any model job (`model_rules`) runs."""
    cuda = sorted(set(cuda_rules))
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"`device: cuda` but torch sees no GPU on this machine (rules {', '.join(cuda)} would "
                "fail); set `device: auto` (GPU when there is one) or `device: cpu`, or run where "
                "there is a GPU (e.g. `--workflow-profile workflow/profiles/slurm`)"
            )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if list(model_rules) and torch_threads > (cores or 1):
        raise UserError(
            f"torch_threads is {torch_threads} but this machine has {cores} cores: every model job "
            f"would compute that much slower; set `torch_threads: {cores}` or less (results with "
            "another thread count round differently, so changing it re-runs the model stages)"
        )


def check_jobs(exp: Experiment, jobs: Iterable[Any], *, local: bool, torch_threads: int,
               disk_free_bytes: int | None = None) -> None:
    """All of the above for the jobs about to run (the machine only when they run here, `local`)."""
    jobs = list(jobs)
    extract = [(j.wildcards.ds, j.wildcards.fkey, j.wildcards.split, j.input.index, j.params.settings)
               for j in jobs if j.rule.name == "extract"]
    check_request_disk(*requested_stores(exp, extract), disk_free_bytes)
    if local:
        models = [j for j in jobs if "device" in j.rule.resources]
        cuda = [j.rule.name for j in models if str(j.resources.get("device", "")).startswith("cuda")]
        check_local_machine([j.rule.name for j in models], cuda, torch_threads)
