"""The feature correlations F that each loss term compares with its shift, sampled from cached training features
the way the train stage samples its batches (anchors, KNN positives, random coordinates, negative permutations),
for the calibration's statistics and the correlation figure."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from stego_steps.batches import BatchSampler
from stego_steps.cli import progress
from stego_steps.loss import TERMS, feature_correlation, negative_perm, random_coords, sample
from stego_steps.store import FeatureStore


def channel_dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Dropout2d as the loss sees it in training (whole channels, survivors scaled by 1/(1-p)), drawn from
    `generator` so that the statistics are reproducible."""
    if p <= 0:
        return x
    keep = (torch.rand(x.shape[0], x.shape[1], 1, 1, generator=generator) >= p).to(x.dtype)
    return x * keep / (1 - p)


def _subsample(values: torch.Tensor, n: int | None, generator: torch.Generator) -> torch.Tensor:
    flat = values.reshape(-1)
    if n is not None and flat.numel() > n:
        flat = flat[torch.randint(flat.numel(), (n,), generator=generator)]
    return flat


def term_correlations(store: FeatureStore, knn: np.ndarray, settings: Mapping, *, batches: int, seed: int,
                      per_batch: int | None = None, dropout: bool = True) -> dict[str, np.ndarray]:
    """F values of every term over `batches` seeded training batches, sampled the way the `train` stage samples
    them: with its channel dropout (`dropout`) and spatial centering; a random subset of `per_batch` values per
    batch and term, or all of them (None)."""
    s = settings
    g = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(knn, min(s["batch_size"], store.n), s["neighbours"], g)
    p = s["dropout"] if dropout else 0.0
    kw = {"spatial_centering": s["spatial_centering"]}
    out: dict[str, list[np.ndarray]] = {t: [] for t in TERMS}
    for _ in progress(range(batches), desc="correlations"):
        anchors, positives = sampler.next()
        f = channel_dropout(store.batch(anchors).float().cpu(), p, g)
        f_pos = channel_dropout(store.batch(positives).float().cpu(), p, g)
        n = len(anchors)
        coords1, coords2 = random_coords(n, s["samples"], g), random_coords(n, s["samples"], g)
        perms = [negative_perm(n, g) for _ in range(s["negatives"])]
        fa, fp = sample(f, coords1), sample(f_pos, coords2)
        negatives = torch.cat([feature_correlation(fa, sample(f[perm], coords2), **kw) for perm in perms])
        for term, values in (("self", feature_correlation(fa, fa, **kw)), ("knn", feature_correlation(fa, fp, **kw)),
                             ("random", negatives)):
            out[term].append(_subsample(values, per_batch, g).float().numpy())
    return {t: np.concatenate(v) for t, v in out.items()}
