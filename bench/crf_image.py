"""The effect of the image the CRF sees: this workflow's exact RGB image against the official code's BGR order.

The official evaluation hands the dense CRF the un-normalised image with its channels in BGR order (truncated to
uint8); this workflow passes the RGB image it evaluates. The appearance kernel uses one standard deviation for
all three channels, so the exact kernel is the same for either order; pydensecrf evaluates it approximately on a
permutohedral lattice, whose embedding depends on the order of the feature dimensions, so the refined maps can
differ slightly. This script measures it:

    python bench/crf_image.py --run results/demo/runs/default/seed0 --features results/demo/features/<key>/val.h5

Prints the cluster probe's accuracy and mIoU after the CRF with each image, and how many pixels differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from stego_steps import metrics
from stego_steps.head import cluster_log_probs
from stego_steps.label_maps import segment
from stego_steps.store import FeatureStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished run (codes.h5, centroids.npy)")
    parser.add_argument("--features", type=Path, required=True, help="the run's evaluation store (val.h5)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/crf_image.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    centroids = np.load(args.run / "centroids.npy")
    with h5py.File(args.run / "codes.h5", "r") as f:
        codes = f["codes"][...]
    with FeatureStore(args.features, max_memory_gb=0) as store:
        images = store.dataset("image")[...]
        labels = store.read("label")
        n_classes = int(store.attrs["n_classes"])
    rows = range(len(codes))
    outputs, table = {}, []
    for name, pixels in (("RGB (this workflow)", images), ("BGR (official)", np.ascontiguousarray(images[..., ::-1]))):
        _, crf = segment(lambda i: torch.from_numpy(codes[i:i + 1]), pixels, rows, cluster_log_probs(centroids),
                         crf_workers=args.workers)
        s = metrics.scores(metrics.confusion(crf, labels, len(centroids), n_classes))
        outputs[name] = crf
        table.append({"crf image": name, "pixel_accuracy": float(s["pixel_accuracy"]), "miou": float(s["miou"])})
    first, second = outputs.values()
    frame = pd.DataFrame(table)
    frame["pixels_changed_pct"] = [0.0, 100 * float((first != second).mean())]
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(json.dumps({"images": len(rows), "written": str(args.out)}))


if __name__ == "__main__":
    main()
