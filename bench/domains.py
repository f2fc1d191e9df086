"""Leave-one-dataset-out development protocol for the `directory` recipe (EfficientNet-Lite0, offline).

Datasets are laid out by `scripts/{camvid,cwfid,ccp,msrc}.py` under `resources/<name>` (data never enter git).
For each dataset the feature stores and the KNN table are made once (`stores`, in-process with the extract
stage's function) and shared by every setting; then every dataset × seed × grid setting trains a short head
(`cells`), clusters it, and scores it without and with the CRF, with label-free criteria recorded beside the
labelled mIoU; `summarize` prints the tables (settings chosen on the other datasets, scored on the left-out one).

    python bench/domains.py stores                                  # features + KNN tables, once per dataset
    python bench/domains.py cells --steps 100 --seeds 0 1 2         # the grid (appends, resumes)
    python bench/domains.py cells --only camvid --seeds 0 --settings q_default --time   # one cell, timed
    python bench/domains.py summarize                               # the tables, and bench/domains_*.csv

Grid settings are loss shifts: fixed (the preset's) or set from quantiles of each term's feature correlations
(label-free calibration candidates). Evaluation labels are read only to score a finished cell.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from stego_steps import metrics
from stego_steps.calibration import quantile_shifts
from stego_steps.cli import setup_logging
from stego_steps.config import load_schema, resolve, stage_settings
from stego_steps.correlations import term_correlations
from stego_steps.datasets import build_index
from stego_steps.feature_extraction import extract
from stego_steps.head import RawFeatures, cluster_log_probs, flip_tta_code
from stego_steps.head_training import train
from stego_steps.index import index_frame
from stego_steps.kmeans import spherical_kmeans
from stego_steps.knn import knn_table
from stego_steps.label_maps import segment
from stego_steps.linear_probe import train_probe
from stego_steps.store import FeatureStore

log = logging.getLogger("bench.domains")
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = ROOT / "results" / "bench" / "domains"
#: dataset name → (layout script, its class-name and ignore-label attributes)
DATASETS = {"camvid": ("camvid", "VOID"), "cwfid": ("cwfid", "IGNORE"), "ccp": ("ccp", "IGNORE"),
            "msrc": ("msrc", "IGNORE")}
#: grid settings: ("fixed", shifts) or ("quantiles", quantiles of each term's F)
SETTINGS = {
    "preset": ("fixed", {"self": 0.08, "knn": 0.02, "random": 0.76}),
    "q_default": ("quantiles", {"self": 0.7, "knn": 0.7, "random": 0.95}),
    "q_mid": ("quantiles", {"self": 0.5, "knn": 0.5, "random": 0.9}),
    "q_attract": ("quantiles", {"self": 0.2, "knn": 0.1, "random": 1.0}),
    # the preset's shifts with the recipe's own 400 training steps (the cells' --steps is a quarter of it)
    "preset_400": ("fixed", {"self": 0.08, "knn": 0.02, "random": 0.76}),
    # the calibration's candidates with the same 400 steps
    "q_default_400": ("quantiles", {"self": 0.7, "knn": 0.7, "random": 0.95}),
    "q_attract_400": ("quantiles", {"self": 0.2, "knn": 0.1, "random": 1.0}),
    # the preset's shifts and 400 steps with 128-dimensional codes instead of 70 (the features have 152 channels)
    "preset_400_d128": ("fixed", {"self": 0.08, "knn": 0.02, "random": 0.76}),
}
#: head settings other than the shifts, per grid setting (the rest are the recipe's)
TRAIN_OVERRIDES = {"preset_400": {"steps": 400}, "q_default_400": {"steps": 400}, "q_attract_400": {"steps": 400},
                   "preset_400_d128": {"steps": 400, "code_dim": 128}}
CRITERIA = {"crf_agree": "CRF agreement", "rankme": "RankMe", "snd": "SND", "silhouette": "silhouette",
            "stability": "stability across seeds", "neg_loss": "lowest training loss"}


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dataset_config(name: str) -> dict:
    """The `directory` entry a user would write for this dataset (the demo preset: EfficientNet-Lite0)."""
    module_name, ignore_attr = DATASETS[name]
    m = script(module_name)
    return {"kind": "directory", "preset": "demo", "root": str(ROOT / "resources" / name),
            "class_names": list(m.CLASS_NAMES), "ignore_label": int(getattr(m, ignore_attr))}


def resolved(name: str) -> tuple[dict, dict]:
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"] = {name: dataset_config(name)}
    load_schema()
    return config, resolve(config, name)


def make_stores(name: str, threads: int) -> None:
    """Index, train and val feature stores and the KNN table of one dataset (skipped when present)."""
    config, r = resolved(name)
    out = WORK / name
    out.mkdir(parents=True, exist_ok=True)
    splits, classes = build_index("directory", {**config["datasets"][name], "root": config["datasets"][name]["root"]})
    ex = stage_settings(config, name, "extract")
    for split in ("train", "val"):
        index = index_frame(splits[split])
        index.to_csv(out / f"{split}.csv", index=False)
        if not (out / f"{split}.h5").exists():
            settings = {**ex, "res": r["train_res"] if split == "train" else r["eval_res"],
                        "evaluation": split == "val"}
            t = time.perf_counter()
            extract(index, classes, out / f"{split}.h5", split=split, device="cpu", **settings)
            log.info("%s %s: %d images extracted in %.0f s", name, split, len(index), time.perf_counter() - t)
    if not (out / f"knn{r['knn_k']}.npy").exists():
        with FeatureStore(out / "train.h5") as tr:
            np.save(out / f"knn{r['knn_k']}.npy", knn_table(tr.read("pooled").astype(np.float32), r["knn_k"]))


# ---- label-free criteria on sampled pixel codes ---------------------------------------------------------------

def sample_codes(embed, store: FeatureStore, n: int, seed: int) -> torch.Tensor:
    """`n` L2-normalised code vectors at random pixels of random training images."""
    g = torch.Generator().manual_seed(seed)
    rows = np.sort(torch.randperm(store.n, generator=g)[: min(store.n, 64)].numpy())
    with torch.no_grad():
        codes = torch.cat([embed(store.batch(rows[i:i + 16])) for i in range(0, len(rows), 16)])
    vecs = codes.permute(0, 2, 3, 1).reshape(-1, codes.shape[1])
    vecs = vecs[torch.randperm(len(vecs), generator=g)[:n]]
    return torch.nn.functional.normalize(vecs.float(), dim=1)


def rankme(x: torch.Tensor) -> float:
    """Effective rank of the code matrix: exp of the entropy of its normalised singular values."""
    s = torch.linalg.svdvals(x)
    p = s / s.sum() + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


def snd(x: torch.Tensor, temperature: float = 0.05) -> float:
    """Soft neighbourhood density: mean entropy of each point's softmax over cosine similarities to the others."""
    sim = x @ x.T / temperature
    sim.fill_diagonal_(-float("inf"))
    p = sim.softmax(1)
    return float(-(p * (p + 1e-12).log()).sum(1).mean())


