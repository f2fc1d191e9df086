"""Stage `prepare`: write the sample index of each split and the class table of a dataset.

Outputs `{out}/train.csv`, `{out}/val.csv` (columns id, image, label, x0, y0, x1, y1) and
`{out}/classes.json`; for the demo it first renders the scenes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stego_steps import datasets, validate
from stego_steps.datasets import row_box  # noqa: F401 (the stages read crop boxes from here)
from stego_steps.errors import UserError, cli
from stego_steps.io import base_parser, settings_arg, setup_logging, write_csv, write_json

log = logging.getLogger(__name__)

COLUMNS = ["id", "image", "label", "x0", "y0", "x1", "y1"]


def index_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows → DataFrame with the index columns in a fixed order (missing box/label → empty)."""
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    frame["label"] = frame["label"].fillna("")
    for col in ("x0", "y0", "x1", "y1"):
        frame[col] = frame[col].astype("Int64")
    return frame


def read_index(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"id": str, "image": str, "label": str}, keep_default_na=False,
                        na_values={c: [""] for c in ("x0", "y0", "x1", "y1")})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"index {path} lacks columns {missing}; rerun the prepare stage")
    return frame


def prepare(kind: str, settings: dict, out_dir: Path, threads: int = 1) -> dict[str, int]:
    """Build and write the index after checking every file it uses (a `UserError` lists all bad files);
    returns the number of samples per split."""
    splits, classes = validate.checked_index(kind, settings, threads=threads)
    counts = {}
    for split in datasets.SPLITS:
        rows = splits.get(split, [])
        if not rows:
            raise UserError(f"dataset kind '{kind}' produced no samples for split '{split}' "
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
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    counts = prepare(args.kind, args.settings, args.out_dir, threads=args.threads)
    log.info("indexed %s", ", ".join(f"{k}: {v} samples" for k, v in counts.items()))


if __name__ == "__main__":
    cli(main)
