"""Minibatch spherical (cosine) K-Means on the pixels of feature or code maps, shared by the `cluster` stage, the
backbone baseline and the calibration's candidate heads.

Every pixel of the low-resolution maps is one vector; vectors and centroids live on the unit sphere.
Initialisation is k-means++ on a sample, updates follow Sculley's minibatch K-Means (per-centroid learning
rate 1/count), and the best of `n_init` seeded restarts is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stego_steps.cli import progress
from stego_steps.errors import UserError
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)

Embed = Callable[[torch.Tensor], torch.Tensor]


def pixel_vectors(maps: torch.Tensor) -> torch.Tensor:
    """[B,D,h,w] → unit vectors [B·h·w, D]."""
    return F.normalize(maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]), dim=1)


def kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding with cosine distance on unit vectors [N,D]."""
    if len(x) < k:
        raise UserError(f"K-Means needs at least {k} vectors to seed {k} clusters, got {len(x)}")
    centroids = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    dist = (1 - x @ centroids[0]).clamp_min(0)
    for _ in range(1, k):
        weights = dist if float(dist.sum()) > 0 else torch.ones_like(dist)
        nxt = x[torch.multinomial(weights.cpu(), 1, generator=g)].squeeze(0)  # CPU generator
        centroids.append(nxt)
        dist = torch.minimum(dist, (1 - x @ nxt).clamp_min(0))
    return torch.stack(centroids)


def minibatch_step(centroids: torch.Tensor, counts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One Sculley update in place: each centroid moves to the running mean of its points, then to the sphere.

    Returns the mean cosine of the batch to its assigned centroids (before the update).
    """
    sims = x @ centroids.T
    best, assign = sims.max(dim=1)
    k = len(centroids)
    n = torch.bincount(assign, minlength=k).to(x.dtype)
    sums = torch.zeros_like(centroids).index_add_(0, assign, x)
    counts += n
    rate = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
    centroids += rate[:, None] * (sums - n[:, None] * centroids)
    centroids.copy_(F.normalize(centroids, dim=1))
    return best.mean()


def spherical_kmeans(store: FeatureStore, embed: Embed, k: int, *, iterations: int, batch_images: int,
                     init_images: int, n_init: int, seed: int, device: str = "cpu") -> tuple[np.ndarray, float]:
    """Best-of-`n_init` centroids [k,D] (unit rows) and their mean cosine on a held sample."""
    g = torch.Generator().manual_seed(seed)

    def vectors(n_images: int) -> torch.Tensor:
        idx = torch.randperm(store.n, generator=g)[: min(n_images, store.n)].numpy()
        with torch.no_grad():
            return pixel_vectors(embed(store.batch(idx).to(device)))

    held_out = vectors(init_images)
    best, best_score = None, -np.inf
    for restart in range(n_init):
        centroids = kmeans_pp(vectors(init_images), k, g)
        counts = torch.zeros(k, device=centroids.device)
        for _ in progress(range(iterations), desc=f"k-means {restart + 1}/{n_init}"):
            minibatch_step(centroids, counts, vectors(batch_images))
        score = float((held_out @ centroids.T).max(dim=1).values.mean())
        log.info("restart %d: mean cosine %.4f, empty clusters %d", restart, score, int((counts == 0).sum()))
        if score > best_score:
            best, best_score = centroids.clone(), score
    return best.cpu().numpy().astype(np.float32), best_score
