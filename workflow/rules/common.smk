# Start-up: validate the configuration and resolve every dataset's preset, so that a bad configuration fails
# before any job runs (backbone weights are checked while the DAG is built). Helpers below keep the rules
# declarative.
import atexit
import json
import os
import re
import shutil
import sys
from pathlib import Path

import h5py
from snakemake.utils import validate

from stego_steps import backbone_specs, datasets
from stego_steps import config as stego_config
from stego_steps import resources as stego_resources
from stego_steps import validate as stego_validate
from stego_steps.config import (
    DEFAULT_VARIANT,
    ConfigError,
    backbone_weights,
    baseline_key,
    bookkeeping,
    crop_of_index,
    dataset_settings,
    features_key,
    index_name,
    resolve,
    seeds,
    stage_settings,
    variants,
)
from stego_steps.protocol import BASELINE_PROBES, PROBES, ROWS, SUPERVISED_PROBES, UNSUPERVISED_PROBES, row_key
from stego_steps.store import MAX_MEMORY_GB
from stego_steps.errors import UserError, report_failed_jobs
from stego_steps import disk_space as stego_plan
from stego_steps import runlock
from stego_steps import targets as stego_targets

# A short message naming the bad key first; then Snakemake's own validation fills in the defaults.
config.update(stego_config.coerce(config, stego_config.load_schema()))
try:
    stego_config.validate(config)
except ConfigError as err:
    raise WorkflowError(str(err))
validate(config, schema=str(stego_config.SCHEMA))

# Every dataset's variants resolved once: RESOLVED[ds][variant] holds the hyper-parameters that every stage of
# that variant's runs reads. Feature stores and baselines are keyed by what produced them (FEATURES, BASELINES:
# key → the first variant that needs it), so variants with the same extraction share stores and KNN tables.
# FEATURE_KEY / BASELINE_KEY[ds][variant] name those folders, computed here once rather than per job.
RESOLVED, FEATURES, BASELINES, FEATURE_KEY, BASELINE_KEY = {}, {}, {}, {}, {}
try:
    stego_config.check_experiments(config)
    for _ds in config["datasets"]:
        RESOLVED[_ds] = {_v: resolve(config, _ds, _v) for _v in variants(config, _ds)}
        FEATURE_KEY[_ds] = {_v: features_key(config, _ds, _v) for _v in RESOLVED[_ds]}
        BASELINE_KEY[_ds] = {_v: baseline_key(config, _ds, _v) for _v in RESOLVED[_ds]}
        for _v in RESOLVED[_ds]:
            FEATURES.setdefault((_ds, FEATURE_KEY[_ds][_v]), _v)
            BASELINES.setdefault((_ds, BASELINE_KEY[_ds][_v]), _v)
except ConfigError as err:
    raise WorkflowError(f"config/config.yaml: {err}")
PRESETS = {ds: by_variant[DEFAULT_VARIANT] for ds, by_variant in RESOLVED.items()}
# Variants that train a head, and those that import a released checkpoint's head and probes instead.
TRAINED = sorted({v for by_variant in RESOLVED.values() for v, r in by_variant.items() if not r["checkpoint"]})
IMPORTED = sorted({v for by_variant in RESOLVED.values() for v, r in by_variant.items() if r["checkpoint"]})
for _ds in config["run"]:
    if _ds not in config["datasets"]:
        raise WorkflowError(f"config/config.yaml: run lists '{_ds}', which is not under `datasets:`")
# An unknown backbone name, and a training split too small for knn_k (where its size is known before
# `prepare`: demo, directory), stop here.
for _ds, _entry in config["datasets"].items():
    try:
        backbone_specs.backbone_info(PRESETS[_ds]["backbone"])
    except ValueError as err:
        raise WorkflowError(f"dataset '{_ds}' (preset '{_entry['preset']}' and its overrides), key backbone: {err}")
    # Every variant: its resolutions against its backbone's patch size, its knn_k against its training split
    # (counted from the index when `prepare` has written it).
    for _v, _r in RESOLVED[_ds].items():
        try:
            _stride = backbone_specs.backbone_info(_r["backbone"])["stride"]
        except ValueError as err:
            raise WorkflowError(f"dataset '{_ds}', variant '{_v}', key backbone: {err}")
        for _key in ("train_res", "eval_res"):
            if _r[_key] % _stride:
                raise WorkflowError(
                    f"dataset '{_ds}'" + (f", variant '{_v}'" if _v != DEFAULT_VARIANT else "") + f": {_key} "
                    f"{_r[_key]} is not a multiple of backbone {_r['backbone']}'s patch size {_stride}; set "
                    f"`datasets.{_ds}.overrides: {{{_key}: {_r[_key] // _stride * _stride or _stride}}}` (or another "
                    f"multiple of {_stride})"
                )
        _index = f"results/{_ds}/{index_name(_r)}/train.csv"
        _problem = stego_validate.knn_problem(
            _ds,
            _entry["kind"],
            dataset_settings(config, _ds, _v),
            _r["knn_k"],
            samples=stego_validate.index_rows(_index),
        )
        if _problem:
            raise WorkflowError(_problem if _v == DEFAULT_VARIANT else f"variant '{_v}': {_problem}")

