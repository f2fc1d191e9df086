"""Stage `figures`: pictures of a finished run (matplotlib, written as PNG under `results/{ds}/figures/`).

Subcommands:
- `panels`: N evaluation images in rows, columns image | ground truth | cluster | cluster + CRF | linear (+ CRF) |
  backbone K-Means (+ CRF). Predictions are coloured through the saved Hungarian mapping (`mapping/*.csv` of
  the evaluate stage), so one class has one colour in every column; clusters that the matching leaves
  unassigned are grey, unlabelled pixels black. Without labels every cluster gets its own colour.
- `metrics`: one confusion heat map per evaluated row (rows: clusters in the order of their matched class,
  columns: true classes, colour: share of each true class's pixels) and per-class IoU bars.
- `training`: the total loss and each term per step (thin line) with a moving average.
- `correlations`: histograms of the feature correlations F that each loss term compares with its shift, drawn
  with the training stage's own sampling (KNN positives, random coordinates, negative permutations) from the
  cached training features, a few seeded batches; the shift is marked and the share of pairs above it (pulled
  together) is written next to it and into a CSV. Points with F above the shift are attracted, below repelled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stego_steps.artifacts import read_npy, write_csv
from stego_steps.cli import base_parser, setup_logging
from stego_steps.errors import cli
from stego_steps.plots import (  # sets matplotlib's file-only backend
    TITLES,
    calibration_table,
    confusion_figure,
    correlation_figure,
    correlation_summary,
    iou_figure,
    panels,
    save_figure,
    training_figure,
)
from stego_steps.protocol import ROWS, row_key
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = base_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("panels")
    p.add_argument("--features", type=Path, required=True, help="evaluation split feature store (.h5)")
    p.add_argument("--segments", type=Path, nargs="+", required=True)
    p.add_argument("--mapping", type=Path, help="the evaluate stage's mapping/ folder (labelled datasets)")
    p.add_argument("--count", type=int, default=6, help="images in the panel")
    p.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("metrics")
    m.add_argument("--confusion", type=Path, required=True, help="the evaluate stage's confusion/ folder")
    m.add_argument("--per-class", type=Path, required=True, help="per_class_iou.csv")
    m.add_argument("--out-dir", type=Path, required=True)
    t = sub.add_parser("training")
    t.add_argument("--log-csv", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("correlations")
    c.add_argument("--features", type=Path, required=True, help="training split feature store (.h5)")
    c.add_argument("--knn", type=Path, required=True)
    c.add_argument("--resolved", type=Path, required=True, help="the training stage's settings.json")
    c.add_argument("--batches", type=int, default=4)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--calibration", type=Path, help="the calibrate stage's artifact: its choice as a table")
    c.add_argument("--calibration-out", type=Path, help="CSV: the calibration table")
    c.add_argument("--out", type=Path, required=True, help="PNG; the summary goes next to it as .csv")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "panels":
        with FeatureStore(args.features, max_memory_gb=0) as store:
            save_figure(panels(store, args.segments, args.mapping, args.count), args.out)
    elif args.command == "metrics":
        for probe, crf in ROWS:
            key = row_key(probe, crf)
            table = pd.read_csv(args.confusion / f"{key}.csv", keep_default_na=False)
            save_figure(confusion_figure(table, f"confusion: {TITLES[probe, crf]}"),
                        args.out_dir / f"confusion_{key}.png")
        save_figure(iou_figure(pd.read_csv(args.per_class)), args.out_dir / "per_class_iou.png")
    elif args.command == "training":
        save_figure(training_figure(pd.read_csv(args.log_csv)), args.out)
    else:
        # torch only here: the other pictures start without it (seconds sooner).
        import torch

        from stego_steps.correlations import term_correlations

        torch.set_num_threads(max(args.threads, 1))
        settings = json.loads(args.resolved.read_text())["settings"]
        with FeatureStore(args.features) as store:
            # without the training's channel dropout: the features' own correlations
            values = term_correlations(store, read_npy(args.knn, "KNN table"), settings, batches=args.batches,
                                       seed=args.seed, dropout=False)
        write_csv(args.out.with_suffix(".csv"), correlation_summary(values, settings["shifts"]))
        save_figure(correlation_figure(values, settings["shifts"], settings["spatial_centering"]), args.out)
        if args.calibration and args.calibration_out:
            write_csv(args.calibration_out, calibration_table(json.loads(args.calibration.read_text())))


if __name__ == "__main__":
    cli(main)
