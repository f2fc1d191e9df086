"""The demo's training step against its arithmetic floor: the head's forward and backward alone.

    python bench/train_step.py                           # the demo's shapes, random features
    python bench/train_step.py --features STORE --knn KNN.npy   # a real training store and KNN table

Shapes are the demo's `train` settings (batch 16 anchors + 16 positives of 152 × 28 × 28 float16 features,
70-channel codes, 11 × 11 points, 5 negatives). Three loops of `--steps` steps each, alternating over
`--rounds` rounds in one process:

- `step`: the training loop's step (`head_training.train`): draws, batch decode, the head on anchors and
  positives, the loss's dropout, the STEGO loss, backward, Adam, the loss values read back;
- `head`: only the head's forward on the same two batches and a backward through it (the floor: every
  step must run it);
- `loss`: the loss's forward and backward on fixed codes (no head).

Prints the median seconds per step of each and the ratio step / head; writes results/bench/train_step.csv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stego_steps.batches import StepDraws
from stego_steps.head import SegmentationHead
from stego_steps.loss import stego_loss

SHIFTS = {"self": 0.08, "knn": 0.02, "random": 0.76}
WEIGHTS = {"self": 0.67, "knn": 0.25, "random": 0.63}


def demo_inputs(n: int, dim: int, size: int, k: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, dim, size, size, generator=g).relu().half()
    knn = np.stack([np.arange(n)] + [np.random.default_rng(seed + j).permutation(n) for j in range(k)], axis=1)
    return feats, knn


def loops(feats: torch.Tensor, knn: np.ndarray, args: argparse.Namespace) -> dict:
    dim = feats.shape[1]
    draws = StepDraws(knn, args.batch, knn.shape[1] - 1, args.samples, args.negatives, 0)
    head = SegmentationHead(dim, args.code_dim, 0.1)
    drop = nn.Dropout2d(0.1)
    opt = torch.optim.Adam(head.parameters(), lr=5e-4)
    head.train()

    def step() -> None:
        d = draws.next()
        f, f_pos = feats[torch.from_numpy(d.anchors)].float(), feats[torch.from_numpy(d.positives)].float()
        code, code_pos = head(f), head(f_pos)
        out = stego_loss(drop(f), code, drop(f_pos), code_pos, coords1=d.coords1, coords2=d.coords2,
                         perms=d.perms, weights=WEIGHTS, shifts=SHIFTS)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        opt.step()
        [out[k].item() for k in ("self", "knn", "random", "total")]

    d0 = draws.next()
    f0, p0 = feats[torch.from_numpy(d0.anchors)].float(), feats[torch.from_numpy(d0.positives)].float()

    def head_only() -> None:
        code, code_pos = head(f0), head(p0)
        opt.zero_grad(set_to_none=True)
        (code.sum() + code_pos.sum()).backward()

    with torch.no_grad():
        c0, cp0 = head(f0), head(p0)

    def loss_only() -> None:
        code, code_pos = c0.clone().requires_grad_(), cp0.clone().requires_grad_()
        out = stego_loss(drop(f0), code, drop(p0), code_pos, coords1=d0.coords1, coords2=d0.coords2,
                         perms=d0.perms, weights=WEIGHTS, shifts=SHIFTS)
        out["total"].backward()

    fns = {"step": step, "head": head_only, "loss": loss_only}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, help="a training feature store (.h5); default: random")
    parser.add_argument("--knn", type=Path, help="its KNN table (.npy)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--dim", type=int, default=152)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--code-dim", type=int, default=70)
    parser.add_argument("--samples", type=int, default=11)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.features:
        from stego_steps.store import FeatureStore

        with FeatureStore(args.features) as store:
            feats = store.batch(np.arange(store.n)).half()
        knn = np.load(args.knn)
    else:
        feats, knn = demo_inputs(args.n, args.dim, args.size, 7)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        med = loops(feats, knn, args)
        rows.append({"threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                     "step_s": med["step"], "head_fwd_bwd_s": med["head"], "loss_fwd_bwd_s": med["loss"],
                     "step_over_head": med["step"] / med["head"]})
    table = pd.DataFrame(rows)
    print(f"shapes: batch {args.batch} + {args.batch} positives of {feats.shape[1]}×{feats.shape[2]}×"
          f"{feats.shape[3]}, codes {args.code_dim}, {args.samples}² points, {args.negatives} negatives; load "
          f"{os.getloadavg()[0]:.1f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    out = Path("results/bench")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "train_step.csv", index=False)


if __name__ == "__main__":
    main()
