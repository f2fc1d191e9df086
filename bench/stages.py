"""Wall time and peak memory of every stage of the demo, from Snakemake's benchmark files.

    python bench/stages.py                     # runs the demo in a fresh temporary directory
    python bench/stages.py --workdir DIR       # reuses (or fills) DIR; finished stages are not rerun
    python bench/stages.py --configfile X.yaml # another configuration (e.g. tests/data/tiny_config.yaml)

Prints a table (stage, jobs, wall seconds, peak RSS) and the total; times include each job's Python start-up.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--configfile", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stego-bench-"))
    elapsed = run_demo(workdir, args.configfile, args.cores)
    jobs = stage_table(workdir)
    table = (jobs.groupby("stage").agg(jobs=("job", "count"), wall_s=("wall_s", "sum"),
                                       max_rss_mb=("max_rss_mb", "max"))
             .reindex([s for s in ORDER if s in set(jobs["stage"])]))
    print(f"workdir: {workdir}")
    print(table.to_string(float_format=lambda v: f"{v:.1f}"))
    print(f"sum of job wall times: {table['wall_s'].sum():.1f} s; snakemake wall time this call: {elapsed:.1f} s")
    out = Path("results/bench")
    out.mkdir(parents=True, exist_ok=True)
    table.assign(snakemake_wall_s=elapsed).to_csv(out / "stages.csv")


if __name__ == "__main__":
    main()
