"""Evidence for the `calibrate` stage: mIoU of raw-feature K-Means, of the head with the preset's fixed shifts,
with calibrated shifts, and of an oracle (a small shift grid chosen with the evaluation labels, for comparison
only), each with and without the CRF, over several seeds.

Runs in-process on the cached stores of a dataset that the workflow has already extracted
(`results/{ds}/features/<backbone>_<digest>/{train,val}.h5` and `knn<k>.npy` beside them):

    python bench/calibration.py --dataset demo --steps 200 --seeds 0 1 2 --out results/bench/calibration_demo.csv
    python bench/calibration.py --out results/bench/calibration_demo.csv --summarize   # the tables again
    python bench/calibration.py ... --quantiles 0.5,0.5,0.9 0.8,0.8,0.99   # candidate calibrations (self,knn,random)

`--quantiles` trains a head per candidate set of quantiles (each calibrated without labels); score them on a
validation split that is not the one you report (e.g. CamVid's val, `scripts/camvid.py --val-split val`) to
choose the default quantiles without touching the test labels.

The calibration itself reads the training features and KNN table only; the evaluation labels are read after
every setting has been fixed, to score it. Only the oracle rows use them to choose (a grid, best mean mIoU).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from stego_steps import metrics
from stego_steps.calibration import calibrate
from stego_steps.cli import setup_logging
from stego_steps.config import features_key, index_name, load_schema, resolve, stage_settings
from stego_steps.head import cluster_log_probs, flip_tta_code
from stego_steps.head_training import train
from stego_steps.kmeans import spherical_kmeans
from stego_steps.label_maps import segment
from stego_steps.store import FeatureStore

log = logging.getLogger("bench.calibration")


def evaluate_embeddings(embed, val: FeatureStore, flips: FeatureStore, centroids: np.ndarray, labels: np.ndarray,
                        n_classes: int, workers: int) -> dict[str, float]:
    """Cluster-probe mIoU of one embedding (head or identity) without and with the CRF."""
    with torch.no_grad():
        codes = [flip_tta_code(embed, val.batch([i]), flips.batch([i])) for i in range(val.n)]
    raw, crf = segment(lambda i: codes[i], val.dataset("image"), range(val.n), cluster_log_probs(centroids),
                       crf_workers=workers)
    out = {"crf_agree": float((raw == crf).mean()),  # label-free: how much the CRF changes the clusters
           "size_entropy": float(_entropy(np.bincount(raw.reshape(-1), minlength=len(centroids))))}
    for name, pred in (("raw", raw), ("crf", crf)):
        s = metrics.scores(metrics.confusion(pred, labels, len(centroids), n_classes))
        out[name] = float(s["miou"])  # already in percent
    return out


def _entropy(counts: np.ndarray) -> float:
    """Entropy of a histogram normalised by its maximum (1: all bins equal)."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


