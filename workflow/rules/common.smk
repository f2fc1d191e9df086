# Start-up: validate the configuration and resolve every dataset's preset, so that a bad configuration fails
# before any job runs (backbone weights are checked while the DAG is built). Helpers below keep the rules
# declarative.
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
from snakemake.utils import validate

from stego_steps import backbones
from stego_steps.evaluate import ROWS
from stego_steps import config as stego_config
from stego_steps.config import ConfigError, backbone_weights, dataset_settings, resolve, stage_settings

# A short message naming the bad key first; then Snakemake's own validation fills in the defaults.
config.update(stego_config.coerce(config, stego_config.load_schema()))
try:
    stego_config.validate(config)
except ConfigError as err:
    raise WorkflowError(str(err))
validate(config, schema="../schemas/config.schema.yaml")

PRESETS = {}
for _ds in config["datasets"]:
    try:
        PRESETS[_ds] = resolve(config, _ds)
    except ConfigError as err:
        raise WorkflowError(f"config/config.yaml: {err}")
for _ds in config["run"]:
    if _ds not in config["datasets"]:
        raise WorkflowError(f"config/config.yaml: run lists '{_ds}', which is not under `datasets:`")

# Jobs call `python -m stego_steps.<stage>`: the interpreter that runs Snakemake (the project's environment)
# comes first on PATH, unless --sdm conda puts the rule's environment in front of it.
envvars:
    "PATH",


os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# GPU rules ask for one GPU when the models will run on one; on CPU machines they ask for none.
GPU = 1 if config["device"] == "cuda" or (config["device"] == "auto" and shutil.which("nvidia-smi")) else 0
SHARDS = range(config["segment_shards"])
EXTRACT_SHARDS = range(config["extract_shards"])
PROBES = ["cluster", "linear", "backbone_kmeans"]
UNSUPERVISED = ["cluster", "backbone_kmeans"]  # the probes that need no labels


wildcard_constraints:
    ds=r"[A-Za-z0-9_\-]+",
    bb=r"[A-Za-z0-9_]+",
    split=r"train|val",
    probe="|".join(PROBES),
    shard=r"\d+",


def backbone_of(ds):
    return PRESETS[ds]["backbone"]


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
        raise WorkflowError(f"dataset '{ds}' is labelled ({why}) but {os.path.join(root, 'labels', missing[0])} "
                            "does not exist: add the label PNGs of that split, or set `labelled: false` to run without "
                            f"labels (cluster segmentations and results/{ds}/clusters.csv, no metrics)")
    return flag


def final_target(ds):
    """The table a dataset's run ends with: the metrics when it has labels, else the cluster pixel shares."""
    return f"results/{ds}/miou.csv" if labelled(ds) else f"results/{ds}/clusters.csv"


def require_labels(ds, what):
    if not labelled(ds):
        raise WorkflowError(f"dataset '{ds}' has no labels, so {what} cannot be computed; its result is "
                            f"results/{ds}/clusters.csv (cluster pixel shares) and the cluster segmentations")


def settings(stage):
    """Input function → the JSON settings of a stage for the job's dataset (and split)."""

    def get(wildcards):
        return json.dumps(stage_settings(config, wildcards.ds, stage, wildcards.get("split", "train")))

    return get


def backbone_weights_input(wildcards):
    """The weights file of the job's backbone as an input (none for timm-cache or random weights).

    Checked while the DAG is built, so missing weights stop the run before any job starts."""
    path = backbone_weights(config, wildcards.bb)
    try:
        backbones.check_weights(wildcards.bb, path)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        message = f"backbone '{wildcards.bb}' (dataset '{wildcards.ds}'): {err}"
        if not workflow.dryrun:
            raise WorkflowError(message)
        # A dry run still shows the whole DAG with the preset values, and says what a real run needs.
        logger.warning(f"a real run would stop here: {message}")
        return []
    return [path] if path else []


def prepare_settings(wildcards):
    return json.dumps(dataset_settings(config, wildcards.ds))


def segment_inputs(wildcards):
    """What the segment stage of a probe reads besides the evaluation features."""
    base = f"results/{wildcards.ds}"
    bb = wildcards.bb
    if wildcards.probe == "linear":
        require_labels(wildcards.ds, "the linear probe")
    return {
        "cluster": {"codes": f"{base}/predict/{bb}/codes.h5", "centroids": f"{base}/cluster/{bb}/centroids.npy"},
        "linear": {"codes": f"{base}/predict/{bb}/codes.h5", "linear": f"{base}/probe/{bb}/linear.pt"},
        "backbone_kmeans": {"centroids": f"{base}/cluster/{bb}/backbone_centroids.npy"},
    }[wildcards.probe]


