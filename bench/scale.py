"""How each stage's time and memory grow with the training set: a COCO-shaped synthetic run at several sizes.

    python bench/scale.py                           # 1,000 / 10,000 / 50,000 training samples (~20 min, 2 idle cores)
    python bench/scale.py --samples 1000 5000       # other sizes
    python bench/scale.py --samples 1000 --val-images 240   # the validation stages on another split
    python bench/scale.py --report                  # only re-read the finished sizes' benchmark files

Each size is one fresh run of the real workflow (`snakemake -s Snakefile -d <size folder> --configfile <size
config> results/scale/miou.csv`) on rendered demo scenes, shaped like the COCO-Stuff preset: five-crops of
every training image (so a size of N samples renders N / 5 scenes), JPEG-re-encoded, KNN over all crops, the
calibration, head, K-Means, linear probes, CRF and evaluation, with a small random ViT (`dino_vits16_random`)
at 64² for training and 96² for evaluation. The validation split and every step count are the same at every
size, so only what depends on the training set can grow. Reads each job's wall time (`s`) and peak RSS
(`max_rss`) from Snakemake's benchmark files (a stage's shards summed, its peak the largest), prints the size ×
stage table and the growth exponents between consecutive sizes (log time ratio / log sample ratio, and the
same for memory), checks them, and extrapolates each stage to COCO-Stuff's 488,510 training crops and 2,175
validation images. Writes bench/scale.csv with every finished size under --out (results/bench/scale/<samples>/);
a finished size is not rerun (delete its folder to measure again). The machine's load average at each size's start
and end goes beside its rows (a shared machine's load changes every time).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stages import ORDER, ROOT, stage_table  # noqa: E402

from stego_steps.resources import RULES  # noqa: E402

log = logging.getLogger("bench.scale")

DATASET = "scale"
TARGET = f"results/{DATASET}/miou.csv"
COCO_TRAIN_CROPS = 97_702 * 5
COCO_VAL_IMAGES = 2_175
VAL_IMAGES = 60
# Stages that only read the validation split (or a fixed number of steps): their work does not depend on the
# training set, so at COCO size they grow with the validation images instead.
VAL_STAGES = {"plan val", "extract val", "gather_features val", "predict", "segment", "evaluate"}
# Stages with a job per split, told apart because only their train jobs see the training set.
PER_SPLIT = {"plan", "extract", "gather_features"}
FOLDER = re.compile(r"(\d+)(?:_val(\d+))?")
SPLIT = re.compile(r"\.(train|val)\.(\d+-of-\d+\.)?tsv$")
# The one stage allowed to grow faster than linearly: the exact all-against-all KNN search.
SUPERLINEAR_ALLOWED = {"knn"}
# Stages whose memory may grow with the training set, and why: those that the one resource table
# (stego_steps/resources.py, the README's "What each job asks for") lets hold the training store in memory (up
# to the memory budget, streamed above it) or every sample's pooled descriptor (the exact KNN search).
MEMORY_ALLOWED = {
    name: "holds the training store in memory up to the budget" if rule.holds_store else
    "holds every sample's pooled descriptor"
    for name, rule in RULES.items() if rule.holds_store or rule.holds_pooled
}
# When a size ran and the machine's 5-minute load average at its start and end (a size folder's load.json).
LOAD_COLUMNS = ["start_utc", "load_start", "load_end"]
TIME_TOLERANCE = 1.15  # exponents up to this are linear within the noise of a shared 2-core machine
MEMORY_TOLERANCE = 0.1  # ×10 samples → at most ×1.26 peak RSS counts as not growing


def scale_config(samples: int, steps: int = 50, val_images: int = VAL_IMAGES) -> dict:
    """Config overrides (merged over config/config.yaml) for a COCO-shaped run on `samples` training crops."""
    if samples % 5:
        raise ValueError(f"samples must be a multiple of 5 (five crops per scene), got {samples}")
    return {
        "run": [DATASET],
        "device": "cpu",
        "offline": True,
        "datasets": {DATASET: {
            "kind": "demo",
            "preset": "demo",
            "root": f"results/{DATASET}/data",
            # 128² scenes: five-crops of 64² train at 64² (no resizing); the val scenes are cropped to 96².
            "generator": {"n_train": samples // 5, "n_val": val_images, "height": 128, "width": 128, "seed": 0},
            "overrides": {
                "backbone": "dino_vits16_random",
                "train_res": 64,
                "eval_res": 96,
                "five_crop": True,
                "crop_ratio": 0.5,
                "jpeg_quality": 75,
                "extract_batch": 64,
                "calibrate": True,
                "calibration": {"batches": 4, "selection": {"steps": 20, "images": 8}},
                "train": {"batch_size": 16, "steps": steps, "checkpoint_every": steps},
                "cluster": {"iterations": 20, "batch_images": 16, "init_images": 32, "n_init": 2},
                "probe": {"steps": steps, "batch_size": 16},
            },
        }},
    }


def size_folder(samples: int, val_images: int = VAL_IMAGES) -> str:
    """The folder of one size under --out: `<samples>`, or `<samples>_val<n>` for another validation split."""
    return str(samples) if val_images == VAL_IMAGES else f"{samples}_val{val_images}"


def run_size(workdir: Path, configfile: Path, cores: int) -> float:
    """One run of the real workflow to the dataset's table; returns its wall seconds."""
    cmd = [sys.executable, "-m", "snakemake", TARGET, "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", str(cores), "--quiet", "rules", "--configfile", str(configfile)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def size_stages(workdir: Path) -> pd.DataFrame:
    """Stage → jobs, wall seconds (sum over the stage's jobs) and peak RSS in MB (the largest job's)."""
    jobs = stage_table(workdir)
    split = [SPLIT.search(job) for job in jobs["job"]]
    jobs["stage"] = [f"{stage} {m.group(1)}" if stage in PER_SPLIT and m else stage
                     for stage, m in zip(jobs["stage"], split, strict=True)]
    table = jobs.groupby("stage").agg(jobs=("job", "count"), wall_s=("wall_s", "sum"),
                                      max_rss_mb=("max_rss_mb", "max"))
    return table.reindex(sorted(table.index, key=_order))


def scale_table(per_size: dict[int | tuple[int, int], pd.DataFrame]) -> pd.DataFrame:
    """Long table: one row per size and stage (samples, val_images, stage, jobs, wall_s, max_rss_mb); a size is
    its training samples, or (samples, validation images) for a run on another validation split."""
    frames = []
    for key, t in per_size.items():
        n, v = key if isinstance(key, tuple) else (key, VAL_IMAGES)
        frames.append(t.reset_index().rename(columns={"index": "stage"}).assign(samples=n, val_images=v))
    table = pd.concat(frames, ignore_index=True)
    columns = ["samples", "val_images", "stage", "jobs", "wall_s", "max_rss_mb"]
    columns += [c for c in LOAD_COLUMNS if c in table.columns]
    return table[columns].sort_values(
        ["val_images", "samples", "stage"], key=lambda c: c.map(_order) if c.name == "stage" else c, kind="stable"
    ).reset_index(drop=True)


def split_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs on the fixed validation split, and the runs of one training size on several validation splits
    (samples, val_images, ...; empty when no other split was measured)."""
    main = table[table["val_images"] == VAL_IMAGES]
    counts = table.groupby("samples")["val_images"].nunique()
    varied = counts[counts > 1]
    val = table[table["samples"] == varied.index.min()] if len(varied) else table.iloc[:0]
    return main.reset_index(drop=True), val.reset_index(drop=True)


def _order(stage: str) -> tuple[int, str]:
    """The workflow's order of stages, a split's jobs (`extract train`, `extract val`) in place of the stage."""
    base = stage.split(" ")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), stage)


def growth(table: pd.DataFrame) -> pd.DataFrame:
    """Per stage and consecutive pair of sizes: the time and memory exponents log(ratio) / log(sample ratio)."""
    rows = []
    sizes = sorted(table["samples"].unique())
    by = table.set_index(["samples", "stage"])
    for small, large in zip(sizes, sizes[1:], strict=False):
        scale = math.log(large / small)
        for stage in table["stage"].unique():
            if (small, stage) not in by.index or (large, stage) not in by.index:
                continue
            a, b = by.loc[(small, stage)], by.loc[(large, stage)]
            rows.append({"stage": stage, "small": small, "large": large,
                         "time_exp": math.log(b["wall_s"] / a["wall_s"]) / scale,
                         "rss_exp": math.log(b["max_rss_mb"] / a["max_rss_mb"]) / scale})
    return pd.DataFrame(rows, columns=["stage", "small", "large", "time_exp", "rss_exp"])


def memory_growth(exponents: pd.DataFrame) -> pd.Series:
    """Per stage, the peak-RSS exponent over the whole range of sizes: log(last / first) / log(sample ratio)."""
    span = exponents.assign(w=np.log(exponents["large"] / exponents["small"]))
    return span.groupby("stage", sort=False).apply(lambda r: float((r["rss_exp"] * r["w"]).sum() / r["w"].sum()),
                                                   include_groups=False)


def check(exponents: pd.DataFrame) -> list[str]:
    """What breaks the promises: a stage other than the KNN table growing faster than linearly in time, or a
    stage whose memory grows with the images for no stated reason. Time is judged between the two largest sizes
    (the smaller ones are dominated by start-up), memory over the whole range of sizes (a peak RSS differs by
    a few hundred MB between runs of one size, depending on when the benchmark's sampling catches it)."""
    if exponents.empty:
        return []
    last = exponents[exponents["large"] == exponents["large"].max()]
    problems = []
    for row in last.itertuples():
        if row.stage not in SUPERLINEAR_ALLOWED and row.time_exp > TIME_TOLERANCE:
            problems.append(f"{row.stage}: time grows as samples^{row.time_exp:.2f} ({row.small} → {row.large})")
    for stage, rss_exp in memory_growth(exponents).items():
        if stage.split(" ")[0] not in MEMORY_ALLOWED and rss_exp > MEMORY_TOLERANCE:
            problems.append(f"{stage}: peak RSS grows as samples^{rss_exp:.2f} ({exponents['small'].min()} → "
                            f"{exponents['large'].max()})")
    return problems


def extrapolate(table: pd.DataFrame, exponents: pd.DataFrame, train_samples: int = COCO_TRAIN_CROPS,
                val_images: int = COCO_VAL_IMAGES, measured_val: int = VAL_IMAGES,
                val_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each stage's time at `train_samples` (and `val_images`) from the largest size and its last exponent.

    A training-set stage: t · (N / n)^p with p the exponent between the two largest sizes, floored at 0 (a
    shrinking time is noise). A validation stage (`VAL_STAGES`): the same in the validation images from
    `val_table` (one training size on several validation splits, `split_table`), else linear in them.
    `fit_s`: the same from a least-squares fit through every size, start-up + cost × samples (× samples² for
    the KNN search; × validation images for a validation stage). Times are this simulation's (random ViT-S/16
    at 64² on this CPU, the same steps), so what carries over to a real run is each stage's growth, not its
    seconds."""
    largest = table["samples"].max()
    at = table[table["samples"] == largest].set_index("stage")
    last = exponents[exponents["large"] == largest].set_index("stage") if not exponents.empty else pd.DataFrame()
    rows = []
    for stage, row in at.iterrows():
        vals = None if val_table is None else val_table[val_table["stage"] == stage]
        if stage in VAL_STAGES and vals is not None and vals["val_images"].nunique() > 1:
            small, large = vals.nsmallest(1, "val_images").iloc[0], vals.nlargest(1, "val_images").iloc[0]
            q = max(math.log(large["wall_s"] / small["wall_s"]) / math.log(large["val_images"] / small["val_images"]),
                    0.0)
            rule = f"(V ratio {val_images / large['val_images']:.1f})^{q:.2f}"
            power = large["wall_s"] * (val_images / large["val_images"]) ** q
            affine = _affine(vals.rename(columns={"samples": "n", "val_images": "samples"}), val_images)
        elif stage in VAL_STAGES:
            factor = val_images / measured_val
            rule, power, affine = f"× V ratio {factor:.1f}", row["wall_s"] * factor, row["wall_s"] * factor
        else:
            p = max(float(last.loc[stage, "time_exp"]), 0.0) if stage in last.index else 1.0
            rule = f"(N ratio {train_samples / largest:.1f})^{p:.2f}"
            power = row["wall_s"] * (train_samples / largest) ** p
            affine = _affine(table[table["stage"] == stage], train_samples, 2 if stage in SUPERLINEAR_ALLOWED else 1)
        rows.append({"stage": stage, "measured_s": row["wall_s"], "rule": rule, "estimate_s": power,
                     "fit_s": affine})
    frame = pd.DataFrame(rows)
    frame.loc[len(frame)] = {"stage": "total", "measured_s": frame["measured_s"].sum(), "rule": "",
                             "estimate_s": frame["estimate_s"].sum(), "fit_s": frame["fit_s"].sum()}
    return frame


def _affine(rows: pd.DataFrame, samples: int, power: int = 1) -> float:
    """A stage's time at `samples` from a least-squares fit start-up + cost × samples^power through its sizes
    (power 2 for the exact KNN search, which compares every pair; a negative cost counts as none): unlike the
    power law between two sizes it does not let a fixed start-up hide the growth."""
    if len(rows) < 2:
        return float(rows["wall_s"].iloc[-1])
    slope, intercept = np.polyfit(rows["samples"].astype(float) ** power, rows["wall_s"].astype(float), 1)
    return float(intercept + slope * samples**power) if slope > 0 else float(rows["wall_s"].mean())


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """Stage × size of 'seconds / MB' cells, for printing."""
    cells = table.assign(cell=[f"{s:.1f} s / {m:.0f} MB"
                               for s, m in zip(table["wall_s"], table["max_rss_mb"], strict=True)])
    out = cells.pivot(index="stage", columns="samples", values="cell")
    return out.reindex(sorted(out.index, key=_order))


def report(runs: pd.DataFrame) -> None:
    table, val_table = split_table(runs)
    exponents = growth(table)
    print("wall seconds / peak RSS per stage and training samples:")
    print(wide(table).to_string())
    totals = table.groupby("samples")["wall_s"].sum()
    print("sum of job wall times: " + ", ".join(f"{n}: {s:.0f} s" for n, s in totals.items()))
    if set(LOAD_COLUMNS) <= set(table.columns):
        load = table.groupby("samples")[LOAD_COLUMNS].first().dropna()
        print("5-minute load average at start → end (2 cores): " + ", ".join(
            f"{n}: {r.load_start:.1f} → {r.load_end:.1f} ({r.start_utc} UTC)" for n, r in load.iterrows()))
    if not exponents.empty:
        print("\ngrowth exponents (log ratio / log sample ratio):")
        shown = exponents.assign(pair=[f"{a}→{b}" for a, b in zip(exponents["small"], exponents["large"], strict=True)])
        print(shown.pivot(index="stage", columns="pair", values=["time_exp", "rss_exp"])
              .reindex(sorted(shown["stage"].unique(), key=_order)).to_string(float_format=lambda v: f"{v:.2f}"))
        problems = check(exponents)
        grown = {st: e for st, e in memory_growth(exponents).items() if e > MEMORY_TOLERANCE}
        print("\ncheck: " + ("; ".join(problems) if problems else
                             "no stage but knn grows faster than linearly; peak RSS grows only where allowed: "
                             + "; ".join(f"{st} (samples^{e:.2f}: {MEMORY_ALLOWED[st.split(' ')[0]]})"
                                         for st, e in grown.items())))
        if not val_table.empty:
            print(f"\nvalidation stages on {val_table['samples'].iloc[0]} training samples and several validation "
                  "splits:")
            shown = val_table[val_table["stage"].isin(VAL_STAGES)]
            print(wide(shown.assign(samples=shown["val_images"])).rename_axis(columns="val images").to_string())
        estimate = extrapolate(table, exponents, val_table=None if val_table.empty else val_table)
        print(f"\nextrapolated to COCO-Stuff ({COCO_TRAIN_CROPS:,} training crops, {COCO_VAL_IMAGES:,} val images),"
              " this simulation's rates:")
        print(estimate.to_string(index=False, float_format=lambda v: f"{v:.1f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--steps", type=int, default=50, help="training and probe steps (the same at every size)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/scale"))
    parser.add_argument("--csv", type=Path, default=Path(__file__).resolve().parent / "scale.csv")
    parser.add_argument("--val-images", type=int, nargs="+", default=[VAL_IMAGES],
                        help="validation scenes; sizes other than the default go to <samples>_val<n> folders")
    parser.add_argument("--report", action="store_true", help="only read the finished sizes, run nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for n in [] if args.report else sorted(args.samples):
        for v in args.val_images:
            workdir = (args.out / size_folder(n, v)).resolve()
            if (workdir / TARGET).exists():
                log.info("%d samples, %d val images: finished before, not rerun (%s)", n, v, workdir)
                continue
            workdir.mkdir(parents=True, exist_ok=True)
            configfile = workdir / "scale.yaml"
            configfile.write_text(yaml.safe_dump(scale_config(n, args.steps, v)))
            load = {"start_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_start": os.getloadavg()[1]}
            elapsed = run_size(workdir, configfile, args.cores)
            # The machine is shared: the 5-minute load average beside the times says how loaded it was.
            (workdir / "load.json").write_text(json.dumps({**load, "load_end": os.getloadavg()[1]}))
            log.info("%d samples, %d val images: %.1f s this call (%s)", n, v, elapsed, workdir)
    # Every finished size under --out, so that sizes measured by separate calls share one table.
    per_size = {}
    for d in sorted(args.out.glob("*")):
        if (m := FOLDER.fullmatch(d.name)) and (d / TARGET).exists():
            load = json.loads((d / "load.json").read_text()) if (d / "load.json").exists() else {}
            per_size[(int(m.group(1)), int(m.group(2) or VAL_IMAGES))] = size_stages(d).assign(**load)
    if not per_size:
        raise SystemExit(f"no finished size under {args.out}")
    table = scale_table(per_size)
    report(table)
    table.to_csv(args.csv, index=False, float_format="%.2f")
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