def knn_consistency(embed, store: FeatureStore, knn: np.ndarray, centroids: np.ndarray, seed: int) -> float:
    """Label-free: histogram intersection of the cluster histograms of each training image and its KNN
    partners, minus that of random partners (how much more the clusters say neighbours share)."""
    cent = torch.from_numpy(centroids)
    hists = []
    with torch.no_grad():
        for start in range(0, store.n, 32):
            code = torch.nn.functional.normalize(embed(store.batch(np.arange(start, min(start + 32, store.n)))), dim=1)
            assign = torch.einsum("bchw,kc->bkhw", code, cent).argmax(1).reshape(len(code), -1)
            hists.append(torch.nn.functional.one_hot(assign, len(cent)).float().mean(1))
    h = torch.cat(hists)
    partners = torch.from_numpy(knn[:, 1:].astype(np.int64))
    near = torch.minimum(h[:, None], h[partners]).sum(-1).mean()
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(len(h), partners.shape, generator=g)
    far = torch.minimum(h[:, None], h[rand]).sum(-1).mean()
    return float(near - far)


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def summarize(rows: pd.DataFrame) -> str:
    """Markdown table: mean ± std over seeds of each setting without and with the CRF; the oracle is the fixed
    setting (preset or grid) with the best mean mIoU with the CRF, chosen with the evaluation labels."""
    def cell(v: pd.Series) -> str:
        return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"  # sample std, as in the tables

    shown = [("raw-feature K-Means", "backbone_kmeans"), ("head, preset shifts", "preset"),
             ("head, calibrated shifts", "calibrated")]
    shown += [(f"head, calibrated at quantiles {n[2:].replace('_', ' / ')}", n)
              for n in rows["setting"].unique() if n.startswith("q_")]
    shown = [(label, name) for label, name in shown if (rows["setting"] == name).any()]
    fixed = rows[rows["setting"].str.startswith("grid") | (rows["setting"] == "preset")]
    if fixed["setting"].str.startswith("grid").any():
        oracle = fixed.groupby("setting")["crf"].mean().idxmax()
        shown.append((f"oracle ({oracle}, labels used)", oracle))
    lines = ["| dataset | method | seeds | mIoU without CRF | mIoU with CRF |", "|---|---|---|---|---|"]
    for label, name in shown:
        r = rows[rows["setting"] == name]
        lines.append(f"| {r['dataset'].iloc[0]} | {label} | {len(r)} | {cell(r['raw'])} | {cell(r['crf'])} |")
    if fixed["setting"].str.startswith("grid").any():
        lines += ["", "| grid setting (self = knn, random) | seeds | without CRF | with CRF |", "|---|---|---|---|"]
        for name, r in fixed.groupby("setting", sort=False):
            lines.append(f"| {name} | {len(r)} | {cell(r['raw'])} | {cell(r['crf'])} |")
    seeds = rows.pivot_table(index="setting", columns="seed", values="crf")
    lines += ["", "Per seed, with CRF:", "", seeds.round(1).to_markdown()]
    heads = rows[(rows["setting"] != "backbone_kmeans") & (rows["seed"] == rows["seed"].min())]
    if len(heads) > 2:
        lines += ["", f"Spearman correlation with the mIoU with CRF over the {len(heads)} heads of seed "
                  f"{heads['seed'].iloc[0]} (label-free criteria):", "",
                  "| CRF agreement | K-Means score | KNN histogram overlap | mIoU range |", "|---|---|---|---|",
                  "| " + " | ".join(f"{spearmanr(heads[c], heads['crf']).statistic:.2f}"
                                    for c in ("crf_agree", "km_score", "knn_consistency"))
                  + f" | {heads['crf'].min():.1f}–{heads['crf'].max():.1f} |"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--dataset", default="demo")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grid", default="0.0,0.1,0.2,0.3:0.3,0.5,0.76",
                   help="oracle grid: self=knn shifts : random shifts")
    p.add_argument("--quantiles", nargs="*", default=[], metavar="SELF,KNN,RANDOM",
                   help="candidate calibrations: shifts at these quantiles of each term's correlations (label-free)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-init", type=int, default=None, help="K-Means restarts (default: the preset's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="*", help="run only these settings (backbone_kmeans, preset, calibrated, grid_...)")
    p.add_argument("--summarize", action="store_true", help="only print the table of an existing --out CSV")
    a = p.parse_args()
    if a.summarize:
        print(summarize(pd.read_csv(a.out)))
        return
    setup_logging()
    torch.set_num_threads(a.workers)
    import yaml

    config = yaml.safe_load(a.config.read_text())
    load_schema()
    r = resolve(config, a.dataset)
    features = a.results / a.dataset / "features" / features_key(config, a.dataset)
    cal_settings = stage_settings(config, a.dataset, "calibrate")
    cal_settings["calibrate"] = True
    train_settings = {**stage_settings(config, a.dataset, "train"), "steps": a.steps}
    knn = np.load(features / f"knn{r['knn_k']}.npy")
    pos, neg = a.grid.split(":")
    grid = [(float(x), float(y)) for x in pos.split(",") for y in neg.split(",")]
    index = pd.read_csv(a.results / a.dataset / index_name(r) / "train.csv", dtype={"id": str})
    rows = []
    with FeatureStore(features / "train.h5") as tr, \
            FeatureStore(features / "val.h5", max_memory_gb=0) as val, \
            FeatureStore(features / "val.h5", key="feats_flip", max_memory_gb=0) as flips:
        n_classes = len(val.class_names)
        cl = {**r["cluster"], **({"n_init": a.n_init} if a.n_init else {})}

        def kmeans(embed, seed):
            def emb(f):
                with torch.no_grad():
                    return embed(f)
            return spherical_kmeans(tr, emb, n_classes, iterations=cl["iterations"],
                                    batch_images=cl["batch_images"], init_images=cl["init_images"],
                                    n_init=cl["n_init"], seed=seed)

        def criteria(embed, cent, score, seed):
            return {"km_score": score, "knn_consistency": knn_consistency(embed, tr, knn, cent, seed)}

        def calibrated(seed: int, candidates: list | None = None) -> dict:
            """The calibrate stage of a run with this seed (label-free; with several candidates it trains a
            short head per candidate and chooses by the CRF agreement on training images)."""
            c = {**cal_settings["calibration"], **({"candidates": candidates} if candidates else {})}
            cal = calibrate(tr, knn, {**cal_settings, "seed": seed, "calibration": c}, index, workers=a.workers)
            a.out.with_suffix(f".calibration{seed}.json").write_text(json.dumps(cal, indent=1))
            return cal

        settings = {"preset": r["loss"]["shifts"], "calibrated": None}
        settings.update({f"grid_{s:g}_{n:g}": {"self": s, "knn": s, "random": n} for s, n in grid})
        for q in a.quantiles:  # one candidate each: shifts at these quantiles, still label-free
            qs = dict(zip(("self", "knn", "random"), [float(v) for v in q.split(",")], strict=True))
            settings[f"q_{qs['self']:g}_{qs['knn']:g}_{qs['random']:g}"] = qs
        labels = val.read("label")  # read only to score settings that are already fixed
        # The baseline, the preset and the calibration for every seed first; then the oracle grid.
        runs = [(seed, name) for seed in a.seeds for name in ("backbone_kmeans", "preset", "calibrated")]
        runs += [(seed, name) for name in settings if name.startswith(("grid", "q_")) for seed in a.seeds]
        runs = [(seed, name) for seed, name in runs if not a.only or name in a.only]
        for seed, name in runs:
            if name == "backbone_kmeans":
                cent, score = kmeans(Identity(), seed)
                m = evaluate_embeddings(Identity(), val, flips, cent, labels, n_classes, a.workers)
                rows.append({"dataset": a.dataset, "setting": "backbone_kmeans", "seed": seed, **m,
                             **criteria(Identity(), cent, score, seed)})
                log.info("%s", rows[-1])
            else:
                extra = {}
                if name == "calibrated":
                    cal = calibrated(seed)
                    shifts = cal["shifts"]
                    extra = {"chosen": cal["chosen"], **{f"agreement{i}": c.get("crf_agreement")
                                                         for i, c in enumerate(cal["candidates"])}}
                elif name.startswith("q_"):
                    shifts = calibrated(seed, [settings[name]])["shifts"]
                else:
                    shifts = settings[name]
                s = {**train_settings, "seed": seed, "shifts": shifts}
                head, _ = train(tr, knn, s, device="cpu")
                cent, score = kmeans(head, seed)
                m = evaluate_embeddings(head, val, flips, cent, labels, n_classes, a.workers)
                rows.append({"dataset": a.dataset, "setting": name, "seed": seed, **shifts, **m,
                             **criteria(head, cent, score, seed), **extra})
                log.info("%s", rows[-1])
                pd.DataFrame(rows).to_csv(a.out, index=False)
    pd.DataFrame(rows).to_csv(a.out, index=False)


if __name__ == "__main__":
    main()
