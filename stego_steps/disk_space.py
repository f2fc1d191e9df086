"""Disk space for the feature stores: the samples per split and the size of each store, and the refusal to
start when the disk cannot hold them (the `plan` stage and the workflow's start-up call these).

Two checks. At start-up (the workflow's `onstart`, before the first job) `check_request` sums every store
that the requested targets will create — all splits, every feature key, the five-crop and ablation stores —
minus what of them is already on disk, and refuses when that sum does not fit. Then the `plan` job of each
store, once `prepare` has counted its samples, checks that store alone (`check_space`).

Bytes per store: the uncompressed size of every dataset of the store's layout (`stego_steps.store.layout`),
HDF5 overhead aside; labels and images are written compressed, so their sizes are upper bounds.

The stores go to one folder; its free space is read from the nearest existing parent. Stores and their shard
files (or resumable `.partial` files) already in that folder are replaced by the extraction, so their bytes
count as free. The run is refused when `needed · margin > free`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stego_steps import store
from stego_steps.backbone_specs import backbone_info
from stego_steps.errors import UserError
from stego_steps.index import is_labelled, read_index

log = logging.getLogger(__name__)

MARGIN = 1.1  # needed × margin must fit: HDF5 overhead, logs and the small artifacts of the later stages


class InsufficientSpace(UserError):
    """The feature stores would not fit on the disk."""


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Size of one split's feature store."""

    split: str
    samples: int
    res: int
    stride: int
    channels: int
    evaluation: bool
    labelled: bool
    dtype: str = "float16"

    @property
    def grid(self) -> int:
        return self.res // self.stride

    @property
    def parts(self) -> dict[str, int]:
        """Bytes of every dataset of the store."""
        arrays = store.layout(self.samples, self.channels, self.grid, self.res, evaluation=self.evaluation,
                              labelled=self.labelled, dtype=self.dtype)
        return {name: a.nbytes for name, a in arrays.items()}

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())


def index_summary(path: str | Path) -> tuple[int, bool]:
    """(samples, labelled) of an index CSV; a split is labelled when every row has a label file."""
    frame = read_index(path)
    return len(frame), is_labelled(frame)


def split_plan(split: str, samples: int, labelled: bool, settings: Mapping[str, Any]) -> SplitPlan:
    """The store of one split from its sample count and its `extract` settings (backbone, res, evaluation)."""
    info = backbone_info(settings["backbone"], settings.get("layers"))
    res, stride = int(settings["res"]), int(info["stride"])
    if res % info["input_multiple"]:
        raise UserError(f"{split}: resolution {res} is not a multiple of backbone {settings['backbone']}'s "
                         f"stride {info['input_multiple']}; pick a multiple in the preset (train_res / eval_res)")
    return SplitPlan(split=split, samples=samples, res=res, stride=stride, channels=int(info["dim"]),
                     evaluation=bool(settings["evaluation"]), labelled=labelled,
                     dtype=settings.get("store_dtype", "float16"))


def make_plan(indexes: Mapping[str, str | Path], settings: Mapping[str, Mapping[str, Any]]) -> list[SplitPlan]:
    """One SplitPlan per split of `indexes` (split → index CSV), with `settings[split]` its extract settings."""
    missing = sorted(set(indexes) - set(settings))
    if missing:
        raise UserError(f"no extract settings for split(s) {', '.join(missing)}")
    return [split_plan(split, *index_summary(path), settings[split]) for split, path in indexes.items()]