# OpenMP threads that wait for work sleep instead of spinning: when jobs share cores (2 jobs of 2 threads on a
# 2-core machine), spinning threads starve the others (training measured 2× slower under load). The thread
# counts, and so the results, are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


envvars:
    "PATH",
    "OMP_WAIT_POLICY",


# Jobs call `python -m stego_steps.<stage>`: the interpreter that runs Snakemake (the project's environment)
# comes first on PATH, unless --sdm conda puts the rule's environment in front of it.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# The device of every rule that runs its model on it (stego_steps.resources.DEVICE_RULES, listed in the README's
# table of what each job asks for) reaches the job as the resource `device` (`--device {resources.device}`),
# never as a param: Snakemake reruns a job when its params change, and switching between CPU and GPU changes
# where a job runs, not what it computes (up to floating-point rounding). Per rule: `--set-resources
# train:device=cpu`.
DEVICE = config["device"]
# Those rules ask for `gpu: 1` when their models run on a GPU: `device: cuda`, or `auto` with nvidia-smi where
# Snakemake starts. A cluster's login node usually has none, so the SLURM profile requests the GPU of every
# device rule itself, and each job resolves `auto` on its node.
ON_GPU = stego_resources.uses_gpu(DEVICE, bool(shutil.which("nvidia-smi")))
# torch's compute threads in every model job: fixed, so that a table does not depend on --cores. They are the
# `threads` of the model rules; only workers (image loading, CRF) add threads (stego_steps.resources).
TORCH_THREADS = config["torch_threads"]


# Extraction (per split) and the CRF (per probe) run in shards, one job each: `extract_shards` and
# `segment_shards` in the config, or per run `--set-scatter extract=8 segment=16`.
scattergather:
    extract=config["extract_shards"],
    segment=config["segment_shards"],


wildcard_constraints:
    # Only the configured datasets: any other name has no rule (and the start-up check lists the valid targets).
    ds="|".join(sorted(re.escape(ds) for ds in config["datasets"])) or "(?!)",
    split=r"train|val",
    probe="|".join(PROBES),
    scatteritem=r"\d+-of-\d+",
    seed=r"\d+",
    k=r"\d+",
    idx=r"index(_five_crop_[0-9.]+)?",
    variant="|".join(sorted({re.escape(v) for by_variant in RESOLVED.values() for v in by_variant})),
    fkey="|".join(sorted({re.escape(key) for _, key in FEATURES})),
    bkey="|".join(sorted({re.escape(key) for _, key in BASELINES})),
    # who a segmentation belongs to: a run (variant and seed) or a baseline (features, settings and seed)
    owner=r"(runs|baselines)/[A-Za-z0-9_.\-]+/seed\d+",


# Paths. A run is one variant of a dataset trained with one seed; everything from training onward is its own.
def run_dir(ds, variant, seed):
    return f"results/{ds}/runs/{variant}/seed{seed}"


def run_of(wildcards):
    return run_dir(wildcards.ds, wildcards.variant, wildcards.seed)


def default_run(ds):
    """The run behind results/{ds}/miou.csv, the figures and segment_images: the default variant, first seed."""
    return run_dir(ds, DEFAULT_VARIANT, seeds(config, ds)[0])


def features_dir(ds, variant):
    return f"results/{ds}/features/{FEATURE_KEY[ds][variant]}"


def baseline_dir(ds, variant, seed):
    return f"results/{ds}/baselines/{BASELINE_KEY[ds][variant]}/seed{seed}"