def segment_args(wildcards, input):
    return " ".join(f"--{name} {path}" for name, path in input.items() if name != "features")


def evaluate_inputs(wildcards):
    require_labels(wildcards.ds, "the labelled metrics (miou.csv)")
    return _evaluation_inputs(wildcards.ds, PROBES)


def evaluate_unlabelled_inputs(wildcards):
    return _evaluation_inputs(wildcards.ds, UNSUPERVISED)


def _evaluation_inputs(ds, probes):
    base, bb = f"results/{ds}", backbone_of(ds)
    return {
        "features": f"{base}/features/{bb}/val.h5",
        "segments": expand(f"{base}/segment/{bb}/{{probe}}.{{shard}}.h5", probe=probes, shard=SHARDS),
        "cluster": f"{base}/cluster/{bb}/centroids.npy",
        "backbone_kmeans": f"{base}/cluster/{bb}/backbone_centroids.npy",
    }


def _samples(index_csv):
    """Rows of an index; before `prepare` has written it (dry runs), a guess of 10,000."""
    if not os.path.exists(index_csv):
        return 10_000
    with open(index_csv) as f:
        return max(sum(1 for _ in f) - 1, 0)


def extract_runtime(wildcards, input):
    """Minutes for one extraction shard: start-up plus a slow GPU's pace (20 images/s, flips counted)."""
    per_shard = _samples(input.index) / len(EXTRACT_SHARDS)
    passes = 1 if wildcards.split == "train" else 2
    return int(30 + per_shard * passes / 20 / 60)


def store_mb(features):
    """Size of a feature store in MB; a gathered store is virtual, so count its shard files."""
    shard_dir = Path(features).with_suffix("")
    files = list(shard_dir.glob("*.h5")) if shard_dir.is_dir() else [Path(features)]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def in_memory_mb(wildcards, input):
    """Memory for stages that hold the training store in memory (up to max_memory_gb = 8 GB) and more."""
    return int(4000 + 1.2 * min(store_mb(input.features), 8192))


def segment_runtime(wildcards, input):
    """Minutes for one CRF shard: about 3 s per 320² image and probe on one core, spread over 2 threads."""
    n = 5_000  # before the store exists (dry runs)
    if os.path.exists(input.features):
        with h5py.File(input.features, "r") as f:
            n = len(f["ids"])
    return int(30 + n / len(SHARDS) * 3 / 2 / 60)


# Pictures (workflow/rules/figures.smk)
def figure_targets(ds):
    """Every picture of dataset `ds`: the metrics pictures only where it has labels."""
    base = f"results/{ds}/figures"
    files = [f"{base}/panels.png", f"{base}/training.png", f"{base}/correlations.png"]
    if labelled(ds):
        files.extend(f"{base}/confusion_{probe}_{'crf' if crf else 'raw'}.png" for probe, crf in ROWS)
        files.append(f"{base}/per_class_iou.png")
    return files


def panel_inputs(wildcards):
    ds, bb = wildcards.ds, backbone_of(wildcards.ds)
    probes = PROBES if labelled(ds) else UNSUPERVISED
    inputs = {
        "features": f"results/{ds}/features/{bb}/val.h5",
        "segments": expand(f"results/{ds}/segment/{bb}/{{probe}}.{{shard}}.h5", probe=probes, shard=SHARDS),
    }
    if labelled(ds):
        inputs["mapping"] = f"results/{ds}/mapping"
    return inputs


def panel_args(wildcards, input):
    return f"--mapping {input.mapping}" if "mapping" in input.keys() else ""


# New images (workflow/rules/segment_images.smk)
def segment_images_inputs(wildcards):
    if wildcards.name not in config["segment_images"]:
        raise WorkflowError(f"no folder named '{wildcards.name}' under `segment_images:` in the config; add "
                            f"`segment_images: {{{wildcards.name}: path/to/images}}` (or pass it with --config)")
    ds, bb = wildcards.ds, backbone_of(wildcards.ds)
    base = f"results/{ds}"
    inputs = {
        "features": f"{base}/features/{bb}/val.h5",
        "head": f"{base}/train/{bb}/head.pt",
        "centroids": f"{base}/cluster/{bb}/centroids.npy",
        "classes": f"{base}/index/classes.json",
    }
    if labelled(ds):
        inputs.update(mapping=f"{base}/mapping", linear=f"{base}/probe/{bb}/linear.pt")
    return inputs


def segment_images_args(wildcards):
    bb = backbone_of(wildcards.ds)
    weights = backbone_weights(config, bb)
    return f"--backbone {bb} --weights {weights}" if weights else f"--backbone {bb}"