def silhouette(x: torch.Tensor, assign: torch.Tensor, k: int) -> float:
    """Mean silhouette with cosine distance (points of singleton clusters count 0)."""
    d = 1 - x @ x.T
    onehot = torch.nn.functional.one_hot(assign, k).float()
    sums, sizes = d @ onehot, onehot.sum(0)
    own = sizes[assign]
    a = sums.gather(1, assign[:, None])[:, 0] / (own - 1).clamp(min=1)
    mean_other = sums / sizes.clamp(min=1)
    mean_other[torch.arange(len(x)), assign] = float("inf")
    mean_other[:, sizes == 0] = float("inf")
    b = mean_other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp(min=1e-12)
    return float(torch.where(own > 1, s, torch.zeros_like(s)).mean())


def matched_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of pixels on which two cluster maps agree after matching their clusters one to one."""
    return float(metrics.scores(metrics.confusion(a, b, k, k))["pixel_accuracy"]) / 100


# ---- one cell ---------------------------------------------------------------------------------------------------

class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def eval_rows(n: int, cap: int) -> range:
    """At most `cap` val images, evenly spaced (the CRF is the cost)."""
    step = max(1, -(-n // cap))
    return range(0, n, step)


def score(embed, tr: FeatureStore, val: FeatureStore, flips: FeatureStore, rows: range, k: int, cl: dict,
          seed: int, workers: int) -> tuple[dict, np.ndarray]:
    """K-Means of the training codes, then the cluster maps of the val images without and with the CRF: mIoU,
    and the label-free criteria. Returns the row and the raw cluster maps (for stability across seeds)."""
    def emb(f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return embed(f)

    cent, _ = spherical_kmeans(tr, emb, k, iterations=cl["iterations"], batch_images=cl["batch_images"],
                               init_images=cl["init_images"], n_init=cl["n_init"], seed=seed)
    with torch.no_grad():
        codes = {i: flip_tta_code(embed, val.batch([i]), flips.batch([i])) for i in rows}
    raw, crf = segment(lambda i: codes[i], val.dataset("image"), rows, cluster_log_probs(cent), crf_workers=workers)
    x = sample_codes(emb, tr, 2000, seed)
    assign = (x @ torch.from_numpy(cent).float().T).argmax(1)
    out = {"crf_agree": float((raw == crf).mean()), "rankme": rankme(x), "snd": snd(x),
           "silhouette": silhouette(x, assign, k)}
    labels = val.read("label", np.asarray(rows))
    for name, pred in (("raw", raw), ("crf", crf)):
        out[name] = float(metrics.scores(metrics.confusion(pred, labels, k, val.attrs["n_classes"]))["miou"])
    return out, raw


def linear_probe_miou(embed: torch.nn.Module, tr: FeatureStore, val: FeatureStore, rows: range, n_classes: int,
                      probe_settings: dict, seed: int) -> float:
    """mIoU (no CRF) of a linear probe trained on the training labels over these codes."""
    probe, _ = train_probe(tr, embed, n_classes, steps=probe_settings["steps"],
                           batch_size=probe_settings["batch_size"], lr=probe_settings["lr"], seed=seed)
    labels = val.read("label", np.asarray(rows))
    preds = []
    with torch.no_grad():
        for i in rows:
            logits = probe(embed(val.batch([i])))
            preds.append(torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                                         align_corners=False).argmax(1)[0].numpy())
    conf = metrics.confusion(np.stack(preds), labels, n_classes, n_classes)
    return float(metrics.scores(conf, hungarian=False)["miou"])


def take(claim: Path) -> bool:
    """Claim a cell for this process (several processes may share the grid)."""
    try:
        claim.open("x").close()
        return True
    except FileExistsError:
        return False


def run_cells(names: list[str], seeds: list[int], settings: list[str], steps: int, eval_cap: int, workers: int,
              out: Path, short: dict) -> None:
    """Append one row per dataset × seed × setting to `out` (cells already there are skipped). `short` overrides
    the preset's K-Means iterations and restarts and the probe's steps (a budget for 2 loaded cores)."""
    done = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["dataset", "seed", "setting"])
    have = set(zip(done["dataset"], done["seed"].astype(int), done["setting"], strict=True))
    maps_dir = WORK / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        config, r = resolved(name)
        d = WORK / name
        knn = np.load(d / f"knn{r['knn_k']}.npy")
        cl = {**r["cluster"], **{k: v for k, v in short.items() if k in ("iterations", "n_init") and v}}
        pr = stage_settings(config, name, "probe")
        pr["steps"] = short["probe_steps"] or pr["steps"]
        base = {**stage_settings(config, name, "train"), "steps": steps}
        cal = stage_settings(config, name, "calibrate")
        with FeatureStore(d / "train.h5") as tr, FeatureStore(d / "val.h5", max_memory_gb=0) as val, \
                FeatureStore(d / "val.h5", key="feats_flip", max_memory_gb=0) as flips:
            k = int(val.attrs["n_classes"])
            rows = eval_rows(val.n, eval_cap)
            for seed in seeds:
                values = None
                for setting in ["backbone_kmeans", *settings]:
                    claim = maps_dir / f"{name}_{setting}_seed{seed}.claim"
                    if (name, seed, setting) in have or not take(claim):
                        continue  # done, or another process (same --cells folder) runs it
                    t = time.perf_counter()
                    cell_steps = TRAIN_OVERRIDES.get(setting, {}).get("steps", steps)
                    row = {"dataset": name, "seed": seed, "setting": setting, "steps": cell_steps,
                           "kmeans_iterations": cl["iterations"], "n_init": cl["n_init"], "probe_steps": pr["steps"],
                           "n_train": tr.n, "n_eval": len(rows)}
                    if setting == "backbone_kmeans":
                        m, raw = score(Identity(), tr, val, flips, rows, k, cl, seed, workers)
                        m["probe"] = linear_probe_miou(RawFeatures(tr.dim), tr, val, rows, k, pr, seed)
                    else:
                        mode, spec = SETTINGS[setting]
                        if mode == "quantiles" and values is None:
                            values = term_correlations(tr, knn, {**cal, "seed": seed}, batches=cal["calibration"]
                                                       ["batches"], per_batch=cal["calibration"]["values_per_batch"],
                                                       seed=seed)
                        shifts = dict(spec) if mode == "fixed" else quantile_shifts(values, spec)
                        head, steplog = train(tr, knn, {**base, **TRAIN_OVERRIDES.get(setting, {}), "seed": seed,
                                                        "shifts": shifts}, device="cpu")
                        m, raw = score(head, tr, val, flips, rows, k, cl, seed, workers)
                        tail = steplog["total"].iloc[-max(1, cell_steps // 10):]
                        m["neg_loss"] = -float(tail.mean())
                        m["probe"] = linear_probe_miou(head, tr, val, rows, k, pr, seed)
                        row.update({f"shift_{t}": v for t, v in shifts.items()})
                    np.save(maps_dir / f"{name}_{setting}_seed{seed}.npy", raw)
                    row.update(m, seconds=round(time.perf_counter() - t, 1))
                    log.info("%s", json.dumps(row))
                    done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                    done.to_csv(out, index=False)


# ---- tables -----------------------------------------------------------------------------------------------------

def with_stability(cells: pd.DataFrame, maps: Path) -> pd.DataFrame:
    """Each cell's mean matched agreement of its raw cluster maps with those of the other seeds (same setting)."""
    cells = cells.copy()
    recorded = cells["stability"] if "stability" in cells else pd.Series(np.nan, index=cells.index)

    def path(c: pd.Series) -> Path:
        return maps / f"{c['dataset']}_{c['setting']}_seed{c['seed']}.npy"

    stab = []
    for i, c in cells.iterrows():
        others = cells[(cells["dataset"] == c["dataset"]) & (cells["setting"] == c["setting"])
                       & (cells["seed"] != c["seed"])]
        if not all(path(o).exists() for _, o in [(i, c), *others.iterrows()]):
            stab.append(float(recorded.loc[i]))  # maps of an earlier run are gone: keep what the CSV recorded
            continue
        mine = np.load(path(c))
        k = int(max(mine.max(), 1)) + 1
        vals = []
        for _, o in others.iterrows():
            theirs = np.load(path(o))
            kk = max(k, int(theirs.max()) + 1)
            vals.append(matched_agreement(mine, theirs, kk))
        stab.append(float(np.mean(vals)) if vals else np.nan)
    cells["stability"] = stab
    return cells


