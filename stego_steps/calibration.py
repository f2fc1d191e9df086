"""Label-free choice of the loss shifts from the statistics of the feature correlation (the calibrate stage's
computation; the stage's help text says how and why)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from stego_steps import images
from stego_steps.correlations import term_correlations
from stego_steps.errors import UserError
from stego_steps.head import cluster_log_probs, log_probs_at
from stego_steps.head_training import train
from stego_steps.index import row_box
from stego_steps.kmeans import Embed, spherical_kmeans
from stego_steps.label_maps import raw_and_crf
from stego_steps.loss import TERMS
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)

REPORTED_QUANTILES = tuple(round(q, 2) for q in np.linspace(0.05, 0.95, 19))


def calibration_enabled(mode: bool | str, kind: str, backbone: str, released: Sequence[str] = ()) -> tuple[bool, str]:
    """Whether to calibrate, and why. `auto`: on, except where the preset holds the released, hand-tuned shifts
    for this very backbone (`released`: the preset's `released_shifts`, the backbones its shifts were tuned
    for), and for the built-in demo, whose preset shifts were chosen on its scenes."""
    if isinstance(mode, bool):
        return mode, f"calibrate: {str(mode).lower()} in the configuration"
    if mode != "auto":
        raise UserError(f"calibrate must be true, false or auto, not {mode!r}")
    if backbone in released:
        return False, f"auto: the preset holds the released shifts for {backbone}"
    if kind == "demo":
        return False, "auto: the demo preset's shifts were chosen on the demo scenes"
    return True, f"auto: the preset holds no released shifts for {backbone} (dataset of kind {kind})"


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
    when the clusters' segments follow the images' colour edges (label-free). The maps are the segment
    stage's, computed by the same function."""
    to_log_probs = cluster_log_probs(centroids)

    def items() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for row, picture in zip(rows, pictures, strict=True):
            with torch.no_grad():
                yield picture, log_probs_at(embed(store.batch([row])), picture.shape[0], to_log_probs)

    return float(np.mean([(raw == crf).mean() for raw, crf in raw_and_crf(items(), workers=workers)]))


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


def decision(agreements: list[float], ratio: float) -> dict:
    """How the choice among candidates came out and how close it was: the CRF's changes to the best other
    candidate's clusters relative to the default's (`change_ratio`; the default is replaced at or below `ratio`),
    and the distance to that threshold. Within 0.1 of it the choice is "close": another seed or other selection
    images may well choose the other regime."""
    chosen = choose(agreements, ratio)
    changes = 1.0 - np.asarray(agreements, dtype=float)
    other = 1 + int(np.argmin(changes[1:]))
    change_ratio = float(changes[other] / changes[0]) if changes[0] > 0 else float("inf")
    margin = abs(change_ratio - ratio)
    return {"chosen": chosen, "regime": "default" if chosen == 0 else f"candidate {chosen + 1}",
            "best_other": other, "change_ratio": change_ratio, "threshold": ratio, "margin": margin,
            "confidence": "clear" if margin >= 0.1 else "close"}


def shifts_source(enabled: bool, chosen: int, candidates: list[dict], settings: Mapping) -> str:
    """Where the shifts `train` uses come from, in one sentence."""
    if enabled:
        quantiles = ", ".join(f"{t} {q:g}" for t, q in candidates[chosen]["quantiles"].items())
        return (f"calibrated: candidate {chosen + 1} of {len(candidates)}, each term's shift at the quantile of its "
                f"feature correlation on the training features ({quantiles})")
    if settings["backbone"] in (settings.get("released_shifts") or ()):
        return f"the preset's shifts, the released ones tuned for {settings['backbone']}"
    return "the preset's shifts"


def calibrate(store: FeatureStore, knn: np.ndarray, settings: Mapping, index: pd.DataFrame | None = None, *,
              workers: int = 1, device: str = "cpu") -> dict:
    """The calibration artifact: chosen shifts and weights, the preset's, the statistics, the candidates and
    why. `index` (the training split's index) is needed only to choose among several candidates."""
    s = settings
    c = s["calibration"]
    enabled, reason = calibration_enabled(s["calibrate"], s["kind"], s["backbone"], s.get("released_shifts") or ())
    values = term_correlations(store, knn, s, batches=c["batches"], per_batch=c["values_per_batch"],
                               seed=s["seed"])
    stats = {t: term_statistics(values[t], s["shifts"][t]) for t in TERMS}
    # Off, no candidate is looked at: the artifact records none rather than shifts nobody compared or used.
    candidates = ([{"quantiles": dict(q), "shifts": quantile_shifts(values, q)} for q in c["candidates"]]
                  if enabled else [])
    chosen, made = 0, None
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
        made = decision(scores, c["selection"]["ratio"])
        chosen = made["chosen"]
        reason += (f"; candidate {chosen + 1} of {len(candidates)}: " +
                   ("the default, no other cut the CRF's changes enough" if chosen == 0 else
                    "the CRF changes its clusters least, by enough to replace the default") +
                   f" ({made['confidence']}: candidate {made['best_other'] + 1}'s CRF changes are "
                   f"{made['change_ratio']:.2f} of the default's, the threshold {made['threshold']:g})")
        log.info("calibration: %s", reason)
    shifts = candidates[chosen]["shifts"] if enabled else {t: float(s["shifts"][t]) for t in TERMS}
    for t in TERMS:
        log.info("%-6s F mean %.3f std %.3f; preset shift %.3f at quantile %.2f; %s shift %.3f", t,
                 stats[t]["mean"], stats[t]["std"], s["shifts"][t], stats[t]["preset_shift_quantile"],
                 "calibrated" if enabled else "preset", shifts[t])
    return {
        "calibrated": enabled, "reason": reason,
        "shifts": shifts, "shifts_from": shifts_source(enabled, chosen, candidates, s),
        "weights": {t: float(s["weights"][t]) for t in TERMS},
        "preset": {"shifts": dict(s["shifts"]), "weights": dict(s["weights"])},
        "quantiles": candidates[chosen]["quantiles"] if enabled else None,
        "candidates": candidates, "chosen": chosen if enabled else None,
        "statistics": stats,
        "sampling": {"batches": c["batches"], "values_per_batch": c["values_per_batch"], "seed": s["seed"],
                     "batch_size": min(s["batch_size"], store.n), "samples": s["samples"],
                     "negatives": s["negatives"], "neighbours": s["neighbours"], "dropout": s["dropout"],
                     "spatial_centering": s["spatial_centering"]},
        "selection": dict(c["selection"]) if enabled and len(candidates) > 1 else None,
        "decision": made,  # None unless several candidates were compared
        "backbone": s["backbone"], "n_train": store.n,
    }
