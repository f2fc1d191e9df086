"""Minibatch spherical K-Means: seeding, updates, and recovery of well-separated clusters."""

import numpy as np
import torch
import torch.nn.functional as F

from stego_steps import kmeans, metrics
from stego_steps.store import FeatureStore


def test_minibatch_step_moves_centroids_to_the_mean_direction():
    centroids = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=1)
    counts = torch.zeros(2)
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]]), dim=1)
    kmeans.minibatch_step(centroids, counts, x)
    assert counts.tolist() == [2.0, 1.0]
    # First update with count n: the centroid becomes the normalised mean of its points.
    torch.testing.assert_close(centroids[0], F.normalize(x[:2].mean(0), dim=0))
    torch.testing.assert_close(centroids[1], x[2])


def test_kmeans_pp_picks_distinct_points():
    x = F.normalize(torch.eye(4).repeat(10, 1) + 0.01 * torch.randn(40, 4, generator=torch.Generator().manual_seed(0)),
                    dim=1)
    seeds = kmeans.kmeans_pp(x, 4, torch.Generator().manual_seed(1))
    assert len(set(seeds.argmax(1).tolist())) == 4


def test_kmeans_recovers_the_classes_of_a_synthetic_store(store_path):
    with FeatureStore(store_path) as store:
        centroids, score = kmeans.spherical_kmeans(store, lambda f: f, 3, iterations=20, batch_images=4,
                                                    init_images=8, n_init=2, seed=0)
        feats = store.batch(np.arange(store.n))
        labels = store.read("label")[:, ::4, ::4]  # label grid → feature grid (stride 4)
    assert centroids.shape == (3, store.dim)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    pred = (kmeans.pixel_vectors(feats) @ torch.from_numpy(centroids).T).argmax(1).reshape(labels.shape)
    s = metrics.scores(metrics.confusion(pred.numpy(), labels, 3, 3))
    assert s["pixel_accuracy"] > 99.0 and score > 0.9


def test_same_seed_same_centroids(store_path):
    with FeatureStore(store_path) as store:
        kw = dict(iterations=5, batch_images=4, init_images=8, n_init=1)
        a, _ = kmeans.spherical_kmeans(store, lambda f: f, 3, seed=3, **kw)
        b, _ = kmeans.spherical_kmeans(store, lambda f: f, 3, seed=3, **kw)
    np.testing.assert_array_equal(a, b)
