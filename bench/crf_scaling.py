"""How the CRF stage scales with its worker processes: images/s from 1 worker to all cores, side by side.

The dense CRF runs on the CPU, one image per worker process (one thread each). This script refines the same
images (a finished run's cluster log-probabilities on its evaluation store) with 1, 2, … workers, the worker
counts alternating round by round, and prints the median rate and the speed-up over one worker:

    python bench/crf_scaling.py --run results/demo/runs/default/seed0

`workers = 1` runs the CRFs in the stage's own process (no pool); more workers start a spawned pool per round,
whose start-up is counted (it is what a segment job pays); `first_result_s` is the time to refine one image
per worker, i.e. the pool's start-up plus one CRF. Writes results/bench/crf_scaling.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from stego_steps.crf import refine_labels
from stego_steps.head import cluster_log_probs, log_probs_at
from stego_steps.store import FeatureStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished run (codes.h5, centroids.npy)")
    parser.add_argument("--features", type=Path,
                        help="the run's evaluation store (default: val.h5 beside the store it trained on)")
    parser.add_argument("--images", type=int, default=32, help="images refined per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("results/bench/crf_scaling.csv"))
    args = parser.parse_args()
    if args.features is None:  # a run folder is <workdir>/results/<ds>/runs/<variant>/seed<s>
        trained_on = json.loads((args.run / "settings.json").read_text())["features"]
        args.features = args.run.resolve().parents[4] / Path(trained_on).with_name("val.h5")
    torch.set_num_threads(1)
    to_log_probs = cluster_log_probs(np.load(args.run / "centroids.npy"))
    with h5py.File(args.run / "codes.h5", "r") as f:
        codes = f["codes"][: args.images]
    with FeatureStore(args.features, max_memory_gb=0) as store:
        images = store.dataset("image")[: len(codes)]
    size = images.shape[1]
    # The log-probabilities are computed once: only the CRF is timed.
    items = [(images[i], log_probs_at(torch.from_numpy(codes[i:i + 1]), size, to_log_probs))
             for i in range(len(codes))]
    counts = list(range(1, args.max_workers + 1))
    seconds: dict[int, list[float]] = {w: [] for w in counts}
    startup: dict[int, list[float]] = {w: [] for w in counts}
    reference = None
    for _ in range(args.rounds):
        for workers in counts:  # one image per worker: the pool's start-up plus one CRF
            start = time.perf_counter()
            list(refine_labels(iter(items[:workers]), workers=workers))
            startup[workers].append(time.perf_counter() - start)
        for workers in counts:
            start = time.perf_counter()
            labels = np.stack(list(refine_labels(iter(items), workers=workers)))
            seconds[workers].append(time.perf_counter() - start)
            if reference is None:
                reference = labels
            elif not np.array_equal(labels, reference):
                raise AssertionError(f"{workers} workers gave other labels than 1 worker")
    rows = []
    for workers in counts:
        median = statistics.median(seconds[workers])
        rows.append({"workers": workers, "images": len(items), "median_s": median,
                     "images_per_s": len(items) / median,
                     "first_result_s": statistics.median(startup[workers])})
    frame = pd.DataFrame(rows)
    frame["speedup"] = frame["images_per_s"] / frame["images_per_s"].iloc[0]
    frame["efficiency"] = frame["speedup"] / frame["workers"]
    print(f"CRF of {len(items)} images of {size}x{size}, {args.rounds} rounds, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load {os.getloadavg()[0]:.2f} at the end")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
