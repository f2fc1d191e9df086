"""Feature extraction: run the frozen backbone once over a split and cache its features in HDF5.

The store's layout is defined in `stego_steps.store`. The caching is lossless for training because the
backbone is frozen and no augmentation reaches the loss (up to the store's rounding: float16, or int8 codes
with a per-token scale). `precision: bfloat16` runs the backbone under bfloat16 autocast; images are decoded
and resized in DataLoader workers (pinned memory on a GPU) and a writer thread writes to HDF5 while the next
batch is computed. Writing goes to `{out}.partial` with a progress counter;
a killed run resumes from it. Large splits are extracted in shards (contiguous slices of the index, one job
each) and gathered into one store (`store.gather`: the stage's `gather` command).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from stego_steps import __version__, images, store, testhooks
from stego_steps.artifacts import fingerprint, other_counts
from stego_steps.backbones import (  # noqa: F401 (PRECISIONS re-exported)
    PRECISIONS,
    backbone_id,
    build_backbone,
    features_of,
    to_float,
)
from stego_steps.cli import progress
from stego_steps.devices import select_device
from stego_steps.errors import UserError
from stego_steps.index import row_box
from stego_steps.store import shard_range

log = logging.getLogger(__name__)


class IndexDataset(Dataset):
    """Samples of an index after the official deterministic transform."""

    def __init__(self, index: pd.DataFrame, res: int, lut: list[int] | None, jpeg_quality: int | None,
                 with_labels: bool) -> None:
        self.index, self.res, self.lut = index.reset_index(drop=True), res, lut
        self.jpeg_quality, self.with_labels = jpeg_quality, with_labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        row = self.index.iloc[i]
        box = row_box(row)
        img = images.transform_image(images.read_image(row["image"]), self.res, box, self.jpeg_quality)
        item = {"image": torch.from_numpy(img)}
        if self.with_labels:
            raw = images.apply_lut(images.read_label(row["label"]), self.lut)
            item["label"] = torch.from_numpy(images.transform_label(raw, self.res, box))
        return item


class Writer:
    """Writes batches to the open store in a background thread, so that HDF5 writes (and int8 rounding)
    overlap the next forward pass. At most `depth` batches wait; an error in the thread is raised by the next
    `put` or by `close`."""

    def __init__(self, write: Callable[..., None], depth: int = 2) -> None:
        self._write, self._queue = write, queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as err:  # raised in the main thread
                    self._error = err
            self._queue.task_done()

    def put(self, *item: object) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def wait(self) -> None:
        """Block until every batch put so far is written."""
        self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def extract(index: pd.DataFrame, classes: dict, out: Path, *, backbone: str, weights: str | None, res: int,
            evaluation: bool, jpeg_quality: int | None = None, batch_size: int = 16, workers: int = 0,
            device: str = "auto", seed: int = 0, split: str = "", shard: int = 0, n_shards: int = 1,
            store_dtype: str = "float16", precision: str = "float32", layers: list[int] | None = None) -> None:
    """Write the feature store of one split, or of one shard of it (resuming a partial one written from the
    same inputs)."""
    with_labels = bool((index["label"] != "").all())  # of the whole split: an empty shard has the same datasets
    rows = shard_range(len(index), shard, n_shards, align=batch_size)
    index = index.iloc[rows.start:rows.stop]
    device = select_device(device)
    net = build_backbone(backbone, weights=weights, seed=seed, layers=layers).to(device)
    if res % net.multiple:
        raise UserError(f"resolution {res} is not a multiple of backbone {backbone}'s stride {net.multiple}; "
                         f"pick a multiple in the preset")
    grid = res // net.stride
    # Batch composition and compute threads change the features' last bits, so they are part of the key.
    settings = dict(backbone=backbone, weights=weights, res=res, evaluation=evaluation,
                    jpeg_quality=jpeg_quality, seed=seed, batch_size=batch_size, store_dtype=store_dtype,
                    precision=precision, torch_threads=torch.get_num_threads() if device == "cpu" else None,
                    **({"layers": layers} if layers else {}))
    key = fingerprint(index.to_csv(index=False), settings)
    partial = out.with_name(out.name + ".partial")
    n = len(index)
    if partial.exists():
        try:
            with h5py.File(partial, "r") as f:
                resumable = f.attrs.get("fingerprint") == key
        except OSError:  # a file killed before its header was written
            resumable = False
        if not resumable:
            log.warning("discarding %s: written from other inputs or unreadable", partial)
            partial.unlink()
    # One shard count per split: an earlier `extract_shards`' files go before this shard is written, since the
    # disk check counted them as space that the extraction frees.
    for stale in other_counts(out):
        stale.unlink(missing_ok=True)
        log.info("removed %s, a shard of another extract_shards", stale)
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(partial, "a") as f:
        if "feats" not in f:
            store.create(f, store.layout(n, net.dim, grid, res, evaluation=evaluation, labelled=with_labels,
                                         dtype=store_dtype))
            f.attrs.update(fingerprint=key, done=0, backbone=backbone, res=res, stride=net.stride, split=split,
                           n_classes=len(classes["names"]), class_names=json.dumps(classes["names"]),
                           start=rows.start, stop=rows.stop, backbone_id=backbone_id(backbone, weights, seed, layers),
                           producer=json.dumps({"stage": "extract", "package_version": __version__, **settings}))
            # UTF-8 bytes: any file name is an id (numpy's "S" alone would take ASCII only).
            f.create_dataset("ids", data=np.array([i.encode() for i in index["id"].astype(str)], dtype="S"))
        done = int(f.attrs["done"])
        if done:
            log.info("resuming %s at sample %d of %d", partial, done, n)
        data = IndexDataset(index.iloc[done:], res, classes.get("lut"), jpeg_quality, with_labels)
        cuda = torch.device(device).type == "cuda"
        loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False, pin_memory=cuda)

        def write(start: int, feats: torch.Tensor, flips: torch.Tensor | None, batch: dict) -> None:
            stop = start + len(feats)
            store.write_features(f, "feats", start, feats)
            f["pooled"][start:stop] = feats.mean(dim=(2, 3)).numpy()
            if with_labels:
                f["label"][start:stop] = batch["label"].numpy()
            if flips is not None:
                store.write_features(f, "feats_flip", start, flips)
                f["image"][start:stop] = batch["image"].numpy()
            f.attrs["done"] = stop
            f.flush()

        writer = Writer(write)
        try:
            for batch in progress(loader, desc=f"extract {split}", total=len(loader)):
                imgs = to_float(batch["image"])
                feats = features_of(net, imgs, device, precision)
                flips = features_of(net, imgs.flip(-1), device, precision) if evaluation else None
                writer.put(done, feats, flips, batch)
                done += len(imgs)
                if testhooks.pauses_at("extract:shard"):
                    writer.wait()  # the batch is in the partial store before the pause
                    testhooks.reached("extract:shard")
        finally:
            writer.close()
    os.replace(partial, out)
    log.info("wrote %s: %d samples, %d×%d×%d features", out, n, net.dim, grid, grid)
