"""Stage `segment`: per-pixel class maps for the evaluation split, before and after the dense CRF.

For one probe and one shard of images: take the flip-averaged embedding (head code, or backbone features
for the baselines), upsample it bilinearly to the label resolution, turn it into log-probabilities —
`log_softmax(2·cos(x, centroids))` for cluster probes, `log_softmax(linear(x))` for linear probes — and
write the argmax (`raw`) and the argmax after the CRF (`crf`), with the number of clusters (or classes) K the
maps range over (attr `n_clusters`).

The CRF is the slow part (seconds per image): each image's maps go to `{out}.partial` as soon as its CRF is
done, tied to the shard's inputs by a fingerprint, and a killed shard resumes after its last finished image.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import torch

from stego_steps import testhooks
from stego_steps.artifacts import atomic_path, fingerprint, open_h5, read_npy
from stego_steps.cli import base_parser, parse_stage_args, progress
from stego_steps.crf import CRF_DEFAULTS, refine_labels
from stego_steps.errors import cli
from stego_steps.head import (
    BASELINE_PROBES,
    PROBES,
    SUPERVISED_PROBES,
    LogProbs,
    cluster_log_probs,
    linear_log_probs,
    load_probe,
    log_probs_at,
)
from stego_steps.store import FeatureStore, shard_range

log = logging.getLogger(__name__)

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
    with contextlib.ExitStack() as stack:
        f = None if partial is None else stack.enter_context(open_partial(partial, key, raw.shape))
        done = 0 if f is None else int(f.attrs["done"])
        if done:
            raw[:done], crf[:done] = f["raw"][:done], f["crf"][:done]
            log.info("resuming %s at image %d of %d", partial, done, len(rows))

        def items() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for j in progress(range(done, len(rows)), desc="segment", initial=done, total=len(rows)):
                lp = log_probs_at(embeddings(rows[j]), size, to_log_probs)
                raw[j] = lp.argmax(0)
                yield images[rows[j]], lp

        # Results come in input order, so image j's raw map is set before its CRF result arrives.
        for j, labels in enumerate(refine_labels(items(), workers=crf_workers, timeout_s=crf_timeout_s),
                                   start=done):
            crf[j] = labels
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


# The workflow's shard files: `{probe}.{i}-of-{n}.h5` (Snakemake's scatter items), and their partial files.
SHARD_NAME = re.compile(r"(?P<probe>[^.]+)\.(?P<i>\d+)-of-(?P<n>\d+)\.h5(\.partial)?")


def other_counts(out: Path) -> list[Path]:
    """The files beside shard `out` of the same probe cut into another number of shards: left by an earlier
    `segment_shards`, they would stand beside this count's shards for anything that lists the folder."""
    this = SHARD_NAME.fullmatch(out.name)
    if this is None or not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir()
                  if (m := SHARD_NAME.fullmatch(p.name)) and m["probe"] == this["probe"]
                  and int(m["n"]) != int(this["n"]))


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--features", type=Path, required=True, help="evaluation split feature store (.h5)")
    parser.add_argument("--probe", choices=PROBES, required=True)
    parser.add_argument("--codes", type=Path, help="head codes from `predict` (cluster, linear)")
    parser.add_argument("--centroids", type=Path, help="centroids (cluster, backbone_kmeans)")
    parser.add_argument("--linear", type=Path, help="linear probe weights (linear, backbone_linear)")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--n-shards", type=int, default=1)
    parser.add_argument("--crf-timeout", type=float, default=600.0, help="seconds per image before giving up")
    parser.add_argument("--out", type=Path, required=True)
    args = parse_stage_args(parser, argv)
    torch.set_num_threads(1)  # the CRF workers take the job's threads
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(FeatureStore(args.features, max_memory_gb=0))
        if args.probe in BASELINE_PROBES:
            flips = stack.enter_context(FeatureStore(args.features, key="feats_flip", max_memory_gb=0))

            def embeddings(i: int) -> torch.Tensor:
                return 0.5 * (store.batch([i]) + flips.batch([i]).flip(-1))
        else:
            codes = stack.enter_context(open_h5(args.codes, "codes"))["codes"]

            def embeddings(i: int) -> torch.Tensor:
                return torch.from_numpy(codes[i:i + 1])
        if args.probe in SUPERVISED_PROBES:
            probe = load_probe(args.linear)
            to_log_probs, n_clusters = linear_log_probs(probe), probe.out_channels
        else:
            centroids = read_npy(args.centroids, "centroids")
            to_log_probs, n_clusters = cluster_log_probs(centroids), len(centroids)
        rows = shard_range(store.n, args.shard, args.n_shards)
        source = (store.dataset("pooled") if args.probe in BASELINE_PROBES else codes)[rows.start:rows.stop]
        weights = args.linear if args.probe in SUPERVISED_PROBES else args.centroids
        partial = args.out.with_name(args.out.name + ".partial")
        raw, crf = segment(embeddings, store.dataset("image"), rows, to_log_probs,
                           crf_workers=args.threads, crf_timeout_s=args.crf_timeout,
                           partial=partial, key=shard_key(args.probe, rows, source, weights))
    with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("raw", data=raw, compression="lzf")
        f.create_dataset("crf", data=crf, compression="lzf")
        f.attrs.update(start=rows.start, stop=rows.stop, probe=args.probe, n_clusters=n_clusters)
    if partial.exists():
        os.remove(partial)
    for stale in other_counts(args.out):  # one shard count per probe and folder
        stale.unlink(missing_ok=True)
        log.info("removed %s, a shard of another segment_shards", stale)
    log.info("segmented images %d..%d with the %s probe", rows.start, rows.stop, args.probe)


if __name__ == "__main__":
    cli(main)
