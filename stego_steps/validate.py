"""Checks of a dataset's files before any heavy work, and the manifest that tracks them.

`write_index` is what `prepare` runs: `checked_index` builds the index of a dataset, reads every image and label file
once with the same functions as extraction (`images.read_image`, `images.read_label`), and raises one
`UserError` that lists every bad file at once (what is wrong, and the fix). The cases, and what happens
to each, are listed in the README ("What happens to bad input").

`manifest` summarises the dataset's files (names, sizes, modification times) while the workflow builds its
DAG, so that adding, removing or editing a file re-runs `prepare` and everything after it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stego_steps import datasets, images
from stego_steps.artifacts import write_csv, write_json
from stego_steps.errors import UserError, first_lines
from stego_steps.index import SPLITS, index_frame

log = logging.getLogger(__name__)

# An image (or five-crop) side below MIN_SIDE pixels holds less than one patch of the finest backbone (stride
# 8); an aspect ratio above MAX_ASPECT means the square centre crop keeps less than 1/MAX_ASPECT of the image.
# Anything else smaller than the resolution is enlarged by the resize (NEAREST, as torchvision's Resize).
MIN_SIDE = 8
MAX_ASPECT = 16.0
# Raw label values that mean "unlabeled" besides the values the class table maps, per dataset kind
# (directory: its `ignore_label`). Potsdam keeps the official mapping of any other value to class 0.
UNLABELED = {"demo": {255}, "cocostuff": {255}, "cityscapes": {*range(datasets.CITYSCAPES_FIRST_ID), 255}}
# The folders (or files) of a dataset root whose files the manifest covers; the demo is rendered by `prepare`
# from its settings, and COCO-Stuff's curated lists are downloaded by it, so neither is tracked.
TRACKED = {
    "directory": ("imgs", "labels"),
    "cocostuff": ("images", "annotations"),
    "cityscapes": ("leftImg8bit", "gtFine"),
    "potsdam": ("imgs", "gt", *datasets.POTSDAM_LISTS.values()),
}
SHOWN = 200  # problems shown in one error message


# ---------------------------------------------------------------------------------------------------------
# Per-file checks


def allowed_label_values(kind: str, settings: Mapping[str, Any], classes: Mapping[str, Any]) -> set[int] | None:
    """Raw label values a label file may hold: those the class table maps plus the dataset's "unlabeled"
    values; None = no class table (values are class ids)."""
    if classes.get("lut") is None:
        return None
    if kind == "potsdam":
        return {*datasets.POTSDAM_FINE_TO_COARSE, 255}
    mapped = {v for v, c in enumerate(classes["lut"]) if c >= 0}
    if kind == "directory":
        return mapped | {int(settings.get("ignore_label", 255))}
    return mapped | UNLABELED.get(kind, set())


def _values(values: Iterable[int], limit: int = 10) -> str:
    values = sorted(int(v) for v in values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def geometry_problems(path: str, height: int, width: int, crop_ratio: float | None) -> list[str]:
    """Size problems of an image (h×w as displayed); `crop_ratio` when its five-crops are used too."""
    problems = []
    if min(height, width) < MIN_SIDE:
        problems.append(f"{path}: the image is only {width}x{height} pixels (width x height); images need at "
                        f"least {MIN_SIDE} pixels on each side: remove it or use a larger version")
    elif max(height, width) / min(height, width) > MAX_ASPECT:
        problems.append(f"{path}: extreme aspect ratio {width}x{height} (width x height): the square centre "
                        f"crop would keep under 1/{MAX_ASPECT:g} of it; cut it into pieces or remove it")
    elif crop_ratio is not None and min(int(height * crop_ratio), int(width * crop_ratio)) < MIN_SIDE:
        problems.append(f"{path}: the image ({width}x{height}) is smaller than its five-crops allow: crops of "
                        f"crop_ratio {crop_ratio} would be {int(width * crop_ratio)}x{int(height * crop_ratio)}, "
                        f"under {MIN_SIDE} pixels; remove it, use a larger version, or raise crop_ratio")
    return problems


def sample_problems(image: str, label: str, allowed: set[int] | None, crop_ratio: float | None = None,
                    strict: bool = True) -> tuple[list[str], int]:
    """Problems of one sample (image and optional label), and the number of its label pixels whose value is
    not in `allowed`: a problem when `strict`, else only counted."""
    problems: list[str] = []
    size = None
    try:
        height, width = np.asarray(images.read_image(image)).shape[:2]
        size = (height, width)
        problems += geometry_problems(image, height, width, crop_ratio)
    except UserError as err:
        problems.append(str(err))
    if not label:
        return problems, 0
    try:
        raw = images.read_label(label)
    except UserError as err:
        return [*problems, str(err)], 0
    if size is not None and raw.shape[:2] != size:
        problems.append(f"{label}: the label map is {raw.shape[1]}x{raw.shape[0]} (width x height) but its image "
                        f"{Path(image).name} is {size[1]}x{size[0]} as displayed (after its EXIF rotation, if "
                        "any): labels must match their image pixel for pixel; redraw or fix the label")
    values = np.unique(raw)
    if allowed is None:
        return problems, 0
    bad = [v for v in values.tolist() if v not in allowed]
    pixels = int(np.isin(raw, bad).sum()) if bad else 0
    if bad and strict:
        problems.append(f"{label}: label values {_values(bad)} ({pixels} pixels) are neither classes nor the "
                        f"unlabeled value (allowed: {_values(sorted(allowed), 12)}); fix the label map, or for "
                        "a 'directory' dataset extend class_names or set ignore_label")
    return problems, pixels


def check_samples(kind: str, settings: Mapping[str, Any], splits: Mapping[str, Sequence[Mapping[str, Any]]],
                  classes: Mapping[str, Any], threads: int = 1) -> list[str]:
    """Read every distinct image and label of the index once; the problems found, in index order."""
    allowed = allowed_label_values(kind, settings, classes)
    strict = kind != "potsdam"  # Potsdam: other values become class 0, as in the official code
    ratio = float(settings.get("crop_ratio", 0.5))
    jobs: dict[tuple[str, str], float | None] = {}
    for split, rows in splits.items():
        for row in rows:
            key = (str(row["image"]), str(row.get("label") or ""))
            crop = ratio if (split == "train" and settings.get("five_crop")) else None
            if jobs.get(key) is None:
                jobs[key] = crop
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda item: sample_problems(item[0][0], item[0][1], allowed, item[1], strict),
                                jobs.items()))
    log.info("checked %d images%s", len(jobs), " and their labels" if any(k[1] for k in jobs) else "")
    counted = sum(n for _, n in results)
    if counted:
        log.warning("%d label pixels hold values other than %s; they count as class 0 (as in the official "
                    "code)", counted, _values(sorted(allowed or ())))
    return [p for problems, _ in results for p in problems]


def checked_index(kind: str, settings: Mapping[str, Any], threads: int = 1
                  ) -> tuple[dict[str, list[dict]], dict]:
    """The index of a dataset (five-crops included), after checking every file it uses.

    Raises one `UserError` listing every problem: the dataset adapter's own (layout, missing files), or all
    bad files at once.
    """
    settings = dict(settings)
    if kind == "directory" and settings.get("root") and Path(settings["root"]).is_dir():
        problems = datasets.directory_problems(settings["root"])
        if problems:
            raise _problems_error(kind, settings, problems)
    try:
        splits, classes = datasets.build_index(kind, {**settings, "five_crop": False})
    except (FileNotFoundError, ValueError) as err:  # the adapters' errors name the file or setting and the fix
        raise UserError(str(err)) from err
    for split in datasets.SPLITS:
        if not splits.get(split):
            raise UserError(f"the '{split}' split of the '{kind}' dataset at {settings.get('root')} has no "
                            f"samples: add images there ({datasets.README_HINT})")
    problems = check_samples(kind, settings, splits, classes, threads)
    if problems:
        raise _problems_error(kind, settings, problems)
    if settings.get("five_crop"):
        ratio = float(settings.get("crop_ratio", 0.5))
        splits["train"] = datasets.five_crop_rows(splits["train"], ratio, threads=threads)
        log.info("five-crop (ratio %s): %d train crops", ratio, len(splits["train"]))
    return splits, classes


def write_index(kind: str, settings: Mapping[str, Any], out_dir: Path, threads: int = 1) -> dict[str, int]:
    """Write `{out_dir}/{train,val}.csv` and `classes.json` after checking every file they use (a `UserError`
    lists all bad files); returns the number of samples per split."""
    splits, classes = checked_index(kind, settings, threads=threads)
    counts = {}
    for split in SPLITS:
        rows = splits.get(split, [])
        if not rows:
            raise UserError(f"dataset kind '{kind}' produced no samples for split '{split}' "
                            f"(root {settings.get('root')}): check the dataset root and its layout")
        write_csv(out_dir / f"{split}.csv", index_frame(rows))
        counts[split] = len(rows)
    # Written last: its presence marks a complete index.
    write_json(out_dir / "classes.json", classes)
    return counts


def _problems_error(kind: str, settings: Mapping[str, Any], problems: list[str]) -> UserError:
    if len(problems) > SHOWN:  # the message shows the first SHOWN: the job's log gets them all
        for line in problems:
            log.error("%s", line)
    return UserError(f"{len(problems)} problem{'s' * (len(problems) != 1)} with the files of the '{kind}' "
                     f"dataset at {settings.get('root')} (nothing was written); fix or remove these files and "
                     "rerun (the workflow notices the change):\n"
                     + "\n".join(first_lines(problems, SHOWN))
                     + (" (all of them in the job's log)" if len(problems) > SHOWN else ""))


# ---------------------------------------------------------------------------------------------------------
# Start-up checks (the workflow calls these while it builds the DAG)


def _walk(path: Path) -> Iterable[tuple[str, os.stat_result]]:
    if path.is_file():
        yield path.name, path.stat()
        return
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                full = os.path.join(folder, name)
                yield os.path.relpath(full, path.parent), os.stat(full)


def manifest(kind: str, settings: Mapping[str, Any]) -> str:
    """A short summary of the dataset's tracked files: count, bytes and a digest of (name, size, mtime).

    Changes when a file is added, removed, renamed, edited or touched. The demo (rendered by `prepare` from
    its settings) has none. Names are hashed as UTF-8 with surrogate escapes, so any file name works.
    """
    if kind not in TRACKED or not settings.get("root"):
        return ""
    root = Path(settings["root"])
    digest, count, size = hashlib.sha256(), 0, 0
    for sub in TRACKED[kind]:
        if not (root / sub).exists():
            continue
        for name, stat in _walk(root / sub):
            digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
            digest.update(f"{stat.st_size} {stat.st_mtime_ns}\n".encode())
            count, size = count + 1, size + stat.st_size
    return f"{count} files, {size} bytes, sha256 {digest.hexdigest()[:16]}"


def train_samples(kind: str, settings: Mapping[str, Any]) -> int | None:
    """How many training samples `prepare` will index, when that is known before it runs (demo: the
    generator's n_train; directory: the image files in imgs/train), times 5 with five-crop; else None."""
    return split_samples(kind, settings, "train")


def split_samples(kind: str, settings: Mapping[str, Any], split: str) -> int | None:
    """How many samples `prepare` will index in `split` when that is known before it runs (demo: the
    generator's n_train / n_val; directory: the image files in imgs/<split>), training rows times 5 with
    five-crop; else None."""
    if kind == "demo":
        n = int(settings.get("generator", {}).get(f"n_{split}", 0))
    elif kind == "directory" and settings.get("root"):
        found = datasets.directory_images(settings["root"], split)
        if found is None:
            return None
        n = sum(len(paths) for paths in found.values())
    else:
        return None
    return n * 5 if split == "train" and settings.get("five_crop") else n


def index_rows(path: str | Path) -> int | None:
    """Rows of an index CSV that `prepare` has written, or None when it does not exist yet."""
    try:
        with open(path, "rb") as f:
            return max(sum(1 for _ in f) - 1, 0)
    except FileNotFoundError:
        return None


def knn_problem(dataset: str, kind: str, settings: Mapping[str, Any], knn_k: int,
                samples: int | None = None) -> str | None:
    """The message when the training split is too small for `knn_k` neighbours per sample, else None.
    `samples`: the split's size when its index exists; else it is counted from the files where possible."""
    n = samples if samples is not None else train_samples(kind, settings)
    if n is None or n > knn_k:
        return None
    crops = " (five-crops counted)" if settings.get("five_crop") else ""
    return (f"dataset '{dataset}': its train split has {n} samples{crops} but knn_k is {knn_k}; the nearest-"
            f"neighbour table needs at least knn_k + 1 = {knn_k + 1} training samples: add images, or lower "
            f"knn_k in the preset or in datasets.{dataset}.overrides")
