"""Wall time and peak memory of every stage of the demo, from Snakemake's benchmark files.

    python bench/stages.py                     # runs the demo in a fresh temporary directory
    python bench/stages.py --workdir DIR       # reuses (or fills) DIR; finished stages are not rerun
    python bench/stages.py --configfile X.yaml # another configuration (e.g. tests/data/tiny_config.yaml)

Prints a table (stage, jobs, wall seconds, peak RSS) and the total; times include each job's Python start-up.
Then the start-up of every stage module alone (a fresh interpreter importing it: wall seconds, and whether torch
came with it), the median of `--startup-runs` runs, written to results/bench/startup.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_demo(workdir: Path, configfile: Path | None, cores: int, targets: tuple[str, ...] = ()) -> float:
    """Run the workflow (its default target, or `targets`) in `workdir`; returns the wall time in seconds."""
    # Targets first: --quiet and --configfile take several values and would swallow them.
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", str(cores), "--quiet", "rules"]
    if configfile:
        cmd += ["--configfile", str(configfile)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


ORDER = ["render_demo", "prepare", "plan", "extract", "gather_features", "knn", "calibrate", "train", "cluster",
         "backbone_kmeans", "backbone_linear", "linear_probe", "predict", "segment", "evaluate", "figure_panels",
         "figure_metrics", "figure_training", "figure_correlations"]


def stage_of(tsv: Path) -> str:
    """The rule of a benchmark file: files are named after their rule, with what it makes after a dot
    (`<run>/train.tsv`, `<baseline>/segment.backbone_kmeans.1-of-1.tsv`, `features/<key>/extract.train.1-of-1.tsv`);
    jobs outside results/ sit in a folder named after it (`render_demo/<root>.tsv`)."""
    stem = tsv.name.split(".")[0]
    if stem in ORDER:
        return stem
    return next((part for part in reversed(tsv.parts) if part in ORDER), tsv.parent.name)


def stage_table(workdir: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((workdir / "benchmarks").rglob("*.tsv")):
        bench = pd.read_csv(tsv, sep="\t")
        rows.append({"stage": stage_of(tsv), "job": str(tsv.relative_to(workdir / "benchmarks")),
                     "wall_s": bench["s"].iloc[-1], "max_rss_mb": bench["max_rss"].iloc[-1]})
    return pd.DataFrame(rows)


STAGES = ["prepare", "plan", "extract", "knn", "calibrate", "train", "cluster", "probe", "predict", "segment",
          "evaluate", "figures", "tables"]


def startup_table(runs: int = 3) -> pd.DataFrame:
    """Wall seconds for a fresh interpreter to import each stage module (median of `runs`), and whether torch
    is imported with it: what every job of that stage pays before its work (the CRF's spawned workers import
    the segment stage too)."""
    code = ("import sys, time; t = time.perf_counter(); import stego_steps.stages.{}; "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    rows = []
    for stage in STAGES:
        times, torch_loaded = [], False
        for _ in range(runs):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code.format(stage)], check=True, capture_output=True,
                                 text=True, cwd=ROOT).stdout.split()
            times.append(time.perf_counter() - start)
            torch_loaded = out[1] == "True"
        rows.append({"stage": stage, "startup_s": sorted(times)[len(times) // 2], "imports_torch": torch_loaded})
    return pd.DataFrame(rows).set_index("stage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--configfile", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--startup-only", action="store_true", help="only the start-up table (no workflow run)")
    args = parser.parse_args()
    out = Path("results/bench")
    out.mkdir(parents=True, exist_ok=True)
    if args.startup_only:
        startup = startup_table(args.startup_runs)
        print(startup.to_string(float_format=lambda v: f"{v:.2f}"))
        startup.to_csv(out / "startup.csv")
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stego-bench-"))
    elapsed = run_demo(workdir, args.configfile, args.cores)
    jobs = stage_table(workdir)
    table = (jobs.groupby("stage").agg(jobs=("job", "count"), wall_s=("wall_s", "sum"),
                                       max_rss_mb=("max_rss_mb", "max"))
             .reindex([s for s in ORDER if s in set(jobs["stage"])]))
    print(f"workdir: {workdir}")
    print(table.to_string(float_format=lambda v: f"{v:.1f}"))
    print(f"sum of job wall times: {table['wall_s'].sum():.1f} s; snakemake wall time this call: {elapsed:.1f} s")
    table.assign(snakemake_wall_s=elapsed).to_csv(out / "stages.csv")
    startup = startup_table(args.startup_runs)
    print("start-up of each stage (a fresh interpreter importing its module, median):")
    print(startup.to_string(float_format=lambda v: f"{v:.2f}"))
    startup.to_csv(out / "startup.csv")


if __name__ == "__main__":
    main()