def variant_of(wildcards):
    """The variant whose settings a job uses: its own, or the first one that needs its features or baseline."""
    if "variant" in wildcards.keys():
        return wildcards.variant
    if "fkey" in wildcards.keys():
        return FEATURES[(wildcards.ds, wildcards.fkey)]
    return BASELINES[(wildcards.ds, wildcards.bkey)]


def run_features(split):
    """Input function → the feature store of the job's variant."""
    return lambda w: f"{features_dir(w.ds, w.variant)}/{split}.h5"


def baseline_features(wildcards):
    """The training store of a baseline (shared by every variant with the same features and settings)."""
    return f"{features_dir(wildcards.ds, BASELINES[(wildcards.ds, wildcards.bkey)])}/train.h5"


def checkpoint_input(wildcards):
    """The released checkpoint of an imported variant: present, or one that the `download` rule fetches."""
    path = RESOLVED[wildcards.ds][wildcards.variant]["checkpoint"]
    if not os.path.exists(path) and not downloadable(path):
        raise WorkflowError(
            f"dataset '{wildcards.ds}', variant '{wildcards.variant}': the checkpoint {path} does "
            "not exist"
            + (" and `offline` is true" if config["offline"] else "")
            + "; put the official .ckpt file there or fix `checkpoint:` in the config"
        )
    return path


def import_args(wildcards):
    """The backbone weights and seed that the feature stores record: the imported head must match them. (The
    seed is part of a random backbone's id only: for pretrained weights it would decide nothing.)"""
    r = RESOLVED[wildcards.ds][wildcards.variant]
    weights = backbone_weights(config, r["backbone"])
    seed = f"--seed {r['seed']}" if stego_config.random_backbone(r["backbone"]) else ""
    return ((f"--weights {weights} " if weights else "") + seed).strip()


def run_knn(wildcards):
    return (
        f"{features_dir(wildcards.ds, wildcards.variant)}/knn{RESOLVED[wildcards.ds][wildcards.variant]['knn_k']}.npy"
    )


def index_of(wildcards):
    """The sample index that the job's features come from (five-crop rows or whole images)."""
    return f"results/{wildcards.ds}/{index_name(RESOLVED[wildcards.ds][variant_of(wildcards)])}"


def labelled(ds):
    """Whether dataset `ds` has labels (the metrics and the linear probe need them).

    Its `labelled` key, else for kind `directory` whether `<root>/labels` exists, else true. Decided while the
    DAG is built (before `prepare` has looked at the files), so that `rule all` can pick the dataset's target."""
    entry = config["datasets"][ds]
    if entry["kind"] != "directory":
        return entry.get("labelled", True)
    root = entry["root"]
    flag = entry.get("labelled", os.path.isdir(os.path.join(root, "labels")))
    missing = [s for s in ("train", "val") if not os.path.isdir(os.path.join(root, "labels", s))]
    if flag and os.path.isdir(root) and missing:
        why = "`labelled: true`" if "labelled" in entry else f"{os.path.join(root, 'labels')} exists"
        raise WorkflowError(
            f"dataset '{ds}' is labelled ({why}) but {os.path.join(root, 'labels', missing[0])} "
            "does not exist: add the label PNGs of that split, or set `labelled: false` to run without "
            f"labels (cluster segmentations and results/{ds}/clusters.csv, no metrics)"
        )
    return flag


def final_target(ds):
    """The table a dataset's run ends with: the metrics when it has labels, else the cluster pixel shares."""
    return f"results/{ds}/miou.csv" if labelled(ds) else f"results/{ds}/clusters.csv"


def run_table(ds, variant, seed):
    return f"{run_dir(ds, variant, seed)}/{'miou' if labelled(ds) else 'clusters'}.csv"


def require_labels(ds, what):
    if not labelled(ds):
        raise WorkflowError(
            f"dataset '{ds}' has no labels, so {what} cannot be computed; its result is "
            f"results/{ds}/clusters.csv (cluster pixel shares) and the cluster segmentations"
        )


def settings(stage):
    """Input function → the JSON settings of a stage for the job's dataset, variant, seed (and split)."""

    def get(wildcards):
        seed = int(wildcards.seed) if "seed" in wildcards.keys() else None
        return json.dumps(
            stage_settings(config, wildcards.ds, stage, wildcards.get("split", "train"), variant_of(wildcards), seed)
        )

    return get


