"""Stage `extract`: run the frozen backbone once over a split (or one shard of it) and cache its features in
HDF5 (stego_steps.feature_extraction); `gather` joins the shards of a split into one store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stego_steps import store
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.errors import cli
from stego_steps.index import read_index

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--classes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", type=settings_arg, required=True,
                        help="JSON: backbone, weights, res, evaluation, jpeg_quality, batch_size, seed, layers")
    parser.add_argument("--split", default="")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--n-shards", type=int, default=1)
    args = parse_stage_args(parser, argv)
    from stego_steps.feature_extraction import extract  # torch: not needed by `gather`, which starts without it

    classes = json.loads(args.classes.read_text())
    # The job's threads beyond torch's are image loaders (stego_steps.resources, rule extract).
    extract(read_index(args.index), classes, args.out, device=args.device, split=args.split, shard=args.shard,
            n_shards=args.n_shards, workers=max(args.threads - args.torch_threads, 0), **args.settings)


def gather_main(argv: list[str] | None = None) -> None:
    """`python -m stego_steps.stages.extract gather --out split.h5 shard0.h5 shard1.h5 ...`"""
    parser = base_parser("Gather feature shards into one store of virtual datasets.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("shards", type=Path, nargs="+")
    args = parse_stage_args(parser, argv)
    store.gather(args.shards, args.out)
    log.info("gathered %d shards into %s", len(args.shards), args.out)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["gather"]:
        cli(lambda: gather_main(sys.argv[2:]))
    else:
        cli(main)
