"""Stage `calibrate`: label-free choice of the loss shifts from the statistics of the feature correlation.

The shift b of each loss term (self, KNN, random) decides which point pairs attract (F > b) and which repel.
The released shifts were tuned by hand for DINO on each dataset and do not transfer to other backbones or
data, whose correlations have other scales. This stage samples training batches exactly as the `train` stage
does (anchors, KNN positives drawn from ranks 1..k, random negatives, S×S random points, the loss's channel
dropout and spatial centering), collects the feature correlation F of every term and expresses each candidate
setting as quantiles of its term's distribution (the fraction of pairs that repel), so that a candidate means
the same whatever the backbone's scale.

Which fraction is right depends on the data: on scenes whose parts the features separate cleanly, most pairs
within an image and with a neighbour should attract; on street photos most should repel. With more than one
candidate the stage chooses by a label-free criterion: it trains a short head per candidate, clusters its
codes on the training set, and measures the share of pixels of some training images whose cluster the dense
CRF changes (segments that follow the images' own colour edges give it little to change). The first candidate
is the default; another replaces it only if the CRF changes at most `selection.ratio` times as many pixels of
its clusters, because a candidate that makes more pairs attract also coarsens the segments, which leaves the
CRF less to change whether or not they are right. It reads training features, the KNN table and training
images, never labels.

Writes a JSON artifact with the shifts and weights that `train` uses, the preset's values, the statistics of
F per term (mean, std, quantiles, and the quantile at which the preset's shift sits), each candidate's shifts
and criterion, and the sampling settings. With calibration off it still writes the statistics, and the
preset's shifts unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stego_steps import images
from stego_steps.artifacts import read_npy, write_json
from stego_steps.batches import BatchSampler
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.crf import refine_labels
from stego_steps.errors import UserError, cli
from stego_steps.head import cluster_log_probs, log_probs_at
from stego_steps.index import row_box
from stego_steps.kmeans import Embed, spherical_kmeans
from stego_steps.loss import TERMS, feature_correlation, negative_perm, random_coords, sample
from stego_steps.store import FeatureStore
from stego_steps.training import train

log = logging.getLogger(__name__)

# Dataset kinds whose presets hold the shifts released with the paper's checkpoints (tuned for DINO).
PAPER_KINDS = ("cocostuff", "cityscapes", "potsdam")
REPORTED_QUANTILES = tuple(round(q, 2) for q in np.linspace(0.05, 0.95, 19))


def calibration_enabled(mode: bool | str, kind: str, backbone: str) -> tuple[bool, str]:
    """Whether to calibrate, and why. `auto`: on, except for a paper dataset with a DINO ViT backbone, whose
    preset holds the released, hand-tuned shifts, and for the built-in demo, whose preset shifts were chosen on
    its scenes."""
    if isinstance(mode, bool):
        return mode, f"calibrate: {str(mode).lower()} in the configuration"
    if mode != "auto":
        raise UserError(f"calibrate must be true, false or auto, not {mode!r}")
    if kind in PAPER_KINDS and backbone.startswith("dino_vit"):
        return False, f"auto: the {kind} preset holds the released shifts for {backbone}"
    if kind == "demo":
        return False, "auto: the demo preset's shifts were chosen on the demo scenes"
    return True, f"auto: no released shifts for {backbone} on a dataset of kind {kind}"


def channel_dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Dropout2d as the loss sees it in training (whole channels, survivors scaled by 1/(1-p)), drawn from
    `generator` so that the statistics are reproducible."""
    if p <= 0:
        return x
    keep = (torch.rand(x.shape[0], x.shape[1], 1, 1, generator=generator) >= p).to(x.dtype)
    return x * keep / (1 - p)


def _subsample(values: torch.Tensor, n: int, generator: torch.Generator) -> np.ndarray:
    flat = values.reshape(-1)
    if flat.numel() > n:
        flat = flat[torch.randint(flat.numel(), (n,), generator=generator)]
    return flat.float().numpy()


def term_correlations(store: FeatureStore, knn: np.ndarray, settings: Mapping, *, batches: int,
                      per_batch: int, seed: int) -> dict[str, np.ndarray]:
    """F values of every term over `batches` training batches (a random subset of `per_batch` per batch and
    term), sampled the way the `train` stage samples them."""
    s = settings
    g = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(knn, min(s["batch_size"], store.n), s["neighbours"], g)
    out: dict[str, list[np.ndarray]] = {t: [] for t in TERMS}
    for _ in range(batches):
        anchors, positives = sampler.next()
        f = store.batch(anchors).float().cpu()
        f_pos = store.batch(positives).float().cpu()
        f = channel_dropout(f, s["dropout"], g)
        f_pos = channel_dropout(f_pos, s["dropout"], g)
        n = len(anchors)
        coords1, coords2 = random_coords(n, s["samples"], g), random_coords(n, s["samples"], g)
        perms = [negative_perm(n, g) for _ in range(s["negatives"])]
        fa, fp = sample(f, coords1), sample(f_pos, coords2)
        kw = {"spatial_centering": s["spatial_centering"]}
        out["self"].append(_subsample(feature_correlation(fa, fa, **kw), per_batch, g))
        out["knn"].append(_subsample(feature_correlation(fa, fp, **kw), per_batch, g))
        negatives = torch.cat([feature_correlation(fa, sample(f[p], coords2), **kw) for p in perms])
        out["random"].append(_subsample(negatives, per_batch, g))
    return {t: np.concatenate(v) for t, v in out.items()}