def bookkeeping_of(stage, key):
    """Input function → a bookkeeping value of the job's stage (`stego_steps.config.BOOKKEEPING`, e.g. how often
    `train` checkpoints). Rules hand it over as a resource, not a param: resources are no rerun trigger, and
    it changes how often something is saved, never a result."""
    return lambda wildcards: bookkeeping(config, wildcards.ds, stage, variant_of(wildcards))[key]


def downloadable(path):
    """Whether Snakemake may fetch `path`: a file or an unpacked folder of the table of known resources (loaded by
    workflow/rules/downloads.smk), unless `offline` is true."""
    name = os.path.relpath(path, "resources")
    return not config["offline"] and (name in DOWNLOADABLE or name in ARCHIVE_OF)


def backbone_weights_input(wildcards):
    """The weights file of the job's backbone as an input (none for timm-cache or random weights).

    Checked while the DAG is built, so missing weights stop the run before any job starts, unless the file is
    one that the `download` rule fetches into resources/ (and `offline` is false)."""
    backbone = RESOLVED[wildcards.ds][variant_of(wildcards)]["backbone"]
    path = backbone_weights(config, backbone)
    if path and not os.path.exists(path) and downloadable(path):
        return [path]
    try:
        backbone_specs.check_weights(backbone, path)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        message = f"backbone '{backbone}' (dataset '{wildcards.ds}'): {err}"
        if path and os.path.relpath(path, "resources").startswith("dino") and config["offline"]:
            message += f"; with network access set `offline: false` and Snakemake downloads it to {path}"
        if not workflow.dryrun:
            raise WorkflowError(message)
        # A dry run still shows the whole DAG with the preset values, and says what a real run needs.
        logger.warning(f"a real run would stop here: {message}")
        return []
    return [path] if path else []


def plan_settings(wildcards):
    """The very settings of the split's extraction: a plan re-runs exactly when its extraction must."""
    return json.dumps(
        {wildcards.split: stage_settings(config, wildcards.ds, "extract", wildcards.split, variant_of(wildcards))}
    )


# The folders the demo datasets' scenes are rendered into (rule render_demo), and their datasets.
DEMO_ROOTS = {entry["root"]: ds for ds, entry in config["datasets"].items() if entry["kind"] == "demo"}


def data_files(wildcards):
    """Files a dataset's index is built from besides its images, declared as inputs so that changing one
    re-runs `prepare` and what follows: the cocostuff class table and curated lists, the demo's scenes."""
    entry = config["datasets"][wildcards.ds]
    if entry["kind"] == "cocostuff":
        files = {"classes_table": entry.get("classes_table") or str(datasets.COCO_CLASSES_TABLE)}
        if entry["root"] in COCO_ROOTS:
            files["curated_lists"] = curated_lists(wildcards.ds)
        return {**files, "resources": dataset_resources(wildcards.ds)}
    if entry["kind"] == "demo":
        return {"scenes": entry["root"]}
    return {"resources": dataset_resources(wildcards.ds)}


def dataset_resources(ds):
    """The folders under a dataset's root that Snakemake downloads and unpacks (a root under resources/, e.g.
    resources/cocostuff: the COCO images and the COCO-Stuff label maps). Folders that need an account stop the
    run here, before any job, with where to get them and where to put them."""
    root = os.path.normpath(config["datasets"][ds]["root"])
    if os.path.relpath(root, "resources").startswith(".."):
        return []
    folders = []
    for name, entry in RESOURCES.items():
        folder = entry.get("extract") or (name if entry.get("instructions") else None)
        path = os.path.join("resources", folder) if folder else None
        if path is None or not (path == root or path.startswith(root + os.sep)) or os.path.exists(path):
            continue
        if entry.get("instructions") or config["offline"]:
            how = entry.get("instructions") or (
                f"download {entry['url']} and unpack it into {path}, or set " "`offline: false` and Snakemake does it"
            )
            raise WorkflowError(f"dataset '{ds}': {path} is missing; {how}")
        folders.append(path)
    return folders


def demo_settings(wildcards):
    """What the scenes depend on: the root and the generator (not the preset)."""
    entry = config["datasets"][DEMO_ROOTS[wildcards.demo_root]]
    return json.dumps({"root": entry["root"], "generator": entry["generator"]})


