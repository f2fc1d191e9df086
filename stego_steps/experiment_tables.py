"""The experiment tables from the `miou.csv` of every run: the main table beside the paper's numbers and the
ablation table, as CSV frames and Markdown. Reads no model: no torch import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stego_steps.artifacts import atomic_path, write_csv
from stego_steps.errors import UserError

METHODS = {"cluster": "STEGO cluster", "linear": "STEGO linear probe", "backbone_kmeans": "backbone K-Means",
           "backbone_linear": "backbone linear probe"}

# The paper's reported (pixel accuracy, mIoU), all under its full protocol (with the CRF), keyed by the dataset
# adapter, backbone and probe. Only sourced values: the paper's page on Papers with Code, confirmed by
# re-evaluations of the released checkpoints in the official repository's issues #3 (COCO-Stuff) and #39
# (Potsdam); None where the paper's number could not be sourced.
PAPER: dict[tuple[str, str, str], tuple[float | None, float | None]] = {
    ("cocostuff", "dino_vitb8", "cluster"): (56.9, 28.2),
    ("cocostuff", "dino_vitb8", "linear"): (76.1, 41.0),
    ("cocostuff", "dino_vits8", "cluster"): (None, 24.5),
    ("cityscapes", "dino_vitb8", "cluster"): (73.2, 21.0),
    ("potsdam", "dino_vits8", "cluster"): (77.0, None),
}

AXES = {"mlp": "MLP head", "zero_clamp": "zero clamp", "five_crop": "five-crop",
        "spatial_centering": "spatial centering", "crf": "CRF", "self": "self term", "knn": "KNN term",
        "random": "random term"}

SCORES = {"pixel_accuracy": "acc", "miou": "miou"}


def read_runs(runs: list[dict]) -> pd.DataFrame:
    """The rows of every run's miou.csv, tagged with the run's dataset, variant, seed, kind and backbone."""
    frames = []
    for run in runs:
        path = Path(run["path"])
        if not path.exists():
            raise UserError(f"{path} is missing: build it first (snakemake --cores N {path}), or let Snakemake "
                            "build the table's target")
        frame = pd.read_csv(path)
        missing = {"probe", "crf", "pixel_accuracy", "miou"} - set(frame.columns)
        if missing:
            raise UserError(f"{path} lacks the columns {sorted(missing)}: it is not a metrics table of the "
                            "evaluate stage; delete it and rerun")
        frames.append(frame[["probe", "crf", "pixel_accuracy", "miou"]].assign(
            dataset=run["dataset"], variant=run["variant"], seed=int(run["seed"]), kind=run.get("kind", ""),
            backbone=run.get("backbone", "")))
    return pd.concat(frames, ignore_index=True)


def summarise(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample standard deviation (NaN for a single seed) and number of seeds of accuracy and mIoU."""
    grouped = rows.groupby(by, sort=False)
    out = grouped.agg(acc_mean=("pixel_accuracy", "mean"), acc_std=("pixel_accuracy", "std"),
                      miou_mean=("miou", "mean"), miou_std=("miou", "std"), n=("seed", "nunique"))
    return out.reset_index()


