"""Training steps/s from a store streamed from disk against the same steps from memory, side by side.

    python bench/streaming.py                      # demo shapes (EfficientNet-Lite0: 152 × 28 × 28), 800 samples
    python bench/streaming.py --dim 384 --n 2000   # ViT-S/8 shapes at 224²

Writes a synthetic store in the `extract` layout (float16, or int8 with `--dtype int8`) and trains the head
with the demo preset's settings (batch 16, code dim 70, the loss's sampling) three ways, in rounds that
alternate so that machine load hits all alike:
- `memory`: the store held in memory (what `train` does when it fits the budget);
- `stream`: a memory budget far below the store's size, so `train` streams it (`StreamingBatches`: the
  same batches as from memory, each step's anchors and positives read by a background thread ahead);
- `disk, no prefetch`: each step reads its anchors and positives from HDF5 in the training thread (what
  `train` did before streaming existed), for reference.
Prints a table and writes results/bench/streaming.csv. `--profile` writes a cProfile of one streamed run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from stego_steps import head_training
from stego_steps import store as store_mod
from stego_steps.batches import StepDraws, StreamingBatches
from stego_steps.store import FeatureStore

SETTINGS = {"code_dim": 70, "dropout": 0.1, "batch_size": 16, "lr": 5e-4, "checkpoint_every": 10**9,
            "samples": 11, "negatives": 5, "spatial_centering": True, "zero_clamp": True,
            "weights": {"self": 0.67, "knn": 0.25, "random": 0.63},
            "shifts": {"self": 0.08, "knn": 0.02, "random": 0.76}, "neighbours": 7, "seed": 0}


def write_store(path: Path, n: int, dim: int, grid: int, dtype: str) -> None:
    rng = np.random.default_rng(0)
    arrays = store_mod.layout(n, dim, grid, grid * 8, evaluation=False, labelled=False, dtype=dtype)
    with h5py.File(path, "w") as f:
        store_mod.create(f, arrays)
        for start in range(0, n, 256):
            stop = min(start + 256, n)
            feats = torch.from_numpy(rng.standard_normal((stop - start, dim, grid, grid), np.float32))
            store_mod.write_features(f, "feats", start, feats)
            f["pooled"][start:stop] = feats.mean(dim=(2, 3)).numpy()
        f.attrs.update(backbone="synthetic", res=grid * 8, stride=8, split="train", n_classes=6,
                       class_names="[]")


class DirectDisk(FeatureStore):
    """A store read from disk in the training thread, batch by batch: `train`'s in-memory loop on disk."""

    @property
    def in_memory(self) -> bool:
        return True  # take train's non-streaming loop; batches come from `batch`, i.e. from disk


def run(path: Path, knn: np.ndarray, mode: str, steps: int, device: str) -> float:
    budget = {"memory": 1000.0, "stream": 1e-4, "disk, no prefetch": 0.0}[mode]
    cls = DirectDisk if mode == "disk, no prefetch" else FeatureStore
    with cls(path, max_memory_gb=budget, device=device) as store:
        head_training.train(store, knn, {**SETTINGS, "steps": 3}, device=device)  # warm-up
        sync(device)
        start = time.perf_counter()
        head_training.train(store, knn, {**SETTINGS, "steps": steps}, device=device)
        sync(device)
        return steps / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--dim", type=int, default=152)
    parser.add_argument("--grid", type=int, default=28)
    parser.add_argument("--dtype", default="float16", choices=store_mod.STORE_DTYPES)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("results/bench"))
    parser.add_argument("--threads", type=int, default=2, help="torch compute threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    SETTINGS["batch_size"] = args.batch
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"streaming_{args.dtype}.h5"
    write_store(path, args.n, args.dim, args.grid, args.dtype)
    rng = np.random.default_rng(1)
    knn = np.concatenate([np.arange(args.n)[:, None], rng.integers(0, args.n, (args.n, 7))], axis=1)
    modes = ["memory", "stream", "disk, no prefetch"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rates[mode].append(run(path, knn, mode, args.steps, args.device))
    with FeatureStore(path, max_memory_gb=1e-4) as s:
        size_mb = s.nbytes / 2**20
        with StreamingBatches(s, StepDraws(knn, args.batch, 7, SETTINGS["samples"], SETTINGS["negatives"], 0),
                              steps=1) as stream:
            prefetch = stream.prefetch
    rows = [{"mode": m, "steps_per_s": float(np.median(r)), "runs": " ".join(f"{v:.2f}" for v in r),
             "ratio_to_memory": float(np.median(r) / np.median(rates["memory"]))} for m, r in rates.items()]
    table = pd.DataFrame(rows)
    print(f"store: {args.n} samples × {args.dim} × {args.grid}² {args.dtype} = {size_mb:.0f} MB; stream budget "
          f"1e-4 GB → streamed, {prefetch} steps read ahead; batch {args.batch}, {args.steps} steps × "
          f"{args.rounds} rounds on {args.device}; torch threads {torch.get_num_threads()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    table.assign(n=args.n, dim=args.dim, grid=args.grid, dtype=args.dtype).to_csv(
        args.work / f"streaming_{args.dtype}.csv", index=False)
    if args.profile:
        prof = cProfile.Profile()
        with FeatureStore(path, max_memory_gb=1e-4) as store:
            prof.enable()
            head_training.train(store, knn, {**SETTINGS, "steps": args.steps}, device=args.device)
            prof.disable()
        prof.dump_stats(args.work / "streaming.prof")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    path.unlink()


if __name__ == "__main__":
    main()
