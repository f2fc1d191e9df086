"""Dataset-level scores of the segment stage's maps: confusion matrices, Hungarian matching, accuracy, mIoU,
the CRF's effect per class, the cluster → class mapping and the cluster shares of an unlabelled dataset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stego_steps import metrics
from stego_steps.artifacts import open_h5
from stego_steps.errors import UserError
from stego_steps.protocol import ROWS, SUPERVISED_PROBES, row_key

# A block of one probe's label maps: its image rows, the raw maps and the CRF maps ([len(rows),H,W] each).
Block = tuple[range, np.ndarray, np.ndarray]


def evaluate(labels: np.ndarray, predictions: dict[str, dict[bool, np.ndarray]], n_clusters: dict[str, int],
             n_classes: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Score rows and the confusion matrix of every (probe, crf) in ROWS present in `predictions`, from whole
    arrays in memory (`evaluate_blocks` gives the same from blocks of images)."""
    confusions = {row_key(probe, crf): metrics.confusion(predictions[probe][crf], labels, n_clusters[probe],
                                                          n_classes)
                  for probe, crf in ROWS if probe in predictions}
    return score_rows(confusions), confusions


def evaluate_blocks(labels: Any, blocks: Mapping[str, Iterable[Block]], n_clusters: dict[str, int],
                    n_classes: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """`evaluate` from each probe's maps block by block (`labels` sliced per block: an array or an HDF5
    dataset), holding one block and the [clusters, classes] counts. Counts add exactly, so the rows are
    those of `evaluate` on the whole arrays."""
    confusions: dict[str, np.ndarray] = {}
    for probe, probe_blocks in blocks.items():
        k = n_clusters[probe]
        for key in (row_key(probe, False), row_key(probe, True)):
            confusions[key] = np.zeros((k, n_classes), np.int64)
        for rows, raw, crf in probe_blocks:
            target = labels[rows.start:rows.stop]
            confusions[row_key(probe, False)] += metrics.confusion(raw, target, k, n_classes)
            confusions[row_key(probe, True)] += metrics.confusion(crf, target, k, n_classes)
    ordered = {row_key(p, c): confusions[row_key(p, c)] for p, c in ROWS if row_key(p, c) in confusions}
    return score_rows(ordered), ordered


def score_rows(confusions: Mapping[str, np.ndarray]) -> list[dict]:
    """Accuracy, mIoU, per-class IoU and the cluster → class assignment of every (probe, crf) in ROWS that
    has a confusion matrix; the cluster probes are matched by one Hungarian assignment, the linear ones not."""
    rows = []
    for probe, crf in ROWS:
        if (key := row_key(probe, crf)) not in confusions:
            continue
        s = metrics.scores(confusions[key], hungarian=probe not in SUPERVISED_PROBES)
        rows.append({"probe": probe, "crf": crf, "pixel_accuracy": float(s["pixel_accuracy"]),
                     "miou": float(s["miou"]), "iou": s["iou"], "assignment": s["assignment"]})
    return rows


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


def cluster_shares(blocks: Mapping[str, Iterable[Block]], n_clusters: dict[str, int]) -> list[dict]:
    """Pixels, pixel share (percent) and images of every cluster, for each (probe, crf) in ROWS present, from
    each probe's maps block by block."""
    counts = {}
    for probe, probe_blocks in blocks.items():
        k = n_clusters[probe]
        pixels = {crf: np.zeros(k, np.int64) for crf in (False, True)}
        images = {crf: np.zeros(k, np.int64) for crf in (False, True)}
        for _, *maps in probe_blocks:
            for crf, block in zip((False, True), maps, strict=True):
                per_image = np.stack([np.bincount(m.ravel(), minlength=k)[:k] for m in block]) if len(block) \
                    else np.zeros((0, k), np.int64)
                pixels[crf] += per_image.sum(0)
                images[crf] += (per_image > 0).sum(0)
        counts[probe] = (pixels, images)
    rows = []
    for probe, crf in ROWS:
        if probe not in counts:
            continue
        pixels, images = counts[probe][0][crf], counts[probe][1][crf]
        total = max(int(pixels.sum()), 1)
        rows += [{"probe": probe, "crf": crf, "cluster": c, "pixels": int(pixels[c]),
                  "share": 100.0 * pixels[c] / total, "images": int(images[c])}
                 for c in range(n_clusters[probe])]
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