def term_statistics(values: np.ndarray, preset_shift: float) -> dict:
    """Mean, std, quantiles of one term's F, and the quantile the preset's shift occupies (the fraction of
    pairs it makes repel)."""
    qs = np.quantile(values, REPORTED_QUANTILES)
    return {
        "n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "max": float(values.max()),
        "quantiles": {f"{q:.2f}": float(v) for q, v in zip(REPORTED_QUANTILES, qs, strict=True)},
        "preset_shift_quantile": float((values < preset_shift).mean()),
    }


def quantile_shifts(values: Mapping[str, np.ndarray], targets: Mapping[str, float]) -> dict[str, float]:
    """Shift of each term = the `targets[term]` quantile of its F values: that fraction of its pairs repels,
    the rest attracts."""
    for term, q in targets.items():
        if not 0.0 <= q <= 1.0:
            raise UserError(f"calibration quantile of term '{term}' must lie in [0, 1], got {q}")
    return {t: float(np.quantile(values[t], targets[t])) for t in TERMS}


def training_images(index: pd.DataFrame, store: FeatureStore, rows: np.ndarray) -> list[np.ndarray]:
    """The training images behind store rows `rows`, transformed exactly as extraction did (uint8 [res,res,3]),
    so that they line up with the stored feature maps."""
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in store.read("ids", rows)]
    by_id = index.set_index("id")
    missing = [i for i in ids if i not in by_id.index]
    if missing:
        raise UserError(f"{store.path} holds samples ({', '.join(missing[:3])}) that the training index does not "
                        "list; the index changed after extraction: rerun the workflow, which re-extracts")
    res = int(store.attrs["res"])
    jpeg = json.loads(store.attrs.get("producer", "{}")).get("jpeg_quality")
    return [images.transform_image(images.read_image(by_id.loc[i, "image"]), res, row_box(by_id.loc[i]), jpeg)
            for i in ids]


def crf_agreement(embed: Embed, store: FeatureStore, rows: np.ndarray, pictures: list[np.ndarray],
                  centroids: np.ndarray, workers: int) -> float:
    """Fraction of pixels of the given training images whose cluster the dense CRF leaves unchanged: high
    when the clusters' segments follow the images' colour edges (label-free)."""
    to_log_probs = cluster_log_probs(centroids)
    raw = []

    def items():
        for row, picture in zip(rows, pictures, strict=True):
            with torch.no_grad():
                lp = log_probs_at(embed(store.batch([row])), picture.shape[0], to_log_probs)
            raw.append(lp.argmax(0))
            yield picture, lp

    refined = list(refine_labels(items(), workers=workers))
    return float(np.mean([(r == c).mean() for r, c in zip(raw, refined, strict=True)]))


def candidate_agreements(store: FeatureStore, knn: np.ndarray, settings: Mapping,
                         candidates: list[dict[str, float]], pictures: list[np.ndarray], rows: np.ndarray, *,
                         workers: int, device: str = "cpu") -> list[float]:
    """Each candidate's criterion: a head trained for `selection.steps` with its shifts, K-Means of its codes on
    the training set (the cluster stage's settings), then the CRF agreement on the selection images."""
    s = settings
    sel, cl = s["calibration"]["selection"], s["cluster"]
    k = int(store.attrs["n_classes"]) + cl.get("extra_clusters", 0)
    scores = []
    for shifts in candidates:
        head, _ = train(store, knn, {**s, "steps": sel["steps"], "shifts": shifts}, device=device)
        head = head.cpu()

        def embed(f: torch.Tensor, head=head) -> torch.Tensor:
            with torch.no_grad():
                return head(f.cpu())

        centroids, _ = spherical_kmeans(store, embed, k, iterations=cl["iterations"],
                                        batch_images=cl["batch_images"], init_images=cl["init_images"],
                                        n_init=cl["n_init"], seed=s["seed"])
        scores.append(crf_agreement(embed, store, rows, pictures, centroids, workers))
        log.info("candidate shifts %s: CRF agreement %.4f", {t: round(v, 3) for t, v in shifts.items()},
                 scores[-1])
    return scores


