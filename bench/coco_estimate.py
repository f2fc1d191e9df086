"""The end-to-end wall time of the COCO-Stuff preset, estimated from measured rates.

    python bench/coco_estimate.py                          # the rates measured on an H200 (defaults below)
    python bench/coco_estimate.py --extract-train 400 ...  # other measured rates

Each stage's work is fixed by the preset (97,702 training images × 5 crops = 488,510 crops at 224²; 2,175
validation images at 320² with their mirror; 7,000 head steps; 7,000 probe steps per linear probe; K-Means of
3 × 2,000 batches; four CRF-refined probes on the validation images). The defaults are the ViT-B/8 rates that
`bench/gpu_stages.py` measured on one NVIDIA H200 (float32, TF32 off; bench/RESULTS.md) and the CRF rate of
one worker measured by `bench/crf_scaling.py` on the 2-core development CPU. The KNN table is listed apart:
its exact search grows with the square of the crops and its GPU rate is measured by `bench/knn.py --gpu`
(pass it as --knn-gflops). Prints the table and the extraction rate that the goal of one hour needs.
"""

from __future__ import annotations

import argparse

import pandas as pd

TRAIN_CROPS = 97_702 * 5
VAL_IMAGES = 2_175
DIM = 768


def estimate(args: argparse.Namespace) -> pd.DataFrame:
    stages = [
        ("extract train (224², five-crop)", TRAIN_CROPS / args.extract_train, f"{args.extract_train:g} images/s"),
        ("extract val (320², + mirror)", VAL_IMAGES / args.extract_val, f"{args.extract_val:g} images/s"),
        ("train the head (7,000 steps)", 7000 / args.train_steps, f"{args.train_steps:g} steps/s"),
        ("K-Means: head and backbone (3 × 2,000 batches each)", 2 * args.kmeans_s * 2000 / 200,
         f"{args.kmeans_s:g} s per 3 × 200 batches"),
        ("linear probes: head and backbone (7,000 steps each)", 2 * 7000 / args.probe_steps,
         f"{args.probe_steps:g} steps/s"),
        ("predict (flip TTA)", VAL_IMAGES / args.predict, f"{args.predict:g} images/s"),
        ("CRF: 4 probes", 4 * VAL_IMAGES / (args.crf_per_worker * args.crf_workers),
         f"{args.crf_per_worker:g} images/s per worker × {args.crf_workers} workers"),
    ]
    if args.knn_gflops:
        stages.append(("KNN table (exact, all against all)", 2.0 * TRAIN_CROPS ** 2 * DIM / args.knn_gflops / 1e9,
                       f"{args.knn_gflops:g} GFLOP/s"))
    frame = pd.DataFrame(stages, columns=["stage", "seconds", "measured rate"])
    frame["minutes"] = frame["seconds"] / 60
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extract-train", type=float, default=100.0, help="images/s at 224²")
    parser.add_argument("--extract-val", type=float, default=33.0, help="images/s at 320², image + mirror")
    parser.add_argument("--train-steps", type=float, default=51.0, help="head steps/s, batch 32")
    parser.add_argument("--kmeans-s", type=float, default=1.1, help="seconds per 3 × 200 K-Means batches")
    parser.add_argument("--probe-steps", type=float, default=484.0, help="linear-probe steps/s")
    parser.add_argument("--predict", type=float, default=108.0, help="images/s with flip TTA")
    parser.add_argument("--crf-per-worker", type=float, default=3.18, help="CRF images/s of one worker, 320²")
    parser.add_argument("--crf-workers", type=int, default=16, help="CRF worker processes (CPU cores)")
    parser.add_argument("--knn-gflops", type=float, help="measured exact-search rate (bench/knn.py)")
    args = parser.parse_args()
    frame = estimate(args)
    total = frame["seconds"].sum()
    print(frame[["stage", "measured rate", "minutes"]].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"total: {total / 60:.1f} min" + ("" if args.knn_gflops else " (without the KNN table)"))
    rest = total - frame["seconds"].iloc[0]
    if rest < 3600:
        print(f"one hour needs training extraction at ≥ {TRAIN_CROPS / (3600 - rest):.0f} images/s "
              f"({TRAIN_CROPS / (3600 - rest) / args.extract_train:.2f}× the rate above)")


if __name__ == "__main__":
    main()
