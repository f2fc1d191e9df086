"""Stage `predict`: the head's codes for the evaluation split, with flip test-time augmentation
(stego_steps.codes computes them).

The code of each image is averaged with the (re-flipped) code of its mirror image, as in the official
evaluation; it stays at feature resolution ([N,D,h,w] float32 in `codes.h5`) — upsampling and the probes
come in `segment`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stego_steps.cli import base_parser, parse_stage_args
from stego_steps.codes import predict_codes
from stego_steps.errors import UserError, cli
from stego_steps.head import load_head
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--features", type=Path, required=True, help="evaluation split feature store (.h5)")
    parser.add_argument("--head", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="codes (.h5)")
    args = parse_stage_args(parser, argv)
    device = args.device
    with FeatureStore(args.features, max_memory_gb=0) as store:
        if not store.has("feats_flip"):
            raise UserError(f"{args.features} has no flipped features: it is not an evaluation split store")
        predict_codes(store, load_head(args.head, device, store.attrs.get("backbone_id")), args.out, device=device)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    cli(main)
