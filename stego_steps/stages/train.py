"""Stage `train`: fit the segmentation head with the STEGO loss on cached training features.

One step = one batch of anchors, each paired with a positive drawn uniformly from its KNN ranks 1..k and
with random negatives from the same batch. Adam without weight decay, no schedule. Writes the head, a per-step
CSV log and the resolved settings; a checkpoint every `--checkpoint-every` steps lets a killed run resume
(bookkeeping: it is an argument of its own, not a setting, so changing it re-runs nothing).

A store that fits the memory budget (`store.memory_budget_gb()`) is held in memory; a larger one is streamed
(`batches.StreamingBatches`: a background thread reads each step's anchors and positives ahead). Both draw
the same batches (a global shuffle per epoch), so the head does not depend on the budget.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from stego_steps.artifacts import read_npy, write_csv, write_json
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.errors import cli
from stego_steps.head import save_head
from stego_steps.head_training import train
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--features", type=Path, required=True, help="train split feature store (.h5)")
    parser.add_argument("--knn", type=Path, required=True, help="KNN table (.npy)")
    parser.add_argument("--settings", type=settings_arg, required=True)
    parser.add_argument("--calibration", type=Path,
                        help="calibration artifact (JSON, stage calibrate): its shifts and weights are used")
    parser.add_argument("--head", type=Path, required=True, help="output: head weights (.pt)")
    parser.add_argument("--log-csv", type=Path, required=True, help="output: per-step losses")
    parser.add_argument("--resolved", type=Path, required=True, help="output: settings used (JSON)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between checkpoints (default: a tenth of the steps)")
    args = parse_stage_args(parser, argv)
    if args.calibration:
        calibration = json.loads(args.calibration.read_text())
        args.settings = {**args.settings, "shifts": calibration["shifts"], "weights": calibration["weights"]}
        log.info("loss shifts %s and weights %s from %s", args.settings["shifts"], args.settings["weights"],
                 args.calibration)
    checkpoint = args.head.with_name(args.head.name + ".checkpoint")
    device = args.device
    with FeatureStore(args.features, device=device) as store:
        head, steps = train(store, read_npy(args.knn, "KNN table"), args.settings, device=device, checkpoint=checkpoint,
                            checkpoint_every=args.checkpoint_every)
        meta = {"settings": args.settings, "backbone": store.attrs.get("backbone"),
                "backbone_id": store.attrs.get("backbone_id"),
                "features": str(args.features)}
    write_json(args.resolved, meta)
    write_csv(args.log_csv, steps)
    save_head(args.head, head.cpu(), meta)
    if checkpoint.exists():
        os.remove(checkpoint)


if __name__ == "__main__":
    cli(main)