#: the calibration's two candidates in the grid: at the recipe's 400 steps where those cells exist, else at 100
RULE_PAIRS = (("q_default_400", "q_attract_400"), ("q_default", "q_attract"))


def current_rule(heads: pd.DataFrame, ratio: float = 0.8) -> pd.DataFrame:
    """Per seed, the cell the calibrate stage's rule would pick between its default and attracting candidates
    (the attracting one only if the CRF changes at most `ratio` times as many pixels), approximated here by the
    val images' CRF agreement of the grid's heads (the stage uses 200-step heads on training images). The pair
    is the first of `RULE_PAIRS` with both cells on a seed."""
    out = []
    for _, g in heads.groupby("seed"):
        by = g.set_index("setting")
        pair = next((p for p in RULE_PAIRS if set(p) <= set(by.index)), None)
        if pair is None:
            continue
        default, attracting = pair
        attract = 1 - by.loc[attracting, "crf_agree"] <= ratio * (1 - by.loc[default, "crf_agree"])
        out.append({"crf": by.loc[attracting if attract else default, "crf"], "pick": "A" if attract else "D"})
    return pd.DataFrame(out, columns=["crf", "pick"])


def cell(v: pd.Series) -> str:
    v = v.dropna()
    if len(v) == 0:
        return "—"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def summarize(cells: pd.DataFrame, maps: Path = WORK / "maps") -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Markdown tables, the leave-one-out and criteria tables and the cells with their stability (frames).
    The setting of a left-out dataset is the one with the best mean mIoU with the CRF over the other datasets
    (seeds averaged first)."""
    cells = with_stability(cells, maps)
    heads = cells[cells["setting"] != "backbone_kmeans"]
    names = list(dict.fromkeys(cells["dataset"]))
    mean = heads.groupby(["dataset", "setting"])["crf"].mean().unstack("setting")
    lodo, crit_rows = [], []
    names = [d for d in names if d in mean.index]  # datasets with at least one head
    for d in names:
        others = [o for o in names if o != d]
        chosen = mean.loc[others].mean().idxmax() if others else None  # chosen without d's labels
        oracle = mean.loc[d].idxmax()
        km = cells[(cells["dataset"] == d) & (cells["setting"] == "backbone_kmeans")]
        ch = heads[(heads["dataset"] == d) & (heads["setting"] == chosen)]
        orc = heads[(heads["dataset"] == d) & (heads["setting"] == oracle)]
        rule = current_rule(heads[heads["dataset"] == d])
        lodo.append({"dataset": d, "seeds": len(km), "chosen": chosen, "oracle": oracle,
                     "rule_crf": cell(rule["crf"]), "rule_picks": "".join(rule["pick"]),
                     "kmeans_raw": cell(km["raw"]), "kmeans_crf": cell(km["crf"]),
                     "head_raw": cell(ch["raw"]), "head_crf": cell(ch["crf"]),
                     "oracle_raw": cell(orc["raw"]), "oracle_crf": cell(orc["crf"]),
                     "probe_codes": cell(ch["probe"]), "probe_raw": cell(km["probe"]),
                     "head_minus_kmeans_crf_per_seed": " / ".join(
                         f"{a - b:+.1f}" for a, b in zip(ch.sort_values("seed")["crf"], km.sort_values("seed")["crf"],
                                                         strict=False))})
        per = heads[heads["dataset"] == d].groupby("setting")
        mi = per["crf"].mean()
        for c in CRITERIA:
            v = per[c].mean()
            rho = spearmanr(v, mi.loc[v.index]).statistic if v.notna().sum() > 2 else np.nan
            pick = v.idxmax() if v.notna().any() else None
            crit_rows.append({"dataset": d, "criterion": c, "spearman": rho, "pick": pick,
                              "regret": float(mi.max() - mi.loc[pick]) if pick else np.nan})
    lodo_df, crit_df = pd.DataFrame(lodo), pd.DataFrame(crit_rows)
    lines = ["| left-out dataset | seeds | setting chosen on the others | raw K-Means (no CRF / CRF) | head "
             "(no CRF / CRF) | oracle of the grid (no CRF / CRF) | linear probe, codes / raw features (no CRF) | "
             "head − K-Means with CRF per seed | calibrate's rule (approx.), CRF; picks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in lodo:
        lines.append(f"| {r['dataset']} | {r['seeds']} | {r['chosen']} | {r['kmeans_raw']} / {r['kmeans_crf']} | "
                     f"{r['head_raw']} / {r['head_crf']} | {r['oracle']}: {r['oracle_raw']} / {r['oracle_crf']} | "
                     f"{r['probe_codes']} / {r['probe_raw']} | {r['head_minus_kmeans_crf_per_seed']} | "
                     f"{r['rule_crf']}; {r['rule_picks']} |")
    lines += ["", "Every grid setting, mIoU with CRF (mean ± std over seeds):", "",
              "| dataset | " + " | ".join(mean.columns) + " |", "|---|" + "---|" * len(mean.columns)]
    for d in names:
        sub = heads[heads["dataset"] == d]
        lines.append(f"| {d} | " + " | ".join(cell(sub[sub["setting"] == s]["crf"]) for s in mean.columns) + " |")
    overall = mean.loc[names].mean()
    lines.append("| **mean over the datasets** (the recipe's choice: the best) | "
                 + " | ".join(f"{v:.2f}" for v in overall) + " |")
    lines += ["", "Label-free criteria: Spearman with the mIoU with CRF over the grid / regret of the criterion's "
              "pick (mIoU points below the best setting):", "",
              "| criterion | " + " | ".join(names) + " | mean regret |", "|---|" + "---|" * (len(names) + 1)]
    for c, label in CRITERIA.items():
        sub = crit_df[crit_df["criterion"] == c].set_index("dataset")
        lines.append(f"| {label} | " + " | ".join(
            f"{sub.loc[d, 'spearman']:.2f} / {sub.loc[d, 'regret']:.1f}" for d in names)
            + f" | {sub['regret'].mean():.1f} |")
    return "\n".join(lines), lodo_df, crit_df, cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["stores", "cells", "summarize"])
    p.add_argument("--only", nargs="*", default=list(DATASETS), help="datasets")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="*", default=list(SETTINGS))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-images", type=int, default=40, help="val images scored per cell (evenly spaced)")
    p.add_argument("--workers", type=int, default=2, help="torch threads and CRF workers")
    p.add_argument("--kmeans-iterations", type=int, help="default: the preset's")
    p.add_argument("--n-init", type=int, help="K-Means restarts (default: the preset's)")
    p.add_argument("--probe-steps", type=int, help="linear probe steps (default: the preset's)")
    p.add_argument("--cells", type=Path, nargs="+", default=[BENCH / "domains_cells.csv"],
                   help="cells CSV (cells: the one to append to; summarize: all of them, combined into the first)")
    a = p.parse_args()
    setup_logging()
    torch.set_num_threads(a.workers)
    if a.what == "stores":
        for name in a.only:
            make_stores(name, a.workers)
    elif a.what == "cells":
        run_cells(a.only, a.seeds, a.settings, a.steps, a.eval_images, a.workers, a.cells[0],
                  {"iterations": a.kmeans_iterations, "n_init": a.n_init, "probe_steps": a.probe_steps})
    else:
        cells = pd.concat([pd.read_csv(c) for c in a.cells if c.exists()], ignore_index=True)
        cells = cells.drop_duplicates(["dataset", "seed", "setting"], keep="last")
        text, lodo, crit, cells = summarize(cells)
        cells.to_csv(a.cells[0], index=False)  # with the stability across seeds, for a rerun without the maps
        lodo.to_csv(BENCH / "domains_lodo.csv", index=False)
        crit.to_csv(BENCH / "domains_criteria.csv", index=False, float_format="%.3f")
        print(text)


if __name__ == "__main__":
    main()