# The folders of the cocostuff datasets whose missing curated lists are downloaded (rule curated_list).
COCO_ROOTS = {
    entry["root"]: ds
    for ds, entry in reversed(config["datasets"].items())
    if entry["kind"] == "cocostuff" and entry.get("curated_url", datasets.CURATED_URL)
}


def curated_lists(ds):
    """The curated list files of a cocostuff dataset: `{root}/curated/{split dir}/{name}.txt`."""
    entry = config["datasets"][ds]
    names = {"train": entry.get("train_list") or datasets.COCO_TRAIN_LIST, "val": datasets.COCO_VAL_LIST}
    return [
        os.path.join(entry["root"], "curated", datasets.COCO_SPLIT_DIRS[s], f"{names[s]}.txt") for s in ("train", "val")
    ]


def curated_url(wildcards):
    return config["datasets"][COCO_ROOTS[wildcards.coco_root]].get("curated_url", datasets.CURATED_URL)


def prepare_settings(wildcards):
    """The dataset entry, with the five-crop choice that the index folder's name encodes."""
    return json.dumps({**dataset_settings(config, wildcards.ds), **crop_of_index(wildcards.idx)})


_MANIFESTS = {}


def manifest_of(ds):
    """Summary of a dataset's files (count, bytes, digest of names, sizes and times), read once per invocation:
    `prepare`'s param and every rule's provenance use it."""
    if ds not in _MANIFESTS:
        _MANIFESTS[ds] = stego_validate.manifest(config["datasets"][ds]["kind"], dataset_settings(config, ds))
    return _MANIFESTS[ds]


def dataset_manifest(wildcards):
    """The manifest as a parameter of `prepare`: adding, removing or editing a file re-runs it (and everything
    after it)."""
    return manifest_of(wildcards.ds)


def segment_inputs(wildcards):
    """What the segment stage of a probe reads: the evaluation features, and the run's codes with its
    centroids or linear probe, or the baseline's centroids or linear probe."""
    kind, name, seed = wildcards.owner.split("/")
    base = f"results/{wildcards.ds}/{wildcards.owner}"
    if (wildcards.probe in BASELINE_PROBES) != (kind == "baselines"):
        raise WorkflowError(
            f"no {wildcards.probe} segmentation under {base}: the backbone_* probes belong to "
            "results/<dataset>/baselines/, the others to results/<dataset>/runs/"
        )
    if wildcards.probe in SUPERVISED_PROBES:
        require_labels(wildcards.ds, f"the {wildcards.probe} probe")
    variant = name if kind == "runs" else BASELINES[(wildcards.ds, name)]
    inputs = {"features": f"{features_dir(wildcards.ds, variant)}/val.h5"}
    if kind == "runs":
        inputs["codes"] = f"{base}/codes.h5"
    inputs.update(
        {
            "cluster": {"centroids": f"{base}/centroids.npy"},
            "linear": {"linear": f"{base}/linear.pt"},
            "backbone_kmeans": {"centroids": f"{base}/kmeans.npy"},
            "backbone_linear": {"linear": f"{base}/linear.pt"},
        }[wildcards.probe]
    )
    return inputs


def segment_args(wildcards, input):
    return " ".join(f"--{name} {path}" for name, path in input.items() if name != "features")


def run_segments(ds, variant, seed, probes):
    """Segment shards of a run's probes and of its baselines."""
    paths = []
    for probe in probes:
        owner = baseline_dir(ds, variant, seed) if probe in BASELINE_PROBES else run_dir(ds, variant, seed)
        paths += gather.segment(f"{owner}/segment/{probe}.{{scatteritem}}.h5")
    return paths


def evaluate_inputs(wildcards):
    require_labels(wildcards.ds, "the labelled metrics (miou.csv)")
    return _evaluation_inputs(wildcards, PROBES)


def evaluate_unlabelled_inputs(wildcards):
    return _evaluation_inputs(wildcards, UNSUPERVISED_PROBES)


def _evaluation_inputs(wildcards, probes):
    ds, variant, seed = wildcards.ds, wildcards.variant, wildcards.seed
    return {"features": f"{features_dir(ds, variant)}/val.h5", "segments": run_segments(ds, variant, seed, probes)}


def per_attempt(amount):
    """A resource that grows with each retry of a failed job (`--retries`): `amount` × attempt."""
    return lambda wildcards, attempt: amount * attempt


