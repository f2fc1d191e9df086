"""Dataset-level scores of the segment stage's maps: confusion matrices, Hungarian matching, accuracy, mIoU,
the CRF's effect per class, the cluster → class mapping and the cluster shares of an unlabelled dataset."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from stego_steps import metrics
from stego_steps.artifacts import open_h5
from stego_steps.errors import UserError
from stego_steps.protocol import ROWS, SUPERVISED_PROBES, row_key


def evaluate(labels: np.ndarray, predictions: dict[str, dict[bool, np.ndarray]], n_clusters: dict[str, int],
             n_classes: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score rows and the confusion matrix of every (probe, crf) in ROWS present in `predictions`."""
    rows, confusions = [], {}
    for probe, crf in ROWS:
        if probe not in predictions:
            continue
        conf = metrics.confusion(predictions[probe][crf], labels, n_clusters[probe], n_classes)
        s = metrics.scores(conf, hungarian=probe not in SUPERVISED_PROBES)
        rows.append({"probe": probe, "crf": crf, "pixel_accuracy": float(s["pixel_accuracy"]),
                     "miou": float(s["miou"]), "iou": s["iou"], "assignment": s["assignment"]})
        confusions[row_key(probe, crf)] = conf
    return rows, confusions


def score_tables(rows: list[dict], names: list[str], *, dataset: str, backbone: str,
                 n_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `evaluate` as the metrics table (accuracy, mIoU per probe and CRF) and the per-class IoU
    table (percent), both tagged with the dataset and backbone."""
    common = {"dataset": dataset, "backbone": backbone}
    table = pd.DataFrame([{**common, **{k: v for k, v in r.items() if k not in ("iou", "assignment")},
                           "n_images": n_images} for r in rows])
    per_class = pd.DataFrame([{**common, "probe": r["probe"], "crf": r["crf"], "class_id": k, "class": name,
                               "iou": 100.0 * r["iou"][k]} for r in rows for k, name in enumerate(names)])
    return table, per_class


def crf_effect(per_class: pd.DataFrame) -> pd.DataFrame:
    """Per probe and class: IoU without and with the CRF and the difference (positive = the CRF helps)."""
    wide = per_class.pivot_table(index=["probe", "class_id", "class"], columns="crf", values="iou").dropna()
    wide = wide.rename(columns={False: "iou_raw", True: "iou_crf"}).reset_index()
    wide.columns.name = None
    wide["crf_gain"] = wide["iou_crf"] - wide["iou_raw"]
    return wide.sort_values(["probe", "crf_gain"]).reset_index(drop=True)


def mapping_table(conf: np.ndarray, assignment: np.ndarray, names: list[str]) -> pd.DataFrame:
    """The cluster → class assignment of one row with the pixels behind it (one row per cluster)."""
    clusters = np.arange(len(assignment))
    matched = assignment >= 0
    return pd.DataFrame({
        "cluster": clusters,
        "class_id": assignment,
        "class": [names[a] if a >= 0 else "" for a in assignment],
        "matched_pixels": np.where(matched, conf[clusters, np.clip(assignment, 0, None)], 0),
        "cluster_pixels": conf.sum(axis=1),
    })


def confusion_table(conf: np.ndarray, mapping: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """A confusion matrix with its rows named by cluster id and matched class, its columns by true class."""
    return pd.concat([mapping[["cluster", "class"]], pd.DataFrame(conf, columns=names)], axis=1)


def cluster_shares(predictions: dict[str, dict[bool, np.ndarray]], n_clusters: dict[str, int]) -> list[dict]:
    """Pixels, pixel share (percent) and images of every cluster, for each (probe, crf) in ROWS present."""
    rows = []
    for probe, crf in ROWS:
        if probe not in predictions:
            continue
        maps = predictions[probe][crf]
        k = n_clusters[probe]
        per_image = np.stack([np.bincount(m.ravel(), minlength=k)[:k] for m in maps]) if len(maps) \
            else np.zeros((0, k), np.int64)
        pixels = per_image.sum(0)
        total = max(int(pixels.sum()), 1)
        rows += [{"probe": probe, "crf": crf, "cluster": c, "pixels": int(pixels[c]),
                  "share": 100.0 * pixels[c] / total, "images": int((per_image[:, c] > 0).sum())}
                 for c in range(k)]
    return rows


def segment_clusters(paths: Iterable[Path]) -> dict[str, int]:
    """Probe → number of clusters its maps range over, as recorded by `segment` (the same in every shard)."""
    counts: dict[str, int] = {}
    for path in paths:
        with open_h5(path, "segment shard") as f:
            probe, k = str(f.attrs["probe"]), int(f.attrs["n_clusters"])
        if counts.setdefault(probe, k) != k:
            raise UserError(f"segment shards of probe '{probe}' disagree on the number of clusters "
                             f"({counts[probe]} and {k} in {path}); rerun the segment stage")
    return counts