def main_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset, variant, method and CRF choice, with the paper's numbers and our difference."""
    table = summarise(rows, ["dataset", "kind", "backbone", "variant", "probe", "crf"])
    paper = [PAPER.get((r.kind, r.backbone, r.probe), (None, None)) if r.crf else (None, None)
             for r in table.itertuples()]
    table["paper_acc"] = [np.nan if a is None else a for a, _ in paper]
    table["paper_miou"] = [np.nan if m is None else m for _, m in paper]
    table["delta_acc"] = table["acc_mean"] - table["paper_acc"]
    table["delta_miou"] = table["miou_mean"] - table["paper_miou"]
    table.insert(table.columns.get_loc("probe") + 1, "method", table["probe"].map(METHODS).fillna(table["probe"]))
    order = {p: i for i, p in enumerate(METHODS)}
    table["_order"] = table["probe"].map(order).fillna(len(order))
    table = table.sort_values(["dataset", "variant", "_order", "crf"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def ablation_table(rows: pd.DataFrame, axes: dict[str, dict[str, bool]], full: str = "default") -> pd.DataFrame:
    """One row per ablation variant (with the CRF), plus the full method without the CRF.

    `axes[variant]` says which components a variant keeps (the keys of AXES except `crf`)."""
    if full not in axes:
        raise UserError(f"the ablation table needs the full method's runs (variant '{full}')")
    scores = summarise(rows, ["variant", "probe", "crf"])
    entries = [(full, True), (full, False)] + [(v, True) for v in axes if v != full]
    table = []
    for variant, crf in entries:
        row = {"variant": variant if crf or variant != full else f"{full} without CRF"}
        row.update({axis: bool(axes[variant][axis]) if axis != "crf" else crf for axis in AXES})
        for probe in ("cluster", "linear"):
            match = scores[(scores["variant"] == variant) & (scores["probe"] == probe) & (scores["crf"] == crf)]
            for col in ("acc_mean", "acc_std", "miou_mean", "miou_std"):
                row[f"{probe}_{col}"] = float(match[col].iloc[0]) if len(match) else np.nan
            if probe == "cluster":
                row["n"] = int(match["n"].iloc[0]) if len(match) else 0
        table.append(row)
    out = pd.DataFrame(table)
    out["delta_cluster_miou"] = out["cluster_miou_mean"] - out["cluster_miou_mean"].iloc[0]
    return out


def mean_std(mean: float, std: float) -> str:
    """`28.2 ± 0.4`; the mean alone for a single seed; blank when missing."""
    if pd.isna(mean):
        return ""
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def mean_std_column(table: pd.DataFrame, prefix: str) -> list[str]:
    """`mean_std` of the columns `<prefix>_mean` and `<prefix>_std`, row by row."""
    return [mean_std(m, s) for m, s in zip(table[f"{prefix}_mean"], table[f"{prefix}_std"], strict=True)]


def _number(value: float, signed: bool = False) -> str:
    return "" if pd.isna(value) else (f"{value:+.1f}" if signed else f"{value:.1f}")


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of already formatted cells."""
    cells = frame.astype(str)
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main_markdown(table: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "dataset": table["dataset"], "backbone": table["backbone"], "variant": table["variant"],
        "method": table["method"], "CRF": np.where(table["crf"], "✓", "✗"),
        "accuracy": mean_std_column(table, "acc"), "mIoU": mean_std_column(table, "miou"), "n": table["n"],
        "paper acc.": [_number(v) for v in table["paper_acc"]], "paper mIoU": [_number(v) for v in table["paper_miou"]],
        "Δ acc.": [_number(v, True) for v in table["delta_acc"]],
        "Δ mIoU": [_number(v, True) for v in table["delta_miou"]],
    })
    return ("Accuracy and mIoU in percent, mean ± sample standard deviation over n seeds; the paper's numbers "
            "(all with the CRF) where sourced, Δ = ours − paper.\n\n" + markdown(shown))


def ablation_markdown(table: pd.DataFrame) -> str:
    shown = pd.DataFrame({"variant": table["variant"],
                          **{label: np.where(table[axis], "✓", "✗") for axis, label in AXES.items()}})
    for probe in ("cluster", "linear"):
        shown[f"{probe} acc."] = mean_std_column(table, f"{probe}_acc")
        shown[f"{probe} mIoU"] = mean_std_column(table, f"{probe}_miou")
    shown["n"] = table["n"]
    shown["Δ cluster mIoU"] = [_number(v, True) for v in table["delta_cluster_miou"]]
    return ("Each row switches one component of the full method (✓ kept, ✗ removed or flipped from the "
            "preset); scores in percent, mean ± sample standard deviation over n seeds; Δ against the first "
            "row.\n\n" + markdown(shown))


def write_table(table: pd.DataFrame, text: str, out_csv: Path, out_md: Path) -> None:
    write_csv(out_csv, table)
    with atomic_path(out_md) as tmp:
        tmp.write_text(text)
