"""The rules' input functions and params: what a job reads and the settings it gets, from its wildcards.

Each method takes a job's wildcards (Snakemake's, or a plain dict) and returns paths or JSON; the rule files
name them (`input: features=run_features("train")`). The checks that need the files (missing weights, data
behind a login, a checkpoint that does not exist) raise `UserError` while the DAG is built, before any job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from stego_steps import backbone_specs, datasets
from stego_steps import validate as stego_validate
from stego_steps.config import (
    backbone_weights,
    bookkeeping,
    crop_of_index,
    dataset_settings,
    random_backbone,
    stage_settings,
)
from stego_steps.errors import UserError
from stego_steps.experiment import Experiment, wildcard_values
from stego_steps.layout import run_dir, shard
from stego_steps.protocol import BASELINE_PROBES, PROBES, SUPERVISED_PROBES, UNSUPERVISED_PROBES

Wildcards = Any  # Snakemake's Wildcards or a mapping: anything with .items()


class RuleInputs:
    """`resources`: the table of known downloads (stego_steps.download.load_table). `gather_segment`: Snakemake's
    `gather.segment` (a pattern → its segment shards). `dryrun` (asked when needed: Snakemake sets it after
    parsing), `warn`: a dry run warns where a real run stops."""

    def __init__(self, exp: Experiment, resources: Mapping[str, Mapping[str, Any]], *,
                 gather_segment: Callable[[str], list[str]], dryrun: Callable[[], bool] = lambda: False,
                 warn: Callable[[str], object] = print) -> None:
        self.exp, self.config, self.resources = exp, exp.config, resources
        self.gather_segment, self.dryrun, self.warn = gather_segment, dryrun, warn
        self.downloadable_paths = sorted(p for p, e in resources.items() if e.get("url"))
        self.by_hand = sorted(p for p, e in resources.items() if not e.get("url"))
        self.archive_of = {e["extract"]: p for p, e in resources.items() if e.get("url") and e.get("extract")}
        ds_entries = self.config["datasets"].items()
        #: The folders the demo datasets' scenes are rendered into (rule render_demo), and their datasets.
        self.demo_roots = {e["root"]: ds for ds, e in ds_entries if e["kind"] == "demo"}
        #: The folders of the cocostuff datasets whose missing curated lists are downloaded (rule curated_list).
        self.coco_roots = {e["root"]: ds for ds, e in reversed(ds_entries)
                           if e["kind"] == "cocostuff" and e.get("curated_url", datasets.CURATED_URL)}
        self._manifests: dict[str, str] = {}

    # ----- features, index, settings

    def run_features(self, split: str) -> Callable[[Wildcards], str]:
        """Input function → the feature store of the job's variant."""

        def get(wildcards: Wildcards) -> str:
            w = wildcard_values(wildcards)
            return f"{self.exp.features_dir(w['ds'], w['variant'])}/{split}.h5"

        return get

    def baseline_features(self, wildcards: Wildcards) -> str:
        """The training store of a baseline (shared by every variant with the same features and settings)."""
        w = wildcard_values(wildcards)
        return f"{self.exp.features_dir(w['ds'], self.exp.baselines[(w['ds'], w['bkey'])])}/train.h5"

    def run_knn(self, wildcards: Wildcards) -> str:
        w = wildcard_values(wildcards)
        k = self.exp.resolved[w["ds"]][w["variant"]]["knn_k"]
        return f"{self.exp.features_dir(w['ds'], w['variant'])}/knn{k}.npy"

    def index_of(self, wildcards: Wildcards) -> str:
        """The sample index that the job's features come from (five-crop rows or whole images)."""
        w = wildcard_values(wildcards)
        return self.exp.index_dir(w["ds"], self.exp.variant_of(w))

    def settings(self, stage: str) -> Callable[[Wildcards], str]:
        """Input function → the JSON settings of a stage for the job's dataset, variant, seed (and split)."""

        def get(wildcards: Wildcards) -> str:
            w = wildcard_values(wildcards)
            seed = int(w["seed"]) if "seed" in w else None
            variant = self.exp.variant_of(w)
            return json.dumps(stage_settings(self.config, w["ds"], stage, w.get("split", "train"), variant, seed))

        return get

    def bookkeeping_of(self, stage: str, key: str) -> Callable[[Wildcards], Any]:
        """Input function → a bookkeeping value of the job's stage (`stego_steps.config.BOOKKEEPING`, e.g. how
        often `train` checkpoints). Rules hand it over as a resource, not a param: resources are no rerun trigger,
        and it changes how often something is saved, never a result."""

        def get(wildcards: Wildcards) -> Any:
            w = wildcard_values(wildcards)
            return bookkeeping(self.config, w["ds"], stage, self.exp.variant_of(w))[key]

        return get

    def plan_settings(self, wildcards: Wildcards) -> str:
        """The very settings of the split's extraction: a plan re-runs exactly when its extraction must."""
        w = wildcard_values(wildcards)
        split = w["split"]
        return json.dumps({split: stage_settings(self.config, w["ds"], "extract", split, self.exp.variant_of(w))})

    def prepare_settings(self, wildcards: Wildcards) -> str:
        """The dataset entry, with the five-crop choice that the index folder's name encodes."""
        w = wildcard_values(wildcards)
        return json.dumps({**dataset_settings(self.config, w["ds"]), **crop_of_index(w["idx"])})

    # ----- weights and checkpoints

    def downloadable(self, path: str) -> bool:
        """Whether Snakemake may fetch `path`: a file or an unpacked folder of the table of known resources,
        unless `offline` is true."""
        name = os.path.relpath(path, "resources")
        return not self.config["offline"] and (name in self.downloadable_paths or name in self.archive_of)

    def backbone_weights_input(self, wildcards: Wildcards) -> list[str]:
        """The weights file of the job's backbone as an input (none for timm-cache or random weights).

        Checked while the DAG is built, so missing weights stop the run before any job starts, unless the file
        is one that the `download` rule fetches into resources/ (and `offline` is false)."""
        w = wildcard_values(wildcards)
        backbone = self.exp.resolved[w["ds"]][self.exp.variant_of(w)]["backbone"]
        path = backbone_weights(self.config, backbone)
        if path and not os.path.exists(path) and self.downloadable(path):
            return [path]
        try:
            backbone_specs.check_weights(backbone, path)
        except (ValueError, RuntimeError, FileNotFoundError) as err:
            message = f"backbone '{backbone}' (dataset '{w['ds']}'): {err}"
            known = self.resources.get(os.path.relpath(path, "resources"), {}) if path else {}
            if known.get("url") and self.config["offline"]:
                message += f"; with network access set `offline: false` and Snakemake downloads it to {path}"
            if not self.dryrun():
                raise UserError(message) from None
            # A dry run still shows the whole DAG with the preset values, and says what a real run needs.
            self.warn(f"a real run would stop here: {message}")
            return []
        return [path] if path else []

    def checkpoint_input(self, wildcards: Wildcards) -> str:
        """The released checkpoint of an imported variant: present, or one that the `download` rule fetches."""
        w = wildcard_values(wildcards)
        path = self.exp.resolved[w["ds"]][w["variant"]]["checkpoint"]
        if not os.path.exists(path) and not self.downloadable(path):
            raise UserError(
                f"dataset '{w['ds']}', variant '{w['variant']}': the checkpoint {path} does not exist"
                + (" and `offline` is true" if self.config["offline"] else "")
                + "; put the official .ckpt file there or fix `checkpoint:` in the config"
            )
        return path

    def import_args(self, wildcards: Wildcards) -> str:
        """The backbone weights and seed that the feature stores record: the imported head must match them. (The
        seed is part of a random backbone's id only: for pretrained weights it would decide nothing.)"""
        w = wildcard_values(wildcards)
        r = self.exp.resolved[w["ds"]][w["variant"]]
        weights = backbone_weights(self.config, r["backbone"])
        seed = f"--seed {r['seed']}" if random_backbone(r["backbone"]) else ""
        return ((f"--weights {weights} " if weights else "") + seed).strip()

    # ----- the data

    def data_files(self, wildcards: Wildcards) -> dict[str, Any]:
        """Files a dataset's index is built from besides its images, declared as inputs so that changing one
        re-runs `prepare` and what follows: the cocostuff class table and curated lists, the demo's scenes."""
        ds = wildcard_values(wildcards)["ds"]
        entry = self.config["datasets"][ds]
        if entry["kind"] == "cocostuff":
            files: dict[str, Any] = {"classes_table": entry.get("classes_table") or str(datasets.COCO_CLASSES_TABLE)}
            if entry["root"] in self.coco_roots:
                files["curated_lists"] = self.curated_lists(ds)
            return {**files, "resources": self.dataset_resources(ds)}
        if entry["kind"] == "demo":
            return {"scenes": entry["root"]}
        return {"resources": self.dataset_resources(ds)}

    def dataset_resources(self, ds: str) -> list[str]:
        """The folders under a dataset's root that Snakemake downloads and unpacks (a root under resources/, e.g.
        resources/cocostuff: the COCO images and the COCO-Stuff label maps). Folders that need an account stop
        the run here, before any job, with where to get them and where to put them."""
        root = os.path.normpath(self.config["datasets"][ds]["root"])
        if os.path.relpath(root, "resources").startswith(".."):
            return []
        folders = []
        for name, entry in self.resources.items():
            folder = entry.get("extract") or (name if entry.get("instructions") else None)
            path = os.path.join("resources", folder) if folder else None
            if path is None or not (path == root or path.startswith(root + os.sep)) or os.path.exists(path):
                continue
            if entry.get("instructions") or self.config["offline"]:
                how = entry.get("instructions") or (
                    f"download {entry['url']} and unpack it into {path}, or set `offline: false` and Snakemake does it"
                )
                raise UserError(f"dataset '{ds}': {path} is missing; {how}")
            folders.append(path)
        return folders

    def demo_settings(self, wildcards: Wildcards) -> str:
        """What the scenes depend on: the root and the generator (not the preset)."""
        entry = self.config["datasets"][self.demo_roots[wildcard_values(wildcards)["demo_root"]]]
        return json.dumps({"root": entry["root"], "generator": entry["generator"]})

    def curated_lists(self, ds: str) -> list[str]:
        """The curated list files of a cocostuff dataset: `{root}/curated/{split dir}/{name}.txt`."""
        entry = self.config["datasets"][ds]
        names = {"train": entry.get("train_list") or datasets.COCO_TRAIN_LIST, "val": datasets.COCO_VAL_LIST}
        return [os.path.join(entry["root"], "curated", datasets.COCO_SPLIT_DIRS[s], f"{names[s]}.txt")
                for s in ("train", "val")]

    def curated_url(self, wildcards: Wildcards) -> str:
        ds = self.coco_roots[wildcard_values(wildcards)["coco_root"]]
        return self.config["datasets"][ds].get("curated_url", datasets.CURATED_URL)

    def manifest_of(self, ds: str) -> str:
        """Summary of a dataset's files (count, bytes, digest of names, sizes and times), read once per
        invocation: `prepare`'s param and every rule's provenance use it."""
        if ds not in self._manifests:
            self._manifests[ds] = stego_validate.manifest(
                self.config["datasets"][ds]["kind"], dataset_settings(self.config, ds))
        return self._manifests[ds]

    def dataset_manifest(self, wildcards: Wildcards) -> str:
        """The manifest as a parameter of `prepare`: adding, removing or editing a file re-runs it (and
        everything after it)."""
        return self.manifest_of(wildcard_values(wildcards)["ds"])

    # ----- segmentations and evaluation

    def segment_inputs(self, wildcards: Wildcards) -> dict[str, str]:
        """What the segment stage of a probe reads: the evaluation features, and the run's codes with its
        centroids or linear probe, or the baseline's centroids or linear probe."""
        w = wildcard_values(wildcards)
        ds, probe = w["ds"], w["probe"]
        kind, variant, _ = self.exp.owner_variant(ds, w["owner"])
        base = f"results/{ds}/{w['owner']}"
        if (probe in BASELINE_PROBES) != (kind == "baselines"):
            raise UserError(
                f"no {probe} segmentation under {base}: the backbone_* probes belong to "
                "results/<dataset>/baselines/, the others to results/<dataset>/runs/"
            )
        if probe in SUPERVISED_PROBES:
            self.exp.require_labels(ds, f"the {probe} probe")
        inputs = {"features": f"{self.exp.features_dir(ds, variant)}/val.h5"}
        if kind == "runs":
            inputs["codes"] = f"{base}/codes.h5"
        inputs.update({
            "cluster": {"centroids": f"{base}/centroids.npy"},
            "linear": {"linear": f"{base}/linear.pt"},
            "backbone_kmeans": {"centroids": f"{base}/kmeans.npy"},
            "backbone_linear": {"linear": f"{base}/linear.pt"},
        }[probe])
        return inputs

    @staticmethod
    def shard_index(wildcards: Wildcards) -> int:
        """The 0-based shard of a scatter item `i-of-n`."""
        return shard(wildcard_values(wildcards)["scatteritem"])[0]

    @staticmethod
    def shard_count(wildcards: Wildcards) -> int:
        """The number of shards of a scatter item `i-of-n`."""
        return shard(wildcard_values(wildcards)["scatteritem"])[1]

    @staticmethod
    def segment_args(wildcards: Wildcards, input: Any) -> str:
        return " ".join(f"--{name} {path}" for name, path in input.items() if name != "features")

    def run_segments(self, ds: str, variant: str, seed: int | str, probes: list[str]) -> list[str]:
        """Segment shards of a run's probes and of its baselines."""
        paths: list[str] = []
        for probe in probes:
            owner = (self.exp.baseline_dir(ds, variant, seed) if probe in BASELINE_PROBES
                     else run_dir(ds, variant, seed))
            paths += self.gather_segment(f"{owner}/segment/{probe}.{{scatteritem}}.h5")
        return paths

    def _evaluation_inputs(self, wildcards: Wildcards, probes: list[str]) -> dict[str, Any]:
        w = wildcard_values(wildcards)
        ds, variant, seed = w["ds"], w["variant"], w["seed"]
        return {"features": f"{self.exp.features_dir(ds, variant)}/val.h5",
                "segments": self.run_segments(ds, variant, seed, probes)}

    def evaluate_inputs(self, wildcards: Wildcards) -> dict[str, Any]:
        self.exp.require_labels(wildcard_values(wildcards)["ds"], "the labelled metrics (miou.csv)")
        return self._evaluation_inputs(wildcards, PROBES)

    def evaluate_unlabelled_inputs(self, wildcards: Wildcards) -> dict[str, Any]:
        return self._evaluation_inputs(wildcards, UNSUPERVISED_PROBES)

    # ----- pictures and new images

    def panel_inputs(self, wildcards: Wildcards) -> dict[str, Any]:
        w = wildcard_values(wildcards)
        labelled = self.exp.labelled(w["ds"])
        inputs = self._evaluation_inputs(w, PROBES if labelled else UNSUPERVISED_PROBES)
        if labelled:
            inputs["mapping"] = f"{run_dir(w['ds'], w['variant'], w['seed'])}/mapping"
        return inputs

    @staticmethod
    def panel_args(wildcards: Wildcards, input: Any) -> str:
        return f"--mapping {input.mapping}" if "mapping" in input.keys() else ""

    def segment_images_inputs(self, wildcards: Wildcards) -> dict[str, Any]:
        """Every file of the folder is an input (one per image): adding, removing or editing an image re-runs the
        folder's job, and only it. The run's settings (weights, seed, precision, store dtype) come from its
        codes."""
        from stego_steps.images import folder_files

        w = wildcard_values(wildcards)
        name = w["name"]
        if name not in self.config["segment_images"]:
            raise UserError(
                f"no folder named '{name}' under `segment_images:` in the config; add "
                f"`segment_images: {{{name}: path/to/images}}` (or pass it with --config)"
            )
        folder = self.config["segment_images"][name]
        try:
            files = folder_files(folder)
        except UserError as err:
            raise UserError(f"segment_images.{name}: {err}") from None
        if not files:
            raise UserError(f"segment_images.{name}: the folder {folder} holds no files; put the images to segment "
                            "there")
        run = self.exp.default_run(w["ds"])
        inputs: dict[str, Any] = {
            "images": [str(p) for p in files],
            "head": f"{run}/head.pt",
            "centroids": f"{run}/centroids.npy",
            "codes": f"{run}/codes.h5",
        }
        if self.exp.labelled(w["ds"]):
            inputs.update(mapping=f"{run}/mapping", linear=f"{run}/linear.pt")
        return inputs
