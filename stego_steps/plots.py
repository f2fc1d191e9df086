"""The pictures of a finished run (matplotlib figures): segmentation panels, confusion heat maps, per-class IoU,
training curves, feature-correlation histograms and the calibration table."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from stego_steps.artifacts import atomic_path  # noqa: E402
from stego_steps.label_maps import palette, read_predictions  # noqa: E402
from stego_steps.protocol import SUPERVISED_PROBES, TERMS, row_key  # noqa: E402
from stego_steps.store import FeatureStore  # noqa: E402

log = logging.getLogger(__name__)

UNLABELLED = np.array([0, 0, 0], np.uint8)  # ignore pixels of the ground truth
UNMATCHED = np.array([128, 128, 128], np.uint8)  # clusters without a class
TITLES = {("cluster", False): "cluster", ("cluster", True): "cluster + CRF", ("linear", False): "linear",
          ("linear", True): "linear + CRF", ("backbone_kmeans", False): "backbone K-Means",
          ("backbone_kmeans", True): "backbone K-Means + CRF",
          ("backbone_linear", False): "backbone linear", ("backbone_linear", True): "backbone linear + CRF"}
PANEL_ROWS = (("cluster", False), ("cluster", True), ("linear", True), ("backbone_kmeans", True))


def colourize(ids: np.ndarray, colours: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """An id map → RGB uint8. With `lut`, ids are first mapped (cluster → class; −1 = unmatched, grey);
    ids outside [0, len(colours)) after that (the ground truth's ignore label) are black."""
    ids = np.asarray(ids).astype(np.int64)
    if lut is not None:
        ids = np.asarray(lut)[ids]
        unmatched = ids < 0
    else:
        unmatched = np.zeros(ids.shape, bool)
    valid = (ids >= 0) & (ids < len(colours))
    out = np.empty((*ids.shape, 3), np.uint8)
    out[...] = UNLABELLED
    out[valid] = colours[ids[valid]]
    out[unmatched] = UNMATCHED
    return out


def read_mapping(path: Path) -> np.ndarray:
    """`mapping/{row}.csv` → class id per cluster (−1 where unmatched)."""
    table = pd.read_csv(path)
    lut = np.full(int(table["cluster"].max()) + 1, -1, np.int64)
    lut[table["cluster"].to_numpy()] = table["class_id"].to_numpy()
    return lut


def save_figure(fig: plt.Figure, path: Path, dpi: int = 100) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", path)


def panel_indices(n: int, count: int) -> np.ndarray:
    """`count` images spread evenly over the split (the same ones in every run)."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))


def panels(store: FeatureStore, segments: list[Path], mapping_dir: Path | None, count: int) -> plt.Figure:
    """The panel figure; `mapping_dir` None for a dataset without labels (cluster colours)."""
    idx = panel_indices(store.n, count)
    images = store.read("image", idx)
    labelled = mapping_dir is not None and store.has("label")
    columns: list[tuple[str, np.ndarray]] = [("image", images)]
    names = store.class_names
    if labelled:
        colours = palette(len(names))
        columns.append(("ground truth", colourize(store.read("label", idx), colours)))
    probes = {p for p, _ in PANEL_ROWS}
    predictions = {}
    for probe in probes:
        try:
            predictions[probe] = read_predictions(segments, probe, store.n)
        except ValueError:
            continue  # a probe this run has not segmented (the linear probe without labels)
    n_clusters = max(int(m.max()) + 1 for p in predictions.values() for m in p.values())
    cluster_colours = palette(n_clusters)
    any_unmatched = False
    for probe, crf in PANEL_ROWS:
        if probe not in predictions or (not labelled and probe in SUPERVISED_PROBES):
            continue
        maps = predictions[probe][crf][idx]
        if labelled:
            lut = read_mapping(mapping_dir / f"{row_key(probe, crf)}.csv")
            any_unmatched |= bool((lut[np.unique(maps)] < 0).any())
            columns.append((TITLES[probe, crf], colourize(maps, colours, lut)))
        else:
            columns.append((TITLES[probe, crf], colourize(maps, cluster_colours)))
    fig, axes = plt.subplots(len(idx), len(columns), figsize=(2.0 * len(columns), 2.0 * len(idx) + 0.6),
                             squeeze=False)
    for c, (title, pictures) in enumerate(columns):
        axes[0, c].set_title(title, fontsize=9)
        for r in range(len(idx)):
            axes[r, c].imshow(pictures[r], interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    for r, i in enumerate(idx):
        axes[r, 0].set_ylabel(f"#{i}", fontsize=8)
    if labelled:
        handles = [Patch(color=colours[k] / 255, label=name) for k, name in enumerate(names)]
        handles.append(Patch(color=UNLABELLED / 255, label="unlabelled (ground truth)"))
        if any_unmatched:
            handles.append(Patch(color=UNMATCHED / 255, label="unmatched cluster"))
    else:
        handles = [Patch(color=cluster_colours[k] / 255, label=f"cluster {k}") for k in range(n_clusters)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 + 0.02 * ((len(handles) - 1) // 8), 1, 1))
    return fig


def confusion_figure(table: pd.DataFrame, title: str) -> plt.Figure:
    """Heat map of a `confusion/*.csv` table: each column (true class) normalised to its pixel count; rows are
    the clusters ordered by their matched class, unmatched ones last."""
    names = [c for c in table.columns if c not in ("cluster", "class")]
    matched = table["class"].fillna("").astype(str)
    order = sorted(range(len(table)), key=lambda r: (names.index(matched[r]) if matched[r] in names else
                                                      len(names), r))
    conf = table[names].to_numpy(np.float64)[order]
    share = conf / np.maximum(conf.sum(axis=0, keepdims=True), 1)
    labels = [f"{table['cluster'][r]} → {matched[r]}" if matched[r] else f"{table['cluster'][r]} (unmatched)"
              for r in order]
    size = max(4.0, 0.35 * max(len(names), len(labels)) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted cluster → matched class")
    ax.set_title(title)
    if len(names) <= 12:
        for (r, c), v in np.ndenumerate(share):
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.5 else "white")
    fig.colorbar(im, ax=ax, label="share of the true class's pixels")
    fig.tight_layout()
    return fig


def iou_figure(per_class: pd.DataFrame) -> plt.Figure:
    """Per-class IoU bars of the cluster probe, the linear probe and the backbone K-Means (CRF rows; the cluster
    probe also without CRF)."""
    rows = [r for r in (("cluster", False), ("cluster", True), ("linear", True), ("backbone_kmeans", True))
            if ((per_class["probe"] == r[0]) & (per_class["crf"] == r[1])).any()]
    names = list(dict.fromkeys(per_class["class"]))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) * len(rows) / 2 + 2), 4))
    x = np.arange(len(names))
    for j, (probe, crf) in enumerate(rows):
        sel = per_class[(per_class["probe"] == probe) & (per_class["crf"] == crf)].set_index("class")
        ax.bar(x + (j - (len(rows) - 1) / 2) * width, sel.loc[names, "iou"].to_numpy(), width,
               label=TITLES[probe, crf])
    ax.set_xticks(x, names, rotation=60 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title("per-class IoU")
    fig.tight_layout()
    return fig


def training_figure(steps: pd.DataFrame) -> plt.Figure:
    """Total loss and each term against the step: raw values and a moving average over 5% of the steps."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    window = max(len(steps) // 20, 1)
    for ax, term in zip(axes, ("total", *TERMS), strict=True):
        ax.plot(steps["step"], steps[term], lw=0.6, alpha=0.4, color="C0")
        ax.plot(steps["step"], steps[term].rolling(window, min_periods=1).mean(), lw=1.5, color="C0")
        ax.set_title(term if term == "total" else f"{term} (unweighted)")
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    return fig


def correlation_summary(values: dict[str, np.ndarray], shifts: dict[str, float]) -> pd.DataFrame:
    """Quantiles of each term's F and the share of pairs above its shift (those the term pulls together)."""
    return pd.DataFrame([{"term": t, "shift": shifts[t], "pairs": len(v), "mean": float(v.mean()),
                          **{f"q{q:02d}": float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)},
                          "share_above_shift": 100.0 * float((v > shifts[t]).mean())} for t, v in values.items()])


