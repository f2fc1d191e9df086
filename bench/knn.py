"""Speed of the KNN stage's exact search (FAISS inner product, all against all) and its cost at COCO's size.

    python bench/knn.py                      # CPU (faiss-cpu), 5,000 / 10,000 / 20,000 vectors of 768
    python bench/knn.py --gpu --n 50000 100000 200000   # with faiss-gpu

The search compares every pooled feature with every other, so its time grows with the square of the number of
crops: the table extrapolates each measurement to COCO-Stuff's 488,510 five-crop training crops (ViT-B/8, 768
channels) as time × (488,510 / n)². Writes results/bench/knn.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stego_steps.knn import knn_table

COCO_CROPS = 488_510


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--gpu", action="store_true", help="search on FAISS's GPU 0")
    parser.add_argument("--out", type=Path, default=Path("results/bench/knn.csv"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    knn_table(rng.standard_normal((256, args.dim)).astype(np.float32), args.k, use_gpu=args.gpu)  # warm-up
    rows = []
    for n in args.n:
        pooled = rng.standard_normal((n, args.dim)).astype(np.float32)
        start = time.perf_counter()
        table = knn_table(pooled, args.k, use_gpu=args.gpu)
        seconds = time.perf_counter() - start
        assert table.shape == (n, args.k + 1)
        rows.append({"device": "gpu" if args.gpu else "cpu", "n": n, "dim": args.dim, "seconds": seconds,
                     "gflop_per_s": 2.0 * n * n * args.dim / seconds / 1e9,
                     "coco_minutes": seconds * (COCO_CROPS / n) ** 2 / 60})
    frame = pd.DataFrame(rows)
    print(f"exact KNN (k={args.k}), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