def _samples(index_csv):
    """Rows of an index; before `prepare` has written it (dry runs), a guess of 10,000."""
    if not os.path.exists(index_csv):
        return 10_000
    with open(index_csv) as f:
        return max(sum(1 for _ in f) - 1, 0)


def shard_index(wildcards):
    """The 0-based shard of a scatter item `i-of-n`."""
    return int(wildcards.scatteritem.split("-of-")[0]) - 1


def shard_count(wildcards):
    """The number of shards of a scatter item `i-of-n`."""
    return int(wildcards.scatteritem.split("-of-")[1])


def store_mb(features):
    """Size of a feature store in MB; a gathered store is virtual, so count its shard files."""
    shard_dir = Path(features).with_suffix("")
    files = list(shard_dir.glob("*.h5")) if shard_dir.is_dir() else [Path(features)]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def pooled_mb(features):
    """MB of a store's pooled descriptors as float32; 0 before the store exists (dry runs)."""
    if not os.path.exists(features):
        return 0.0
    with h5py.File(features, "r") as f:
        return (f["pooled"].size * 4 / 2**20) if "pooled" in f else 0.0


def store_images(features):
    """Samples of a store; before it exists (dry runs), a guess of 5,000."""
    if not os.path.exists(features):
        return 5_000
    with h5py.File(features, "r") as f:
        return len(f["ids"])


# What each job asks for, from the table in stego_steps/resources.py: `threads: job_threads("rule")` and
# `resources:` gpu/mem_mb/runtime. Memory and time are callables of the job's own threads (after
# --set-threads), inputs and retry attempt.
def job_threads(name):
    return stego_resources.threads(name, TORCH_THREADS)


def job_gpu(name):
    return stego_resources.gpu(name, ON_GPU)


def job_mem_mb(name):
    spec = stego_resources.RULES[name]

    def mem_mb(wildcards, input, threads, attempt):
        features = input.features if "features" in input.keys() else (input[0] if len(input) else None)
        return stego_resources.mem_mb(
            name,
            job_threads=threads,
            torch_threads=TORCH_THREADS,
            store_mb=store_mb(features) if spec.holds_store else 0.0,
            pooled_mb=pooled_mb(features) if spec.holds_pooled else 0.0,
            budget_mb=MAX_MEMORY_GB * 1024,
            attempt=attempt,
        )

    return mem_mb


def job_runtime(name):
    if name == "extract":

        def extract_runtime(wildcards, input, attempt):
            passes = 1 if wildcards.split == "train" else 2  # evaluation images are extracted with their flips
            return stego_resources.extract_runtime(_samples(input.index) / shard_count(wildcards), passes, attempt)

        return extract_runtime
    if name == "segment":

        def segment_runtime(wildcards, input, threads, attempt):
            workers = stego_resources.workers(name, threads, TORCH_THREADS)
            return stego_resources.segment_runtime(
                store_images(input.features) / shard_count(wildcards), workers, attempt
            )

        return segment_runtime
    return lambda wildcards, attempt: stego_resources.runtime(name, attempt)


# Pictures (workflow/rules/figures.smk)
def figure_targets(ds, variant=DEFAULT_VARIANT, seed=None):
    """Every picture of a run (by default the dataset's default run): the metrics pictures only with labels."""
    base = f"{default_run(ds) if seed is None else run_dir(ds, variant, seed)}/figures"
    files = [f"{base}/panels.png", f"{base}/training.png", f"{base}/correlations.png"]
    if labelled(ds):
        files.extend(f"{base}/confusion_{row_key(probe, crf)}.png" for probe, crf in ROWS)
        files.append(f"{base}/per_class_iou.png")
    return files


def panel_inputs(wildcards):
    probes = PROBES if labelled(wildcards.ds) else UNSUPERVISED_PROBES
    inputs = _evaluation_inputs(wildcards, probes)
    if labelled(wildcards.ds):
        inputs["mapping"] = f"{run_of(wildcards)}/mapping"
    return inputs


def panel_args(wildcards, input):
    return f"--mapping {input.mapping}" if "mapping" in input.keys() else ""


