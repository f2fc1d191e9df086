"""Stage `evaluate`: dataset-level confusion matrices, Hungarian matching, accuracy and mIoU (reference §7).

Reads the segment shards of every probe and the evaluation labels, and writes:
- `miou.csv`: one row per (probe, crf) with pixel accuracy and mIoU in percent;
- `per_class_iou.csv`: IoU of every class for every row;
- `confusion/{probe}_{crf|raw}.csv`: the confusion matrices (rows predicted cluster, columns true class).
Cluster probes are matched to classes by one Hungarian assignment over the whole split; the linear probe uses
the identity. Pixels in unmatched (extra) clusters count as errors.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from stego_steps import metrics
from stego_steps.io import base_parser, setup_logging, write_csv
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)

# (probe, crf) rows of the table; the backbone K-Means baseline is reported under the full protocol only.
ROWS = (("cluster", False), ("cluster", True), ("linear", False), ("linear", True), ("backbone_kmeans", True))


def read_predictions(paths: list[Path], probe: str, n: int) -> dict[bool, np.ndarray]:
    """Stitch the shards of one probe back into [N,H,W] maps for raw (False) and CRF (True)."""
    shards = []
    for path in paths:
        with h5py.File(path, "r") as f:
            if f.attrs["probe"] == probe:
                shards.append((int(f.attrs["start"]), int(f.attrs["stop"]), f["raw"][...], f["crf"][...]))
    shards.sort(key=lambda s: s[0])
    covered = [i for start, stop, *_ in shards for i in range(start, stop)]
    if covered != list(range(n)):
        raise ValueError(f"segment shards of probe '{probe}' do not cover images 0..{n - 1} exactly: "
                         f"{[(s[0], s[1]) for s in shards]}; rerun the segment stage")
    return {False: np.concatenate([s[2] for s in shards]), True: np.concatenate([s[3] for s in shards])}


def evaluate(labels: np.ndarray, predictions: dict[str, dict[bool, np.ndarray]], n_clusters: dict[str, int],
             n_classes: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score rows and the confusion matrix of every (probe, crf) in ROWS present in `predictions`."""
    rows, confusions = [], {}
    for probe, crf in ROWS:
        if probe not in predictions:
            continue
        conf = metrics.confusion(predictions[probe][crf], labels, n_clusters[probe], n_classes)
        s = metrics.scores(conf, hungarian=probe != "linear")
        rows.append({"probe": probe, "crf": crf, "pixel_accuracy": float(s["pixel_accuracy"]),
                     "miou": float(s["miou"]), "iou": s["iou"]})
        confusions[f"{probe}_{'crf' if crf else 'raw'}"] = conf
    return rows, confusions


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--features", type=Path, required=True, help="evaluation split feature store (.h5)")
    parser.add_argument("--segments", type=Path, nargs="+", required=True)
    parser.add_argument("--centroids", nargs="*", default=[],
                        help="PROBE=path.npy for cluster probes (their K may exceed the class count)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    with FeatureStore(args.features, max_memory_gb=0) as store:
        if not store.has("label"):
            raise ValueError(f"{args.features} has no labels: the labelled metrics cannot be computed")
        labels = store.read("label")
        names, backbone = store.class_names, store.attrs["backbone"]
    n_classes = len(names)
    n_clusters = {"linear": n_classes}
    for item in args.centroids:
        probe, _, path = item.partition("=")
        if not path:
            raise argparse.ArgumentTypeError(f"--centroids expects PROBE=path, got '{item}'")
        n_clusters[probe] = len(np.load(path))
    probes = [p for p in dict.fromkeys(p for p, _ in ROWS) if p in n_clusters]
    predictions = {p: read_predictions(args.segments, p, len(labels)) for p in probes}
    rows, confusions = evaluate(labels, predictions, n_clusters, n_classes)
    common = {"dataset": args.dataset, "backbone": backbone}
    table = pd.DataFrame([{**common, **{k: v for k, v in r.items() if k != "iou"}, "n_images": len(labels)}
                          for r in rows])
    per_class = pd.DataFrame([{**common, "probe": r["probe"], "crf": r["crf"], "class_id": k, "class": name,
                               "iou": 100.0 * r["iou"][k]} for r in rows for k, name in enumerate(names)])
    for key, conf in confusions.items():
        write_csv(args.out_dir / "confusion" / f"{key}.csv", pd.DataFrame(conf, columns=names))
    write_csv(args.out_dir / "per_class_iou.csv", per_class)
    write_csv(args.out_dir / "miou.csv", table)  # last: the rule's main target
    log.info("\n%s", table.to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
