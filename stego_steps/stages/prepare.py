"""Stage `prepare`: write the sample index of each split and the class table of a dataset.

Outputs `{out}/train.csv`, `{out}/val.csv` (the sample index, see `stego_steps.index`) and
`{out}/classes.json`. `python -m stego_steps.stages.prepare render --settings JSON` renders the demo's scenes
(the workflow's `render_demo` rule); `prepare` renders them itself when they are missing.
`python -m stego_steps.stages.prepare fetch --root R --split train2017 --name LIST --url URL` downloads a missing
curated COCO-Stuff list (the `curated_list` rule); the cocostuff adapter also fetches missing lists itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stego_steps import datasets, validate
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.errors import cli

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--kind", required=True, help="dataset kind (demo, cocostuff, ...)")
    parser.add_argument("--settings", type=settings_arg, required=True, help="dataset settings as JSON")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parse_stage_args(parser, argv)
    counts = validate.write_index(args.kind, args.settings, args.out_dir, threads=args.threads)
    log.info("indexed %s", ", ".join(f"{k}: {v} samples" for k, v in counts.items()))


def render_main(argv: list[str] | None = None) -> None:
    """`python -m stego_steps.stages.prepare render --settings '{"root": ..., "generator": {...}}'`"""
    parser = base_parser("Render the demo dataset's scenes.")
    parser.add_argument("--settings", type=settings_arg, required=True, help="demo dataset settings as JSON")
    args = parse_stage_args(parser, argv)
    rows = datasets.render_demo(args.settings, workers=args.threads)
    log.info("rendered %s", ", ".join(f"{k}: {len(v)} scenes" for k, v in rows.items()))


def fetch_main(argv: list[str] | None = None) -> None:
    """`python -m stego_steps.stages.prepare fetch --root R --split train2017 --name LIST --url URL`"""
    parser = base_parser("Download a curated COCO-Stuff list (checksum-verified) when it is missing.")
    parser.add_argument("--root", type=Path, required=True, help="the cocostuff dataset folder")
    parser.add_argument("--split", required=True, choices=sorted(datasets.COCO_SPLIT_DIRS.values()))
    parser.add_argument("--name", required=True, help="list name without .txt")
    parser.add_argument("--url", required=True, help="URL template with {split} and {name}")
    args = parse_stage_args(parser, argv)
    (path,) = datasets.fetch_curated_lists(args.root, args.url, lists=[(args.split, args.name)])
    log.info("curated list %s is in place", path)


if __name__ == "__main__":
    import sys

    commands = {"render": render_main, "fetch": fetch_main}
    if sys.argv[1:2] and sys.argv[1] in commands:
        cli(lambda: commands[sys.argv[1]](sys.argv[2:]))
    else:
        cli(main)
