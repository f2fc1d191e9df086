"""The configured experiment as the workflow sees it: every dataset's variants resolved once, the keys of the
feature stores and baselines they share, the checks that must fail before any job runs, and the runs that each
table and target names. Built once per Snakemake invocation from the validated config; no Snakemake import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from stego_steps import backbone_specs, datasets, layout
from stego_steps import validate as stego_validate
from stego_steps.config import (
    DEFAULT_VARIANT,
    ConfigError,
    ablation_axes,
    backbone_layers,
    baseline_key,
    check_experiments,
    dataset_settings,
    features_key,
    index_name,
    is_ablation,
    resolve,
    seeds,
    variants,
)
from stego_steps.errors import UserError
from stego_steps.index import SPLITS
from stego_steps.protocol import ROWS, row_key
from stego_steps.targets import Dataset


def wildcard_values(wildcards: Any) -> dict[str, str]:
    """A job's wildcards as a plain dict (Snakemake's Wildcards, or any mapping)."""
    return dict(wildcards.items())


class Experiment:
    """`resolved[ds][variant]`: the hyper-parameters every stage of that variant's runs reads.
    `feature_key` / `baseline_key[ds][variant]`: the folders of its stores and baselines; `features` /
    `baselines[(ds, key)]`: the first variant that needs that folder (whose settings its jobs use)."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.resolved: dict[str, dict[str, dict]] = {}
        self.feature_key: dict[str, dict[str, str]] = {}
        self.baseline_key: dict[str, dict[str, str]] = {}
        self.features: dict[tuple[str, str], str] = {}
        self.baselines: dict[tuple[str, str], str] = {}
        try:
            check_experiments(config)
            for ds in config["datasets"]:
                self.resolved[ds] = {v: resolve(config, ds, v) for v in variants(config, ds)}
                self.feature_key[ds] = {v: features_key(config, ds, v) for v in self.resolved[ds]}
                self.baseline_key[ds] = {v: baseline_key(config, ds, v) for v in self.resolved[ds]}
                for v in self.resolved[ds]:
                    self.features.setdefault((ds, self.feature_key[ds][v]), v)
                    self.baselines.setdefault((ds, self.baseline_key[ds][v]), v)
        except ConfigError as err:
            raise ConfigError(f"config/config.yaml: {err}") from None
        for ds in config["run"]:
            if ds not in config["datasets"]:
                raise ConfigError(f"config/config.yaml: run lists '{ds}', which is not under `datasets:`")

    # ----- variants

    def variant_names(self) -> list[str]:
        return sorted({v for by_variant in self.resolved.values() for v in by_variant})

    def trained(self) -> list[str]:
        """Variants that train a head (the others import a released checkpoint's head and probes)."""
        return sorted({v for by in self.resolved.values() for v, r in by.items() if not r["checkpoint"]})

    def imported(self) -> list[str]:
        return sorted({v for by in self.resolved.values() for v, r in by.items() if r["checkpoint"]})

    def variant_of(self, wildcards: Mapping[str, str]) -> str:
        """The variant whose settings a job uses: its own, or the first one that needs its features or baseline."""
        if "variant" in wildcards:
            return wildcards["variant"]
        if "fkey" in wildcards:
            return self.features[(wildcards["ds"], wildcards["fkey"])]
        return self.baselines[(wildcards["ds"], wildcards["bkey"])]

    def owner_variant(self, ds: str, owner: str) -> tuple[str, str, int]:
        """(runs|baselines, variant, seed) of a segmentation's owner `runs/<variant>/seed<N>` or
        `baselines/<key>/seed<N>`."""
        kind, name, seed = owner.split("/")
        return kind, name if kind == "runs" else self.baselines[(ds, name)], int(seed.removeprefix("seed"))

    def index_variant(self, ds: str, idx: str) -> str:
        """The first variant that trains on index folder `idx`."""
        return next(v for v in self.resolved[ds] if index_name(self.resolved[ds][v]) == idx)

    def run_seeds(self, ds: str, variant: str) -> list[int]:
        """The seeds of a variant's runs: one for an imported checkpoint (nothing of it depends on the seed)."""
        return seeds(self.config, ds)[:1] if self.resolved[ds][variant]["checkpoint"] else seeds(self.config, ds)

    # ----- paths of a variant

    def features_dir(self, ds: str, variant: str) -> str:
        return layout.features_dir(ds, self.feature_key[ds][variant])

    def baseline_dir(self, ds: str, variant: str, seed: int | str) -> str:
        return layout.baseline_dir(ds, self.baseline_key[ds][variant], seed)

    def default_run(self, ds: str) -> str:
        """The run behind results/{ds}/miou.csv, the figures and segment_images: the default variant, first seed."""
        return layout.run_dir(ds, DEFAULT_VARIANT, seeds(self.config, ds)[0])

    def index_dir(self, ds: str, variant: str) -> str:
        """The sample index that a variant's features come from (five-crop rows or whole images)."""
        return f"results/{ds}/{index_name(self.resolved[ds][variant])}"

    # ----- labels

    def labelled(self, ds: str) -> bool:
        """Whether dataset `ds` has labels (the metrics and the linear probe need them).

        Its `labelled` key, else for kind `directory` whether `<root>/labels` exists, else true. Decided while the
        DAG is built (before `prepare` has looked at the files), so that `rule all` can pick the dataset's target."""
        entry = self.config["datasets"][ds]
        if entry["kind"] != "directory":
            return entry.get("labelled", True)
        root = entry["root"]
        flag = entry.get("labelled", datasets.has_labels_folder(root))
        missing = [s for s in SPLITS if s not in datasets.labelled_splits(root)]
        if flag and os.path.isdir(root) and missing:
            why = "`labelled: true`" if "labelled" in entry else f"{os.path.join(root, 'labels')} exists"
            raise UserError(
                f"dataset '{ds}' is labelled ({why}) but {os.path.join(root, 'labels', missing[0])} "
                "does not exist: add the label PNGs of that split, or set `labelled: false` to run without "
                f"labels (cluster segmentations and results/{ds}/clusters.csv, no metrics)"
            )
        return flag

    def require_labels(self, ds: str, what: str) -> None:
        if not self.labelled(ds):
            raise UserError(
                f"dataset '{ds}' has no labels, so {what} cannot be computed; its result is "
                f"results/{ds}/clusters.csv (cluster pixel shares) and the cluster segmentations"
            )

    def final_target(self, ds: str) -> str:
        """The table a dataset's run ends with: the metrics when it has labels, else the cluster pixel shares."""
        return f"results/{ds}/{layout.table_name(self.labelled(ds))}"

    def run_table(self, ds: str, variant: str, seed: int | str) -> str:
        return f"{layout.run_dir(ds, variant, seed)}/{layout.table_name(self.labelled(ds))}"

    def figure_targets(self, ds: str, variant: str = DEFAULT_VARIANT, seed: int | None = None) -> list[str]:
        """Every picture of a run (by default the dataset's default run)."""
        run = self.default_run(ds) if seed is None else layout.run_dir(ds, variant, seed)
        return layout.figure_files(run, self.labelled(ds), [row_key(probe, crf) for probe, crf in ROWS])

    # ----- checks while the DAG is built

    def check_datasets(self) -> None:
        """An unknown backbone, a resolution that is no multiple of its backbone's patch size, and a training split
        too small for knn_k (where its size is known before `prepare`: demo, directory; else counted from the
        index once `prepare` has written it) stop here."""
        for ds, entry in self.config["datasets"].items():
            try:
                name = self.resolved[ds][DEFAULT_VARIANT]["backbone"]
                backbone_specs.backbone_info(name, backbone_layers(self.config, name))
            except ValueError as err:
                raise UserError(
                    f"dataset '{ds}' (preset '{entry['preset']}' and its overrides), key backbone: {err}"
                ) from None
            for v, r in self.resolved[ds].items():
                try:
                    info = backbone_specs.backbone_info(r["backbone"], backbone_layers(self.config, r["backbone"]))
                    stride = info["input_multiple"]
                except ValueError as err:
                    raise UserError(f"dataset '{ds}', variant '{v}', key backbone: {err}") from None
                for key in ("train_res", "eval_res"):
                    if r[key] % stride:
                        raise UserError(
                            f"dataset '{ds}'" + (f", variant '{v}'" if v != DEFAULT_VARIANT else "") + f": {key} "
                            f"{r[key]} is not a multiple of backbone {r['backbone']}'s patch size {stride}; set "
                            f"`datasets.{ds}.overrides: {{{key}: {r[key] // stride * stride or stride}}}` (or "
                            f"another multiple of {stride})"
                        )
                problem = stego_validate.knn_problem(
                    ds, entry["kind"], dataset_settings(self.config, ds, v), r["knn_k"],
                    samples=stego_validate.index_rows(f"{self.index_dir(ds, v)}/train.csv"),
                )
                if problem:
                    raise UserError(problem if v == DEFAULT_VARIANT else f"variant '{v}': {problem}")

    # ----- tables and targets

    def table_runs(self, ds: str, variant_names: list[str]) -> list[dict]:
        """(dataset, variant, seed, kind, backbone) of every run of the given variants, and its table."""
        return [
            {
                "dataset": ds,
                "variant": v,
                "seed": seed,
                "kind": self.config["datasets"][ds]["kind"],
                "backbone": self.resolved[ds][v]["backbone"],
                "path": self.run_table(ds, v, seed),
            }
            for v in variant_names
            for seed in self.run_seeds(ds, v)
        ]

    def main_table_runs(self) -> list[dict]:
        for ds in self.config["tables"]["main"]:
            self.require_labels(ds, "results/tables/main")
        return [
            run
            for ds in self.config["tables"]["main"]
            for run in self.table_runs(ds, self.config["datasets"][ds].get("main_variants") or [DEFAULT_VARIANT])
        ]

    def ablation_runs(self, ds: str) -> list[dict]:
        """The runs of the full method and of each ablation, with which components each keeps."""
        self.require_labels(ds, f"results/tables/ablation_{ds}")
        runs = self.table_runs(ds, [v for v in self.resolved[ds] if v == DEFAULT_VARIANT or is_ablation(v)])
        for run in runs:
            run["axes"] = ablation_axes(self.resolved[ds][run["variant"]])
        return runs

    def table_targets(self) -> list[str]:
        """Every configured experiment table (CSV and Markdown)."""
        return layout.table_files(bool(self.config["tables"]["main"]), self.config["tables"]["ablation"])

    def target_datasets(self) -> dict[str, Dataset]:
        """What each dataset's paths may hold, for the start-up check of the requested targets."""
        return {
            ds: Dataset(
                variants=tuple(self.resolved[ds]),
                seeds=tuple(seeds(self.config, ds)),
                feature_keys=tuple(sorted(set(self.feature_key[ds].values()))),
                baseline_keys=tuple(sorted(set(self.baseline_key[ds].values()))),
                labelled=self.labelled(ds),
            )
            for ds in self.config["datasets"]
        }
