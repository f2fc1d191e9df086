"""Stage `cluster`: minibatch spherical (cosine) K-Means on the codes of the training set.

With `--head` the vectors are the head's codes (eval mode, no dropout); without it, the raw backbone
features — the paper's K-Means baseline. Every pixel of the low-resolution maps is one vector; vectors and
centroids live on the unit sphere. Initialisation is k-means++ on a sample, updates follow Sculley's minibatch
K-Means (per-centroid learning rate 1/count), and the best of `n_init` seeded restarts is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stego_steps.artifacts import write_npy
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.errors import cli
from stego_steps.head import load_head
from stego_steps.kmeans import Embed, spherical_kmeans
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--features", type=Path, required=True, help="train split feature store (.h5)")
    parser.add_argument("--head", type=Path, help="trained head; omit to cluster the backbone features")
    parser.add_argument("--settings", type=settings_arg, required=True,
                        help="JSON: extra_clusters, iterations, batch_images, init_images, n_init, seed")
    parser.add_argument("--out", type=Path, required=True, help="centroids [K,D] (.npy)")
    args = parse_stage_args(parser, argv)
    device = args.device
    s = args.settings
    with FeatureStore(args.features, device=device) as store:
        embed: Embed = (load_head(args.head, device, store.attrs.get("backbone_id")) if args.head
                        else (lambda f: f))
        # K = number of classes (+ optional extra clusters); the class count comes with the features.
        n_clusters = int(store.attrs["n_classes"]) + s.get("extra_clusters", 0)
        if not store.has("label"):  # no labels to check it against: say where the count came from
            log.info("%d clusters: the number of class names in the config (%d) plus extra_clusters (%d); "
                     "without labels nothing chose it", n_clusters, int(store.attrs["n_classes"]),
                     s.get("extra_clusters", 0))
        centroids, score = spherical_kmeans(
            store, embed, n_clusters, iterations=s["iterations"], batch_images=s["batch_images"],
            init_images=s["init_images"], n_init=s["n_init"], seed=s["seed"], device=device)
    log.info("%d centroids of dim %d, mean cosine %.4f", *centroids.shape, score)
    write_npy(args.out, centroids)


if __name__ == "__main__":
    cli(main)