def calibration_table(calibration: dict) -> pd.DataFrame:
    """The calibrate stage's choice as a table: the preset's shifts, then each candidate (the quantiles of each
    term's F it asked for, the shifts they gave, its CRF agreement when several were compared) and which one
    the head was trained with."""
    rows = [{"setting": "preset", **{f"shift_{t}": v for t, v in calibration["preset"]["shifts"].items()},
             "used": not calibration["calibrated"]}]
    candidates = calibration.get("candidates", [])
    made = calibration.get("decision")
    default_changes = 1.0 - candidates[0].get("crf_agreement", np.nan) if candidates else np.nan
    for i, cand in enumerate(candidates):
        used = bool(calibration["calibrated"] and calibration["chosen"] == i)
        rows.append({"setting": f"candidate {i + 1}",
                     **{f"quantile_{t}": v for t, v in cand["quantiles"].items()},
                     **{f"shift_{t}": v for t, v in cand["shifts"].items()},
                     "crf_agreement": cand.get("crf_agreement"),
                     "crf_changes_vs_default": ((1.0 - cand["crf_agreement"]) / default_changes
                                                if "crf_agreement" in cand and default_changes > 0 else None),
                     "used": used, "confidence": made["confidence"] if made and used else None})
    columns = ["setting", *(f"quantile_{t}" for t in TERMS), *(f"shift_{t}" for t in TERMS), "crf_agreement",
               "crf_changes_vs_default", "used", "confidence"]
    return pd.DataFrame(rows).reindex(columns=columns)


def correlation_figure(values: dict[str, np.ndarray], shifts: dict[str, float], centred: bool) -> plt.Figure:
    fig, axes = plt.subplots(1, len(TERMS), figsize=(13, 3.4), sharey=False)
    lo = min(float(v.min()) for v in values.values())
    hi = max(float(v.max()) for v in values.values())
    bins = np.linspace(min(lo, *shifts.values()) - 0.02, max(hi, *shifts.values()) + 0.02, 81)
    for ax, term in zip(axes, TERMS, strict=True):
        v, b = values[term], shifts[term]
        ax.hist(v, bins=bins, color="C0", alpha=0.8)
        ax.axvline(b, color="C3", lw=2)
        ax.text(0.98, 0.95, f"shift {b:.3g}\n{100 * (v > b).mean():.1f}% above\n(pulled together)",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="C3")
        ax.set_title(f"{term}: F{' (spatially centred)' if centred else ''}", fontsize=10)
        ax.set_xlabel("feature correlation")
    axes[0].set_ylabel("point pairs")
    fig.tight_layout()
    return fig
