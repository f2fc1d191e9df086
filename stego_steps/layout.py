"""Where the workflow's files go: the results layout, and the logs and benchmarks, which mirror it.

A run is one variant of a dataset trained with one seed; everything from training onward is its own. Feature
stores and baselines are keyed by what produced them, so that variants with the same extraction share them.
Pure string functions: the rule files and the library read these, no other copy of a path exists.
"""

from __future__ import annotations

#: The templates the rules' outputs are written with (Snakemake wildcards in braces).
RUN = "results/{ds}/runs/{variant}/seed{seed}"
BASELINE = "results/{ds}/baselines/{bkey}/seed{seed}"
FEATURES = "results/{ds}/features/{fkey}"


def run_dir(ds: str, variant: str, seed: int | str) -> str:
    return RUN.format(ds=ds, variant=variant, seed=seed)


def baseline_dir(ds: str, bkey: str, seed: int | str) -> str:
    return BASELINE.format(ds=ds, bkey=bkey, seed=seed)


def features_dir(ds: str, fkey: str) -> str:
    return FEATURES.format(ds=ds, fkey=fkey)


def table_name(labelled: bool) -> str:
    """A run's table: the metrics when the dataset has labels, else the cluster pixel shares."""
    return "miou.csv" if labelled else "clusters.csv"


def figure_files(run: str, labelled: bool, rows: list[str]) -> list[str]:
    """Every picture of a run folder: the metrics pictures (one confusion matrix per row key) only with labels."""
    base = f"{run}/figures"
    files = [f"{base}/panels.png", f"{base}/training.png", f"{base}/correlations.png"]
    if labelled:
        files.extend(f"{base}/confusion_{row}.png" for row in rows)
        files.append(f"{base}/per_class_iou.png")
    return files


def table_files(main: bool, ablation: list[str]) -> list[str]:
    """The experiment tables (CSV and Markdown): the main table if any dataset is listed, one ablation each."""
    names = (["main"] if main else []) + [f"ablation_{ds}" for ds in ablation]
    return [f"results/tables/{name}.{ext}" for name in names for ext in ("csv", "md")]


def shard(scatteritem: str) -> tuple[int, int]:
    """(0-based shard, number of shards) of a scatter item `i-of-n`."""
    i, n = scatteritem.split("-of-")
    return int(i) - 1, int(n)


# Logs and benchmarks mirror the results: a job's log is `logs/<the folder under results/ that its outputs belong
# to: run, baseline, feature store, index, dataset>/<rule>.log`, with what it makes there after a dot where the rule
# makes several (`features/<key>/extract.train.1-of-4.log`, `runs/default/seed0/segment.cluster.1-of-1.log`); its
# time and memory take the same path under benchmarks/ (`.tsv`). Jobs whose outputs lie outside results/
# (downloads, the demo's scenes, curated lists) log under `logs/<rule>/`.
def mirror(template: str, root: str) -> str:
    """The folder under `root` (logs, benchmarks) that mirrors a results folder template."""
    return root + template.removeprefix("results")


RUN_LOGS, RUN_BENCHMARKS = mirror(RUN, "logs"), mirror(RUN, "benchmarks")
BASELINE_LOGS, BASELINE_BENCHMARKS = mirror(BASELINE, "logs"), mirror(BASELINE, "benchmarks")
FEATURE_LOGS, FEATURE_BENCHMARKS = mirror(FEATURES, "logs"), mirror(FEATURES, "benchmarks")