# New images (workflow/rules/segment_images.smk), segmented with the dataset's default run
def segment_images_inputs(wildcards):
    if wildcards.name not in config["segment_images"]:
        raise WorkflowError(
            f"no folder named '{wildcards.name}' under `segment_images:` in the config; add "
            f"`segment_images: {{{wildcards.name}: path/to/images}}` (or pass it with --config)"
        )
    from stego_steps.images import folder_files

    # Every file of the folder is an input (one per image): adding, removing or editing an image re-runs the
    # folder's job, and only it. The run's settings (weights, seed, precision, store dtype) come from its codes.
    folder = config["segment_images"][wildcards.name]
    try:
        files = folder_files(folder)
    except UserError as err:
        raise WorkflowError(f"segment_images.{wildcards.name}: {err}")
    if not files:
        raise WorkflowError(
            f"segment_images.{wildcards.name}: the folder {folder} holds no files; put the images " "to segment there"
        )
    run = default_run(wildcards.ds)
    inputs = {
        "images": [str(p) for p in files],
        "head": f"{run}/head.pt",
        "centroids": f"{run}/centroids.npy",
        "codes": f"{run}/codes.h5",
    }
    if labelled(wildcards.ds):
        inputs.update(mapping=f"{run}/mapping", linear=f"{run}/linear.pt")
    return inputs


# Experiment tables (workflow/rules/tables.smk)
def run_seeds(ds, variant):
    """The seeds of a variant's runs: one for an imported checkpoint (nothing of it depends on the seed)."""
    return seeds(config, ds)[:1] if RESOLVED[ds][variant]["checkpoint"] else seeds(config, ds)


def table_runs(ds, variant_names):
    """(dataset, variant, seed, kind, backbone) of every run of the given variants, and its miou.csv."""
    return [
        {
            "dataset": ds,
            "variant": v,
            "seed": seed,
            "kind": config["datasets"][ds]["kind"],
            "backbone": RESOLVED[ds][v]["backbone"],
            "path": run_table(ds, v, seed),
        }
        for v in variant_names
        for seed in run_seeds(ds, v)
    ]


def main_table_runs():
    for ds in config["tables"]["main"]:
        require_labels(ds, "results/tables/main")
    return [
        run
        for ds in config["tables"]["main"]
        for run in table_runs(ds, config["datasets"][ds].get("main_variants") or [DEFAULT_VARIANT])
    ]


def ablation_runs(wildcards):
    require_labels(wildcards.ds, f"results/tables/ablation_{wildcards.ds}")
    runs = table_runs(
        wildcards.ds, [v for v in RESOLVED[wildcards.ds] if v == DEFAULT_VARIANT or v.startswith("ablate_")]
    )
    for run in runs:
        r = RESOLVED[wildcards.ds][run["variant"]]
        run["axes"] = {
            "mlp": r["head"]["nonlinear"],
            "zero_clamp": r["loss"]["zero_clamp"],
            "five_crop": r["five_crop"],
            "spatial_centering": r["loss"]["spatial_centering"],
            **{term: r["loss"]["weights"][term] != 0 for term in ("self", "knn", "random")},
        }
    return runs


def table_targets():
    """Every configured experiment table (CSV and Markdown)."""
    names = (["main"] if config["tables"]["main"] else []) + [f"ablation_{ds}" for ds in config["tables"]["ablation"]]
    return [f"results/tables/{name}.{ext}" for name in names for ext in ("csv", "md")]


# Start-up checks of the command line (the Snakemake CLI that reads this file; not inside a job): targets that
# name an unconfigured dataset, variant, seed or key are listed with the valid ones, and `--unlock` is refused
# while another workflow runs on this folder.
def cli_args():
    """The parsed command line of the Snakemake CLI process, or None (API use, a job, or unparsable)."""
    if not workflow.is_main_process or "snakemake" not in " ".join(sys.argv[:2]):
        return None
    import contextlib
    import io

    from snakemake.cli import get_argument_parser

    try:  # Snakemake itself reports a bad command line
        with contextlib.redirect_stderr(io.StringIO()):
            return get_argument_parser().parse_known_args(sys.argv[1:])[0]
    except SystemExit:
        return None


def target_datasets():
    return {
        ds: stego_targets.Dataset(
            variants=tuple(RESOLVED[ds]),
            seeds=tuple(seeds(config, ds)),
            feature_keys=tuple(sorted(set(FEATURE_KEY[ds].values()))),
            baseline_keys=tuple(sorted(set(BASELINE_KEY[ds].values()))),
            labelled=labelled(ds),
        )
        for ds in config["datasets"]
    }


