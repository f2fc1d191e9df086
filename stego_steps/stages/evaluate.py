"""Stage `evaluate`: dataset-level confusion matrices, Hungarian matching, accuracy and mIoU.

Reads the segment shards of every probe (with the number of clusters each probe's maps range over) and the
evaluation labels, and writes:
- `miou.csv`: one row per (probe, crf) with pixel accuracy and mIoU in percent;
- `per_class_iou.csv`: IoU of every class for every row;
- `crf_effect.csv`: per probe and class, IoU without and with the CRF and their difference (where it hurts);
- `confusion/{probe}_{crf|raw}.csv`: the confusion matrices: one row per predicted cluster (`cluster` id and the
  `class` it is matched to, empty when unmatched), one column per true class, named;
- `mapping/{probe}_{crf|raw}.csv`: the cluster → class assignment of each row (`cluster`, `class_id` (−1 when
  unmatched), `class`, `matched_pixels` = pixels of that cluster that carry that class, `cluster_pixels`).
Cluster probes are matched to classes by one Hungarian assignment over the whole split; the linear probes use
the identity. Pixels in unmatched (extra) clusters count as errors.

With `--no-labels` (a dataset without labels) it writes only `clusters.csv`: for every cluster-probe row, the
pixel share of each cluster and the number of images it appears in.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from stego_steps.artifacts import write_csv
from stego_steps.cli import base_parser, parse_stage_args
from stego_steps.errors import UserError, cli
from stego_steps.evaluation import (
    cluster_shares,
    confusion_table,
    crf_effect,
    evaluate_blocks,
    mapping_table,
    score_tables,
    segment_clusters,
)
from stego_steps.label_maps import iter_predictions
from stego_steps.protocol import PROBES, row_key
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--features", type=Path, required=True, help="evaluation split feature store (.h5)")
    parser.add_argument("--segments", type=Path, nargs="+", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--no-labels", action="store_true",
                        help="a dataset without labels: write only clusters.csv (cluster probes' pixel shares)")
    args = parse_stage_args(parser, argv)
    if args.no_labels:
        write_cluster_table(args)
        return
    with FeatureStore(args.features, max_memory_gb=0) as store:
        if not store.has("label"):
            raise UserError(f"{args.features} has no labels: the labelled metrics cannot be computed; set "
                            "`labelled: false` for this dataset (its result is then clusters.csv)")
        names, backbone, n = store.class_names, store.attrs["backbone"], store.n
        n_clusters = segment_clusters(args.segments)
        # Block by block: the memory is one block of maps and labels, whatever the number of images.
        blocks = {p: iter_predictions(args.segments, p, n) for p in PROBES if p in n_clusters}
        rows, confusions = evaluate_blocks(store.dataset("label"), blocks, n_clusters, len(names))
    table, per_class = score_tables(rows, names, dataset=args.dataset, backbone=backbone, n_images=n)
    for r in rows:
        key = row_key(r["probe"], r["crf"])
        mapping = mapping_table(confusions[key], r["assignment"], names)
        write_csv(args.out_dir / "mapping" / f"{key}.csv", mapping)
        write_csv(args.out_dir / "confusion" / f"{key}.csv", confusion_table(confusions[key], mapping, names))
    write_csv(args.out_dir / "per_class_iou.csv", per_class)
    write_csv(args.out_dir / "crf_effect.csv", crf_effect(per_class))
    write_csv(args.out_dir / "miou.csv", table)  # last: the rule's main target
    log.info("\n%s", table.to_string(index=False, float_format="%.2f"))


def write_cluster_table(args: argparse.Namespace) -> None:
    """`--no-labels`: clusters.csv from the segments given."""
    with FeatureStore(args.features, max_memory_gb=0) as store:
        n, backbone = store.n, store.attrs["backbone"]
    n_clusters = segment_clusters(args.segments)
    blocks = {p: iter_predictions(args.segments, p, n) for p in n_clusters}
    table = pd.DataFrame([{"dataset": args.dataset, "backbone": backbone, **r, "n_images": n}
                          for r in cluster_shares(blocks, n_clusters)])
    write_csv(args.out_dir / "clusters.csv", table)
    log.info("\n%s", table.to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    cli(main)