def choose(agreements: list[float], ratio: float) -> int:
    """The candidate to use, from each one's CRF agreement: the first (the default), unless the CRF changes at
    most `ratio` times as many pixels of another's clusters; then the one it changes least."""
    changes = 1.0 - np.asarray(agreements, dtype=float)
    best = int(np.argmin(changes))
    return best if changes[best] <= ratio * changes[0] else 0


def calibrate(store: FeatureStore, knn: np.ndarray, settings: Mapping, index: pd.DataFrame | None = None, *,
              workers: int = 1, device: str = "cpu") -> dict:
    """The calibration artifact: chosen shifts and weights, the preset's, the statistics, the candidates and
    why. `index` (the training split's index) is needed only to choose among several candidates."""
    s = settings
    c = s["calibration"]
    enabled, reason = calibration_enabled(s["calibrate"], s["kind"], s["backbone"])
    values = term_correlations(store, knn, s, batches=c["batches"], per_batch=c["values_per_batch"],
                               seed=s["seed"])
    stats = {t: term_statistics(values[t], s["shifts"][t]) for t in TERMS}
    candidates = [{"quantiles": dict(q), "shifts": quantile_shifts(values, q)} for q in c["candidates"]]
    chosen = 0
    if enabled and len(candidates) > 1:
        if index is None:
            raise UserError("choosing among several calibration candidates needs the training index (images)")
        g = np.random.default_rng(s["seed"])
        rows = np.sort(g.choice(store.n, min(c["selection"]["images"], store.n), replace=False))
        pictures = training_images(index, store, rows)
        scores = candidate_agreements(store, knn, s, [cand["shifts"] for cand in candidates], pictures, rows,
                                      workers=workers, device=device)
        for cand, score in zip(candidates, scores, strict=True):
            cand["crf_agreement"] = score
        chosen = choose(scores, c["selection"]["ratio"])
        reason += (f"; candidate {chosen + 1} of {len(candidates)}: " +
                   ("the default, no other cut the CRF's changes enough" if chosen == 0 else
                    "the CRF changes its clusters least, by enough to replace the default"))
    shifts = candidates[chosen]["shifts"] if enabled else {t: float(s["shifts"][t]) for t in TERMS}
    for t in TERMS:
        log.info("%-6s F mean %.3f std %.3f; preset shift %.3f at quantile %.2f; %s shift %.3f", t,
                 stats[t]["mean"], stats[t]["std"], s["shifts"][t], stats[t]["preset_shift_quantile"],
                 "calibrated" if enabled else "preset", shifts[t])
    return {
        "calibrated": enabled, "reason": reason,
        "shifts": shifts, "weights": {t: float(s["weights"][t]) for t in TERMS},
        "preset": {"shifts": dict(s["shifts"]), "weights": dict(s["weights"])},
        "quantiles": candidates[chosen]["quantiles"] if enabled else None,
        "candidates": candidates, "chosen": chosen if enabled else None,
        "statistics": stats,
        "sampling": {"batches": c["batches"], "values_per_batch": c["values_per_batch"], "seed": s["seed"],
                     "batch_size": min(s["batch_size"], store.n), "samples": s["samples"],
                     "negatives": s["negatives"], "neighbours": s["neighbours"], "dropout": s["dropout"],
                     "spatial_centering": s["spatial_centering"]},
        "selection": dict(c["selection"]) if enabled and len(candidates) > 1 else None,
        "backbone": s["backbone"], "n_train": store.n,
    }


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--features", type=Path, required=True, help="train split feature store (.h5)")
    parser.add_argument("--knn", type=Path, required=True, help="KNN table of the train split (.npy)")
    parser.add_argument("--index", type=Path, required=True,
                        help="index of the train split (.csv): its images, for choosing among candidates")
    parser.add_argument("--settings", type=settings_arg, required=True,
                        help="JSON: the train stage's settings plus calibrate, calibration, cluster, kind, backbone")
    parser.add_argument("--out", type=Path, required=True, help="output: calibration artifact (JSON)")
    args = parse_stage_args(parser, argv)
    knn = read_npy(args.knn, "KNN table")
    index = pd.read_csv(args.index, dtype={"id": str})
    # Only the feature datasets and ids are read: labels stored beside them are never opened.
    with FeatureStore(args.features) as store:
        if len(knn) != store.n:
            raise UserError(f"KNN table {args.knn} has {len(knn)} rows but {args.features} has {store.n} "
                            f"samples; delete {args.knn} and rerun (the knn stage re-makes it)")
        result = calibrate(store, knn, args.settings, index, workers=args.threads, device=args.device)
    write_json(args.out, result)


if __name__ == "__main__":
    cli(main)
