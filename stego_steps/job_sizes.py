"""What each job asks for, as Snakemake's `threads:` and `resources:` callables: the table in
stego_steps/resources.py applied to a job's own threads (after --set-threads), inputs and retry attempt. Memory
and time grow with the feature stores the job reads, measured here (guesses before they exist: dry runs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

from stego_steps import resources
from stego_steps.artifacts import SHARD_NAME
from stego_steps.experiment import wildcard_values
from stego_steps.layout import shard


def store_mb(features: str | None) -> float:
    """Size of a feature store in MB; a gathered store is virtual, so count its shard files (those of one shard
    count: an earlier `extract_shards`' files may still stand beside them until the next extraction)."""
    if not features:
        return 0.0
    shard_dir = Path(features).with_suffix("")
    if not shard_dir.is_dir():
        return Path(features).stat().st_size / 2**20 if Path(features).exists() else 0.0
    by_count: dict[str, int] = {}
    for f in shard_dir.glob("*.h5"):
        count = m["n"] if (m := SHARD_NAME.fullmatch(f.name)) else ""
        by_count[count] = by_count.get(count, 0) + f.stat().st_size
    return max(by_count.values(), default=0) / 2**20


def pooled_mb(features: str | None) -> float:
    """MB of a store's pooled descriptors as float32; 0 before the store exists (dry runs)."""
    if not features or not os.path.exists(features):
        return 0.0
    with h5py.File(features, "r") as f:
        return (f["pooled"].size * 4 / 2**20) if "pooled" in f else 0.0


def store_images(features: str) -> int:
    """Samples of a store; before it exists (dry runs), a guess of 5,000."""
    if not os.path.exists(features):
        return 5_000
    with h5py.File(features, "r") as f:
        return len(f["ids"])


def index_samples(index_csv: str) -> int:
    """Rows of an index; before `prepare` has written it (dry runs), a guess of 10,000."""
    if not os.path.exists(index_csv):
        return 10_000
    with open(index_csv) as f:
        return max(sum(1 for _ in f) - 1, 0)


class JobResources:
    """`torch_threads`: the config's compute threads; `on_gpu`: whether the device rules run on a GPU;
    `budget_mb`: the memory beyond which stores are streamed rather than held."""

    def __init__(self, torch_threads: int, on_gpu: bool, budget_mb: float) -> None:
        self.torch_threads, self.on_gpu, self.budget_mb = torch_threads, on_gpu, budget_mb

    def threads(self, name: str) -> int:
        return resources.threads(name, self.torch_threads)

    def gpu(self, name: str) -> int:
        return resources.gpu(name, self.on_gpu)

    def mem_mb(self, name: str) -> Callable[..., int]:
        spec = resources.RULES[name]

        def mem_mb(wildcards: Any, input: Any, threads: int, attempt: int) -> int:
            features = input.features if "features" in input.keys() else (input[0] if len(input) else None)
            return resources.mem_mb(
                name,
                job_threads=threads,
                torch_threads=self.torch_threads,
                store_mb=store_mb(features) if spec.holds_store else 0.0,
                pooled_mb=pooled_mb(features) if spec.holds_pooled else 0.0,
                budget_mb=self.budget_mb,
                attempt=attempt,
            )

        return mem_mb

    def runtime(self, name: str) -> Callable[..., int]:
        if name == "extract":

            def extract_runtime(wildcards: Any, input: Any, attempt: int) -> int:
                w = wildcard_values(wildcards)
                passes = 1 if w["split"] == "train" else 2  # evaluation images are extracted with their flips
                shards = shard(w["scatteritem"])[1]
                return resources.extract_runtime(index_samples(input.index) / shards, passes, attempt)

            return extract_runtime
        if name == "segment":

            def segment_runtime(wildcards: Any, input: Any, threads: int, attempt: int) -> int:
                workers = resources.workers(name, threads, self.torch_threads)
                shards = shard(wildcard_values(wildcards)["scatteritem"])[1]
                return resources.segment_runtime(store_images(input.features) / shards, workers, attempt)

            return segment_runtime
        return lambda wildcards, attempt: resources.runtime(name, attempt)
