"""Stage `prepare`: write the sample index of each split and the class table of a dataset.

Outputs `{out}/train.csv`, `{out}/val.csv` (the sample index, see `stego_steps.index`) and
`{out}/classes.json`; for the demo it first renders the scenes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stego_steps import datasets
from stego_steps.artifacts import write_csv, write_json
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.index import SPLITS, index_frame

log = logging.getLogger(__name__)


def prepare(kind: str, settings: dict, out_dir: Path) -> dict[str, int]:
    """Build and write the index; returns the number of samples per split."""
    splits, classes = datasets.build_index(kind, settings)
    counts = {}
    for split in SPLITS:
        rows = splits.get(split, [])
        if not rows:
            raise ValueError(f"dataset kind '{kind}' produced no samples for split '{split}' "
                             f"(root {settings.get('root')}): check the dataset root and its layout")
        write_csv(out_dir / f"{split}.csv", index_frame(rows))
        counts[split] = len(rows)
    # Written last: its presence marks a complete index.
    write_json(out_dir / "classes.json", classes)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--kind", required=True, help="dataset kind (demo, cocostuff, ...)")
    parser.add_argument("--settings", type=settings_arg, required=True, help="dataset settings as JSON")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parse_stage_args(parser, argv)
    counts = prepare(args.kind, args.settings, args.out_dir)
    log.info("indexed %s", ", ".join(f"{k}: {v} samples" for k, v in counts.items()))


if __name__ == "__main__":
    main()
