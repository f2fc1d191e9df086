"""Per-pixel label maps of the evaluation split: the segmentation of a shard (raw argmax and the dense CRF's
refinement, resumable image by image), the segment stage's shard files and the colours pictures give labels.

Imports no torch at load time: the stages that only read the maps start without it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import matplotlib
import numpy as np

from stego_steps import testhooks
from stego_steps.artifacts import fingerprint, open_h5, other_counts  # noqa: F401 (the segment stage's)
from stego_steps.cli import progress
from stego_steps.crf import CRF_DEFAULTS, refine_labels
from stego_steps.errors import UserError

if TYPE_CHECKING:  # the evaluate stage reads shards without torch
    import torch

    from stego_steps.head import LogProbs

log = logging.getLogger(__name__)


def raw_and_crf(items: Iterable[tuple[np.ndarray, torch.Tensor | np.ndarray]], *, workers: int,
                timeout_s: float = 600) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The argmax map of each `(image, log_probs [C,H,W])` before and after the dense CRF, in input order; the
    CRFs run on `workers` processes, so `items` is read ahead of the results."""
    raws: deque[np.ndarray] = deque()

    def pending() -> Iterator[tuple[np.ndarray, torch.Tensor | np.ndarray]]:
        for image, log_probs in items:
            raws.append(np.asarray(log_probs.argmax(0)))
            yield image, log_probs

    for refined in refine_labels(pending(), workers=workers, timeout_s=timeout_s):
        yield raws.popleft(), refined


def segment(embeddings: Callable[[int], torch.Tensor], images: h5py.Dataset, rows: range,
            to_log_probs: LogProbs, *, crf_workers: int, crf_timeout_s: float = 600,
            partial: Path | None = None, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Raw and CRF-refined argmax maps [len(rows), H, W] (uint8). With `partial`, every finished image is
    written there at once and a partial file of the same `key` is resumed from."""
    size = images.shape[1]
    raw = np.zeros((len(rows), size, size), np.uint8)
    crf = np.zeros_like(raw)
    if not len(rows):
        return raw, crf
    from stego_steps.head import log_probs_at  # torch: only where maps are computed

    with contextlib.ExitStack() as stack:
        f = None if partial is None else stack.enter_context(open_partial(partial, key, raw.shape))
        done = 0 if f is None else int(f.attrs["done"])
        if done:
            raw[:done], crf[:done] = f["raw"][:done], f["crf"][:done]
            log.info("resuming %s at image %d of %d", partial, done, len(rows))
        items = ((images[rows[j]], log_probs_at(embeddings(rows[j]), size, to_log_probs))
                 for j in progress(range(done, len(rows)), desc="segment", initial=done, total=len(rows)))
        maps = raw_and_crf(items, workers=crf_workers, timeout_s=crf_timeout_s)
        for j, (raw_map, crf_map) in enumerate(maps, start=done):
            raw[j], crf[j] = raw_map, crf_map
            if f is not None:
                f["raw"][j], f["crf"][j] = raw[j], crf[j]
                f.attrs["done"] = j + 1
                f.flush()
                testhooks.reached("segment:shard")
    return raw, crf


def open_partial(path: Path, key: str, shape: tuple[int, ...]) -> h5py.File:
    """The partial maps of a shard, open for appending: the existing file when it was written for the same
    inputs (`key`) and shape, else a new one (with `done` = 0)."""
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                resumable = f.attrs.get("fingerprint") == key and f["crf"].shape == shape
        except (OSError, KeyError):  # killed before its header was written
            resumable = False
        if not resumable:
            log.warning("discarding %s: written from other inputs or unreadable", path)
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(path, "a")
    if "crf" not in f:
        for name in ("raw", "crf"):
            f.create_dataset(name, shape, np.uint8, chunks=(1, *shape[1:]))
        f.attrs.update(fingerprint=key, done=0)
    return f


def shard_key(probe: str, rows: range, source: np.ndarray, *weights: Path) -> str:
    """What a shard's maps are computed from: the probe, its rows, the embeddings' source rows (the codes,
    or the pooled features of a baseline), the probe's weight files and the CRF parameters."""
    digest = hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()
    files = [hashlib.sha256(Path(w).read_bytes()).hexdigest() for w in weights]
    return fingerprint(probe, rows.start, rows.stop, digest, files, CRF_DEFAULTS)


def shard_ranges(paths: list[Path], probe: str, n: int) -> list[tuple[int, int, Path]]:
    """The (start, stop, path) of every shard of one probe, in image order, checked to cover images 0..n-1
    exactly; reads only the shards' attributes."""
    shards = []
    for path in paths:
        with open_h5(path, "segment shard") as f:
            if f.attrs["probe"] == probe:
                shards.append((int(f.attrs["start"]), int(f.attrs["stop"]), Path(path)))
    shards.sort(key=lambda s: s[0])
    covered = [i for start, stop, _ in shards for i in range(start, stop)]
    if covered != list(range(n)):
        raise UserError(f"segment shards of probe '{probe}' do not cover images 0..{n - 1} exactly: "
                         f"{[(s[0], s[1]) for s in shards]}; rerun the segment stage")
    return shards


def iter_predictions(paths: list[Path], probe: str, n: int,
                     images_per_read: int = 64) -> Iterator[tuple[range, np.ndarray, np.ndarray]]:
    """The raw and CRF maps of one probe in image order, `images_per_read` images at a time at most:
    (rows, raw [len(rows),H,W], crf [len(rows),H,W]). Holds one block, whatever the number of images."""
    for start, stop, path in shard_ranges(paths, probe, n):
        with open_h5(path, "segment shard") as f:
            for a in range(0, stop - start, images_per_read):
                b = min(a + images_per_read, stop - start)
                yield range(start + a, start + b), f["raw"][a:b], f["crf"][a:b]


def read_predictions(paths: list[Path], probe: str, n: int) -> dict[bool, np.ndarray]:
    """Stitch the shards of one probe back into [N,H,W] maps for raw (False) and CRF (True)."""
    blocks = list(iter_predictions(paths, probe, n, images_per_read=max(n, 1)))
    return {False: np.concatenate([b[1] for b in blocks]), True: np.concatenate([b[2] for b in blocks])}


def palette(n: int) -> np.ndarray:
    """n distinct colours (uint8 [n,3]), the same for the same n: tab10 / tab20, then tab20b and tab20c."""
    names = ("tab10",) if n <= 10 else ("tab20", "tab20b", "tab20c")
    colours = np.concatenate([np.asarray(matplotlib.colormaps[c].colors)[:, :3] for c in names])
    if n > len(colours):
        colours = matplotlib.colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[:, :3]
    return (colours[:n] * 255).round().astype(np.uint8)
