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
import logging
import os
from pathlib import Path

import h5py

from stego_steps.artifacts import atomic_path, open_h5, read_npy
from stego_steps.cli import base_parser, parse_stage_args
from stego_steps.errors import cli
from stego_steps.label_maps import other_counts, segment, shard_key
from stego_steps.protocol import BASELINE_PROBES, PROBES, SUPERVISED_PROBES
from stego_steps.store import FeatureStore, shard_range

log = logging.getLogger(__name__)


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
    # torch only here: the CRF's spawned workers import this module, and start in a fraction of a second
    # without it.
    import torch

    from stego_steps.head import cluster_log_probs, linear_log_probs, load_probe

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
