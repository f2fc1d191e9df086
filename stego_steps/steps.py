"""What decides each rule's outputs: step name → (stage module, settings) of the job's own stage and of every
stage upstream of it. `stego_steps.provenance.chain` digests them (the stage modules' code and the settings); a
job whose digest changed re-runs, and so does everything downstream.

A step's module is the stage whose code makes it (`stages.<stage>`), or None for data (the dataset's files, an
imported checkpoint's probes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stego_steps.config import DEFAULT_VARIANT, crop_of_index, dataset_settings, index_name, seeds, stage_settings
from stego_steps.errors import UserError
from stego_steps.experiment import wildcard_values
from stego_steps.knn import search_settings
from stego_steps.protocol import BASELINE_PROBES, PROBES, UNSUPERVISED_PROBES
from stego_steps.rule_inputs import RuleInputs

Steps = dict[str, tuple[str | None, Any]]


class DecidingSteps:
    def __init__(self, inputs: RuleInputs) -> None:
        self.inputs, self.exp, self.config = inputs, inputs.exp, inputs.config

    def _settings(self, ds: str, stage: str, variant: str, seed: int) -> dict[str, Any]:
        return stage_settings(self.config, ds, stage, variant=variant, seed=seed)

    def extraction(self, ds: str, variant: str, split: str) -> Steps:
        """The steps that decide a split's features: the data (or the demo's rendering), its index, the extraction."""
        r = self.exp.resolved[ds][variant]
        entry = self.config["datasets"][ds]
        if entry["kind"] == "demo":
            data: tuple[str | None, Any] = ("stages.prepare", {"root": entry["root"], "generator": entry["generator"]})
        else:
            data = (None, self.inputs.manifest_of(ds))
        extract = {k: v for k, v in stage_settings(self.config, ds, "extract", split, variant).items()
                   if k != "batch_size"}
        index = {**dataset_settings(self.config, ds, variant), **crop_of_index(index_name(r))}
        return {
            "data": data,
            "prepare": ("stages.prepare", index),
            f"extract_{split}": ("stages.extract", extract),
        }

    def knn(self, k: int) -> tuple[str, dict[str, Any]]:
        """The KNN table's step: k and the search's deciding settings (none for the exact search, whose key is
        the one it had before there was a choice)."""
        return "stages.knn", {"k": k, **search_settings(self.config.get("knn"))}

    def head(self, ds: str, variant: str, seed: int) -> Steps:
        """The steps that decide a run's head: trained (features, KNN, calibration, training) or imported."""
        r = self.exp.resolved[ds][variant]
        steps = self.extraction(ds, variant, "train")
        if r["checkpoint"]:
            path = r["checkpoint"]
            stat = os.stat(path) if os.path.exists(path) else None
            return {
                **steps,
                "import": (
                    "stages.import_checkpoint",
                    {
                        "checkpoint": path,
                        "size": stat and stat.st_size,
                        "mtime_ns": stat and stat.st_mtime_ns,
                        "backbone": r["backbone"],
                    },
                ),
            }
        return {
            **steps,
            "knn": self.knn(r["knn_k"]),
            "calibrate": ("stages.calibrate", self._settings(ds, "calibrate", variant, seed)),
            "train": ("stages.train", self._settings(ds, "train", variant, seed)),
        }

    def baseline(self, ds: str, variant: str, seed: int, probe: str) -> Steps:
        """The steps that decide a backbone baseline (K-Means or the linear probe on the raw training features)."""
        if probe == "backbone_kmeans":
            step: tuple[str | None, Any] = ("stages.cluster", self._settings(ds, "cluster", variant, seed))
        else:
            step = ("stages.probe", self._settings(ds, "probe", variant, seed))
        return {**self.extraction(ds, variant, "train"), probe: step}

    def probe(self, ds: str, variant: str, seed: int, probe: str) -> Steps:
        """The steps that decide one probe's segmentation of the evaluation images."""
        steps = self.extraction(ds, variant, "val")
        if probe in BASELINE_PROBES:
            steps.update(self.baseline(ds, variant, seed, probe))
        else:
            steps.update(self.head(ds, variant, seed))
            steps["predict"] = ("stages.predict", {})
            imported = bool(self.exp.resolved[ds][variant]["checkpoint"])
            if probe == "cluster":
                steps["cluster"] = (None if imported else "stages.cluster",
                                    self._settings(ds, "cluster", variant, seed))
            else:
                steps["probe"] = (None if imported else "stages.probe", self._settings(ds, "probe", variant, seed))
        steps[f"segment_{probe}"] = ("stages.segment", {"probe": probe})
        return steps

    def evaluation(self, ds: str, variant: str, seed: int, probes: list[str], stage: str = "evaluate") -> Steps:
        steps: Steps = {}
        for probe in probes:
            steps.update(self.probe(ds, variant, seed, probe))
        steps[stage] = ("stages.evaluate", {"labelled": stage == "evaluate"})
        return steps

    def run(self, ds: str, variant: str, seed: int | str) -> Steps:
        """The steps that decide a run's table."""
        if self.exp.labelled(ds):
            return self.evaluation(ds, variant, int(seed), PROBES)
        return self.evaluation(ds, variant, int(seed), UNSUPERVISED_PROBES, "evaluate_unlabelled")

    def tables(self, name: str, runs: list[dict]) -> Steps:
        steps: Steps = {}
        for run in runs:
            key = f"{run['dataset']}/{run['variant']}/seed{run['seed']}"
            steps.update({f"{key}/{step}": value
                          for step, value in self.run(run["dataset"], run["variant"], run["seed"]).items()})
        return {**steps, "table": ("stages.tables", {"kind": name})}

    def segment_images(self, ds: str, folder: str) -> Steps:
        """The default run's chain, the folder's files (names, sizes, times) and the stage's code."""
        images = (
            [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()]
            if os.path.isdir(folder)
            else []
        )
        return {
            **self.run(ds, DEFAULT_VARIANT, seeds(self.config, ds)[0]),
            "images": (None, images),
            "segment_images": ("stages.segment_images", {"folder": folder}),
        }

    def __call__(self, name: str, wildcards: Any) -> Steps:
        """Everything that decides the outputs of rule `name` for a job's wildcards."""
        w = wildcard_values(wildcards)
        exp = self.exp
        if name == "render_demo":
            return {"data": self.extraction(self.inputs.demo_roots[w["demo_root"]], DEFAULT_VARIANT, "train")["data"]}
        if name == "table_main":
            return self.tables(name, exp.main_table_runs())
        if name == "table_ablation":
            return self.tables(name, exp.ablation_runs(w["ds"]))
        ds = w["ds"]
        if name == "segment_images":
            folder = self.config["segment_images"].get(w["name"])
            return {} if folder is None else self.segment_images(ds, folder)  # segment_images_inputs names the mistake
        if name == "dataset_table":
            return self.run(ds, DEFAULT_VARIANT, seeds(self.config, ds)[0])
        if name in ("extract", "gather_features"):
            return self.extraction(ds, exp.variant_of(w), w["split"])
        if name == "prepare":
            steps = self.extraction(ds, exp.index_variant(ds, w["idx"]), "train")
            return {"data": steps["data"], "prepare": steps["prepare"]}
        if name == "knn":
            return {**self.extraction(ds, exp.variant_of(w), "train"), "knn": self.knn(int(w["k"]))}
        if name == "segment":
            _, variant, seed = exp.owner_variant(ds, w["owner"])
            return self.probe(ds, variant, seed, w["probe"])
        seed = int(w["seed"])
        if name in ("backbone_kmeans", "backbone_linear"):
            return self.baseline(ds, exp.variant_of(w), seed, name)
        variant = w["variant"]
        head = self.head(ds, variant, seed)
        if name == "calibrate":
            return {k: v for k, v in head.items() if k != "train"}
        if name in ("train", "import_checkpoint"):
            return head
        if name == "cluster":
            return {**head, "cluster": ("stages.cluster", self._settings(ds, "cluster", variant, seed))}
        if name == "linear_probe":
            return {**head, "probe": ("stages.probe", self._settings(ds, "probe", variant, seed))}
        if name == "predict":
            return {**head, **self.extraction(ds, variant, "val"), "predict": ("stages.predict", {})}
        if name in ("evaluate", "evaluate_unlabelled"):
            return self.run(ds, variant, seed)
        if name in ("figure_panels", "figure_metrics"):
            return {**self.run(ds, variant, seed), "figures": ("stages.figures", {})}
        if name in ("figure_training", "figure_correlations"):
            return {**head, "figures": ("stages.figures", {})}
        raise UserError(f"no provenance steps for rule '{name}'")
