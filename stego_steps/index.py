"""The sample index: what `prepare` writes and every later stage reads.

One CSV per split (`train`, `val`) with the columns `id, image, label, x0, y0, x1, y1`: `label` may be empty
(a dataset without labels), the crop box may be empty (the whole image). Labels inside the pipeline are class
ids with `IGNORE` (−1) for unlabeled pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stego_steps.errors import UserError

SPLITS = ("train", "val")
COLUMNS = ["id", "image", "label", "x0", "y0", "x1", "y1"]
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
IGNORE = -1  # label value for unlabeled pixels everywhere inside the pipeline

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in full-resolution pixels


def row_box(row: Mapping[str, Any]) -> Box | None:
    """The crop box of an index row (a dict or a pandas row); None (or NaN, as read from CSV) = whole image."""
    values = [row.get(k) for k in BOX_COLUMNS]
    if any(pd.isna(v) for v in values):
        return None
    return tuple(int(v) for v in values)


def index_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows → DataFrame with the index columns in a fixed order (missing box/label → empty)."""
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    frame["label"] = frame["label"].fillna("")
    for col in BOX_COLUMNS:
        frame[col] = frame[col].astype("Int64")
    return frame


def read_index(path: str | Path) -> pd.DataFrame:
    """The index CSV of one split, with empty labels as "" and empty boxes as NA."""
    frame = pd.read_csv(path, dtype={"id": str, "image": str, "label": str}, keep_default_na=False,
                        na_values={c: [""] for c in BOX_COLUMNS})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"index {path} lacks columns {missing}; rerun the prepare stage")
    return frame


def is_labelled(frame: pd.DataFrame) -> bool:
    """A split is labelled when it has rows and every row has a label file."""
    return bool(len(frame)) and bool((frame["label"] != "").all())
