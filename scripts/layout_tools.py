"""Helpers shared by the dataset scripts: link images and write label PNGs into the `directory` layout."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

MARKER = ".laid_out_by"  # written by these scripts: only such a folder is ever replaced


def fresh_root(out: Path, script: str) -> None:
    """Empty `out/imgs` and `out/labels` for a new layout; refuse when they were not made by a dataset script."""
    for kind in ("imgs", "labels"):
        folder = out / kind
        if folder.exists():
            if not (out / MARKER).exists():
                raise FileExistsError(f"{folder} exists and was not laid out by a dataset script; remove it first")
            shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(script + "\n")


def link_image(source: Path, out: Path, split: str, stem: str) -> Path:
    """A relative symlink `out/imgs/<split>/<stem><suffix>` to the image `source`."""
    link = out / "imgs" / split / f"{stem}{source.suffix.lower()}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(source.resolve(), link.parent))
    return link


def write_label(label: np.ndarray, out: Path, split: str, stem: str) -> Path:
    """The label map (class values, the ignore value for unlabelled pixels) as `out/labels/<split>/<stem>.png`."""
    path = out / "labels" / split / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(label, dtype=np.uint8)).save(path)
    return path


def colour_label(rgb: np.ndarray, colours: Iterable[tuple[int, int, int]], ignore: int) -> np.ndarray:
    """Class value of each pixel of a colour-coded label image (class i has `colours[i]`; other colours: ignore)."""
    out = np.full(rgb.shape[:2], ignore, dtype=np.uint8)
    for value, colour in enumerate(colours):
        out[(rgb[..., :3] == np.asarray(colour, dtype=rgb.dtype)).all(-1)] = value
    return out