def existing_parent(path: str | Path) -> Path:
    """`path` itself or its nearest existing parent (the folder whose disk the stores will land on)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


def free_bytes(path: str | Path) -> tuple[Path, int]:
    """(the existing folder that was measured, its free bytes)."""
    where = existing_parent(path)
    return where, int(shutil.disk_usage(where).free)


def reclaimable_bytes(store_dir: str | Path, splits: list[str]) -> int:
    """Bytes of the stores (and partial stores) already in `store_dir` that the extraction replaces: the
    gathered `{split}.h5` and the shard files `{split}/{shard}.h5` it points at."""
    total = 0
    for split in splits:
        paths = [Path(store_dir) / f"{split}.h5", Path(store_dir) / f"{split}.h5.partial",
                 *(Path(store_dir) / split).glob("*.h5"), *(Path(store_dir) / split).glob("*.h5.partial")]
        total += sum(path.stat().st_size for path in paths if path.is_file())
    return total


def human(n: float) -> str:
    """Bytes in decimal units (1 GB = 10⁹ bytes), like `df -H`."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_plan(plans: list[SplitPlan], *, title: str, store_dir: str | Path, measured: Path, free: int,
                reclaimable: int = 0, margin: float = MARGIN) -> str:
    """The human-readable table: one line per split, the total and the free disk."""
    header = ("split", "samples", "resolution", "grid", "channels", "features", "bytes", "")
    lines = [header]
    for p in plans:
        lines.append((p.split, f"{p.samples:,}", f"{p.res}×{p.res}", f"{p.grid}×{p.grid}", str(p.channels),
                      p.dtype, f"{p.bytes:,}", f"({human(p.bytes)})"))
    total = sum(p.bytes for p in plans)
    lines.append(("total", f"{sum(p.samples for p in plans):,}", "", "", "", "", f"{total:,}", f"({human(total)})"))
    widths = [max(len(row[k]) for row in lines) for k in range(len(header))]
    aligned = ["  ".join(cell.rjust(w) if k in (1, 4, 6) else cell.ljust(w)
                         for k, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
               for row in lines]
    rule = "-" * max(len(line) for line in aligned)
    out = [title, f"feature stores in {store_dir}", "", aligned[0], rule, *aligned[1:-1], rule, aligned[-1], ""]
    out.append(f"free disk: {free:,} bytes ({human(free)}) at {measured}")
    if reclaimable:
        out.append(f"  + {reclaimable:,} bytes ({human(reclaimable)}) of stores in {store_dir} that are replaced")
    out.append(f"needed with a {100 * (margin - 1):.0f}% margin: {int(total * margin):,} bytes "
               f"({human(total * margin)})")
    out.append("labels and images are stored compressed: their sizes are upper bounds")
    return "\n".join(out) + "\n"


def check_space(plans: list[SplitPlan], free: int, *, store_dir: str | Path, margin: float = MARGIN) -> None:
    """Raise InsufficientSpace, with the choices that make the stores smaller, when they do not fit."""
    total = sum(p.bytes for p in plans)
    needed = int(total * margin)
    if needed <= free:
        return
    stride = min((p.stride for p in plans), default=16)
    choices = ["fewer images: a smaller image folder, or for cocostuff the 49,629-image list "
               "(`train_list: Coco164kFull_Stuff_Coarse_7`)",
               "no five-crop (`overrides: {five_crop: false}`): 5× fewer training samples"]
    if stride < 16:
        choices.append(f"a /16 backbone (e.g. `overrides: {{backbone: dino_vitb16}}`): {(stride / 16) ** 2:.2g}× "
                       "the feature bytes")
    choices.append("another disk: run from a folder there (`snakemake --directory /big/disk ...`; make relative "
                   "dataset roots absolute)")
    raise InsufficientSpace(
        f"not enough disk for the feature stores: they need {human(needed)} ({needed:,} bytes, {human(total)} "
        f"plus a {100 * (margin - 1):.0f}% margin) in {store_dir}, but only {human(free)} ({free:,} bytes) are "
        "free there. Choices:\n" + "\n".join(f"  - {c};" for c in choices[:-1]) + f"\n  - {choices[-1]}.")


@dataclasses.dataclass(frozen=True)
class RequestedStore:
    """A feature store that the request creates (`{store_dir}/{split}.h5` and its shards) and the bytes of it,
    or of an older version it replaces, already on disk."""

    store_dir: str
    plan: SplitPlan
    existing: int = 0
    five_crop: bool = False

    @property
    def path(self) -> str:
        return f"{self.store_dir}/{self.plan.split}.h5"

    @property
    def needed(self) -> int:
        """The bytes the disk still has to give: the store less what of it (or of the store it replaces) is
        already there."""
        return max(self.plan.bytes - self.existing, 0)


def request_needed(stores: list[RequestedStore], margin: float = MARGIN) -> int:
    """Bytes the request's stores still need, with the margin."""
    return int(sum(s.needed for s in stores) * margin)


def check_request(stores: list[RequestedStore], free: int, *, measured: str | Path, margin: float = MARGIN,
                  unknown: list[str] | None = None) -> None:
    """Raise InsufficientSpace, naming every store and the choices, when the stores of the whole request do
    not fit in `free` bytes together (each may fit alone). `unknown`: stores whose size is known only after
    `prepare` (their `plan` job checks them)."""
    needed = request_needed(stores, margin)
    if needed <= free:
        return
    lines = [f"  {s.path}: {human(s.needed)}" + (f" ({human(s.plan.bytes)}, {human(s.existing)} already there)"
                                                  if s.existing else "")
             for s in sorted(stores, key=lambda s: -s.needed)]
    stride = min(s.plan.stride for s in stores)
    choices = ["free space on that disk",
               "fewer targets or variants in one invocation (e.g. results/<dataset>/miou.csv before the tables: "
               "every variant with other extraction settings, such as ablate_five_crop, has stores of its own)"]
    if any(s.plan.dtype != "int8" for s in stores):
        choices.append("`overrides: {store_dtype: int8}`: half the bytes of float16 features")
    if any(s.five_crop for s in stores):
        choices.append("no five-crop (`overrides: {five_crop: false}`): 5× fewer training samples")
    if stride < 16:
        choices.append(f"a /16 backbone (e.g. `overrides: {{backbone: dino_vitb16}}`): {(stride / 16) ** 2:.2g}× "
                       "the feature bytes")
    choices.append("another results folder on a bigger disk: run from a folder there (`snakemake --directory "
                   "/big/disk ...`; make relative dataset roots absolute)")
    later = (f"\n(not counted: {', '.join(unknown)}, whose sizes are known after `prepare`)" if unknown else "")
    raise InsufficientSpace(
        f"not enough disk for the feature stores of this request: together they need {human(needed)} "
        f"({needed:,} bytes with a {100 * (margin - 1):.0f}% margin) more at {measured}, but only {human(free)} "
        f"({free:,} bytes) are free there. New bytes per store:\n" + "\n".join(lines) + later
        + "\nChoices:\n" + "\n".join(f"  - {c};" for c in choices[:-1]) + f"\n  - {choices[-1]}.")
