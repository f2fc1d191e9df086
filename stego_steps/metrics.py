"""Segmentation metrics: a dataset-level confusion matrix, Hungarian matching, pixel accuracy and mIoU.

The confusion matrix has one row per predicted cluster and one column per true class. Unlike the official
metric code, pixels predicted as a cluster that the matching leaves unassigned (extra clusters) are not
dropped: they stay in the denominator of the accuracy and in the union of their true class (one of the
deliberate differences listed in the README).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion(pred: Any, target: Any, n_clusters: int, n_classes: int) -> np.ndarray:
    """Count pixels: `[n_clusters, n_classes]` int64, rows = predicted cluster, columns = true class.

    `pred` and `target` are integer arrays or tensors of the same size (any shape). Pixels whose target is
    outside `[0, n_classes)` are ignored; a prediction outside `[0, n_clusters)` on a counted pixel is an
    error.
    """
    if n_clusters < 1 or n_classes < 1:
        raise ValueError(f"n_clusters ({n_clusters}) and n_classes ({n_classes}) must be positive")
    p = _as_numpy(pred).reshape(-1)
    t = _as_numpy(target).reshape(-1)
    if p.size != t.size:
        raise ValueError(f"prediction has {p.size} pixels but the target has {t.size}")
    for name, arr in (("prediction", p), ("target", t)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    t = t.astype(np.int64, copy=False)
    keep = (t >= 0) & (t < n_classes)
    p = p[keep].astype(np.int64, copy=False)
    t = t[keep]
    if p.size and (p.min() < 0 or p.max() >= n_clusters):
        bad = p[(p < 0) | (p >= n_clusters)]
        raise ValueError(
            f"prediction contains cluster ids outside [0, {n_clusters}) (e.g. {int(bad[0])}, "
            f"{bad.size} pixels): was n_clusters set to the number of clusters plus extra clusters?"
        )
    counts = np.bincount(p * n_classes + t, minlength=n_clusters * n_classes)
    return counts.reshape(n_clusters, n_classes).astype(np.int64, copy=False)


def scores(confusion: Any, hungarian: bool = True) -> dict[str, Any]:
    """Pixel accuracy and mIoU (both in percent) from a confusion matrix.

    With `hungarian=True` clusters are matched one-to-one to classes, maximising the matched pixel count
    (scipy `linear_sum_assignment` on the raw counts); otherwise cluster i is class i (linear probe).
    For class k matched to cluster r: tp = conf[r, k], union = pixels of class k + pixels predicted r − tp.
    A class without a matched cluster has tp = 0. Accuracy = Σ tp / all counted pixels, so pixels of
    unmatched clusters count as errors. IoU is NaN where the union is empty; mIoU averages the others.

    Returns a dict with `pixel_accuracy`, `miou` (floats, percent), `iou` (float array `[n_classes]`, a
    fraction in [0, 1], NaN where the union is empty), `assignment` (int array `[n_clusters]`: the class
    matched to each cluster, -1 if none) and `n_pixels`.
    """
    conf = _as_numpy(confusion)
    if conf.ndim != 2:
        raise ValueError(f"confusion matrix must be 2-D [n_clusters, n_classes], got shape {conf.shape}")
    conf = conf.astype(np.int64, copy=False)
    n_clusters, n_classes = conf.shape
    total = int(conf.sum())
    if total == 0:
        raise ValueError("confusion matrix is empty: no labelled pixels were counted")

    assignment = np.full(n_clusters, -1, dtype=np.int64)
    if hungarian:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(conf, maximize=True)
        assignment[rows] = cols
    else:
        m = min(n_clusters, n_classes)
        assignment[:m] = np.arange(m)

    matched = assignment >= 0
    cluster_of_class = np.full(n_classes, -1, dtype=np.int64)
    cluster_of_class[assignment[matched]] = np.flatnonzero(matched)

    has_cluster = cluster_of_class >= 0
    classes = np.arange(n_classes)
    tp = np.zeros(n_classes, dtype=np.int64)
    tp[has_cluster] = conf[cluster_of_class[has_cluster], classes[has_cluster]]
    predicted = np.zeros(n_classes, dtype=np.int64)
    predicted[has_cluster] = conf.sum(axis=1)[cluster_of_class[has_cluster]]
    union = conf.sum(axis=0) + predicted - tp

    iou = np.full(n_classes, np.nan)
    nonempty = union > 0
    iou[nonempty] = tp[nonempty] / union[nonempty]
    return {
        "pixel_accuracy": 100.0 * float(tp.sum()) / total,
        "miou": 100.0 * float(np.mean(iou[nonempty])),
        "iou": iou,
        "assignment": assignment,
        "n_pixels": total,
    }
