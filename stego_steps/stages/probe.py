"""Stage `probe`: the supervised linear probe, a diagnostic (stego_steps.linear_probe trains it).

A 1×1 convolution from the (frozen, eval-mode) head's codes to class logits, trained with cross-entropy on
the training labels; without `--head` it reads the raw backbone features (the baseline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.errors import cli
from stego_steps.head import RawFeatures, load_head, save_probe
from stego_steps.linear_probe import train_probe
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--features", type=Path, required=True, help="train split feature store (.h5)")
    parser.add_argument("--head", type=Path,
                        help="trained head; without it the probe reads the raw backbone features (the baseline)")
    parser.add_argument("--settings", type=settings_arg, required=True, help="JSON: steps, batch_size, lr, seed")
    parser.add_argument("--out", type=Path, required=True, help="probe weights (.pt)")
    args = parse_stage_args(parser, argv)
    device = args.device
    s = args.settings
    with FeatureStore(args.features, device=device) as store:
        head = (load_head(args.head, device, store.attrs.get("backbone_id")) if args.head
                else RawFeatures(store.dim))
        n_classes = int(store.attrs["n_classes"])
        probe, losses = train_probe(store, head, n_classes, steps=s["steps"], batch_size=s["batch_size"],
                                    lr=s["lr"], seed=s["seed"], device=device)
    log.info("linear probe: loss %.4f → %.4f over %d steps", losses[0], np.mean(losses[-10:]), len(losses))
    save_probe(args.out, probe, {"losses": losses})


if __name__ == "__main__":
    cli(main)
