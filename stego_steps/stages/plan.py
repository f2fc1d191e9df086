"""Stage `plan`: before the heavy work, tell the samples per split and the size of each feature store, and
refuse to start when the disk cannot hold that store (`stego_steps.disk_space.check_space`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from stego_steps.artifacts import write_text
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.disk_space import (
    MARGIN,
    InsufficientSpace,
    check_space,
    format_plan,
    free_bytes,
    make_plan,
    reclaimable_bytes,
)
from stego_steps.errors import cli

log = logging.getLogger(__name__)

def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--index", nargs="+", required=True, metavar="SPLIT=CSV",
                        help="index CSV of each split, e.g. train=results/x/index/train.csv")
    parser.add_argument("--settings", type=settings_arg, required=True,
                        help="JSON {split: extract settings (backbone, res, evaluation, ...)}")
    parser.add_argument("--store-dir", type=Path, required=True, help="folder the feature stores go to")
    parser.add_argument("--out", type=Path, required=True, help="the plan (text)")
    parser.add_argument("--title", default="plan", help="first line of the table")
    parser.add_argument("--margin", type=float, default=MARGIN, help="needed × margin must be free")
    args = parse_stage_args(parser, argv)
    indexes = {}
    for item in args.index:
        split, sep, path = item.partition("=")
        if not sep or not path:
            parser.error(f"--index expects SPLIT=path, got '{item}'")
        indexes[split] = path
    plans = make_plan(indexes, args.settings)
    measured, free = free_bytes(args.store_dir)
    reclaimable = reclaimable_bytes(args.store_dir, list(indexes))
    text = format_plan(plans, title=args.title, store_dir=args.store_dir, measured=measured, free=free,
                       reclaimable=reclaimable, margin=args.margin)
    log.info("\n%s", text)
    print(text, flush=True)  # the job's stdout: Snakemake shows it on the console
    try:
        check_space(plans, free + reclaimable, store_dir=args.store_dir, margin=args.margin)
    except InsufficientSpace as err:
        print(f"PLAN REFUSED: {err}", flush=True)  # on the console; `cli` puts the ERROR block in the log
        raise
    write_text(args.out, text)


if __name__ == "__main__":
    cli(main)
