"""Helpers shared by the dataset scripts: their common arguments, the source tree (given or downloaded), and
linking images and writing label PNGs into the `directory` layout."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from stego_steps.download import download, extract

MARKER = ".laid_out_by"  # written by these scripts: only such a folder is ever replaced


def script_parser(doc: str | None, url: str, source_help: str) -> argparse.ArgumentParser:
    """The arguments every dataset script takes: the dataset's root, `--from` an existing tree, `--url`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the dataset's root (the config's `root`)")
    parser.add_argument("--from", dest="source", type=Path, help=source_help)
    parser.add_argument("--url", default=url, help="the archive to download (default: the pinned commit)")
    return parser


def source_tree(args: argparse.Namespace, name: str) -> Path:
    """`--from`'s tree, or the archive at `--url` downloaded and unpacked under `<out>/download/<name>`."""
    if args.source is not None:
        return args.source
    return extract(download(args.url, args.out / "download" / f"{name}.zip"), args.out / "download" / name)


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