CLI = cli_args()
if CLI is not None and CLI.unlock:
    try:
        runlock.check_unlock()
    except UserError as err:
        raise WorkflowError(str(err))
elif CLI is not None and CLI.targets:
    _problem = stego_targets.check_targets(CLI.targets, target_datasets(), table_targets())
    if _problem:
        raise WorkflowError(_problem)


# When jobs are about to run (`onstart`: a real run, not a dry run, in the Snakemake process, not in a job):
# this folder's run lock, and what the DAG decides — the disk for every feature store the request creates,
# a GPU for `device: cuda` and the cores for torch_threads when the jobs run on this machine.
def start_run(log):
    if not workflow.is_main_process:
        return
    lock = os.path.abspath(runlock.LOCK)  # Snakemake leaves the working directory before the process exits
    try:
        runlock.acquire(lock, command=" ".join(sys.argv))
    except UserError as err:
        raise WorkflowError(str(err))
    atexit.register(runlock.release, lock, os.getpid())
    jobs = list(workflow.dag.needrun_jobs())
    try:
        check_request_disk(jobs)
        if workflow.local_exec:
            check_local_machine(jobs)
    except UserError as err:
        runlock.release(lock)
        raise WorkflowError(str(err))
    except WorkflowError:
        runlock.release(lock)
        raise


def requested_stores(jobs):
    """The feature stores the extract jobs of this invocation write (RequestedStore each), and the stores whose
    sample count is not known before `prepare`."""
    stores, unknown, seen = [], [], set()
    for job in jobs:
        if job.rule.name != "extract":
            continue
        ds, fkey, split = job.wildcards.ds, job.wildcards.fkey, job.wildcards.split
        if (ds, fkey, split) in seen:
            continue
        seen.add((ds, fkey, split))
        store_dir = f"results/{ds}/features/{fkey}"
        variant = FEATURES[(ds, fkey)]
        if os.path.exists(job.input.index):
            samples, has_labels = stego_plan.index_summary(job.input.index)
        else:
            samples = stego_validate.split_samples(
                config["datasets"][ds]["kind"], dataset_settings(config, ds, variant), split
            )
            has_labels = labelled(ds)
        if samples is None:
            unknown.append(f"{store_dir}/{split}.h5")
            continue
        split_plan = stego_plan.split_plan(split, samples, has_labels, json.loads(job.params.settings))
        stores.append(
            stego_plan.RequestedStore(
                store_dir,
                split_plan,
                stego_plan.reclaimable_bytes(store_dir, [split]),
                five_crop=split == "train" and RESOLVED[ds][variant]["five_crop"],
            )
        )
    return stores, unknown


def check_request_disk(jobs):
    """Refuse, before the first job, a request whose new feature stores do not fit together on their disk
    (`disk_free_bytes` in the config replaces the measured free space)."""
    stores, unknown = requested_stores(jobs)
    by_disk = {}
    for store in stores:
        measured, free = stego_plan.free_bytes(store.store_dir)
        by_disk.setdefault(os.stat(measured).st_dev, (measured, free, []))[2].append(store)
    for measured, free, group in by_disk.values():
        if config.get("disk_free_bytes") is not None:
            free = int(config["disk_free_bytes"])
        stego_plan.check_request(group, free, measured=measured, unknown=unknown)


def check_local_machine(jobs):
    """Jobs that run here: a GPU where they ask for cuda, and no more torch threads than this machine's cores."""
    model_jobs = [job for job in jobs if "device" in job.rule.resources]
    cuda = sorted({job.rule.name for job in model_jobs if str(job.resources.get("device", "")).startswith("cuda")})
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise WorkflowError(
                f"`device: cuda` but torch sees no GPU on this machine (rules {', '.join(cuda)} would "
                "fail); set `device: auto` (GPU when there is one) or `device: cpu`, or run where "
                "there is a GPU (e.g. `--workflow-profile workflow/profiles/slurm`)"
            )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if model_jobs and TORCH_THREADS > cores:
        raise WorkflowError(
            f"torch_threads is {TORCH_THREADS} but this machine has {cores} cores: every model job "
            f"would compute that much slower; set `torch_threads: {cores}` or less (results with "
            "another thread count round differently, so changing it re-runs the model stages)"
        )
