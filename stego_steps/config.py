"""Resolving the workflow configuration: presets, per-dataset overrides and the settings of each stage.

Pure functions on the (already schema-validated) config dict; the Snakefile calls them at start-up so that a
bad or incomplete configuration fails before any job runs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from stego_steps.errors import UserError

# Shipped inside the package (package data), so that an installed package validates without the repository.
SCHEMA = Path(__file__).resolve().parent / "data" / "config.schema.yaml"


# What to do about some schema errors, appended to jsonschema's message.
HINTS = {
    "'class_names' is a required property": (": a 'directory' dataset needs class_names, the list of class names "
                                             "in label-value order (their number is the number of clusters)"),
}

# Preset keys that may be left out (with these values): label-free calibration of the loss shifts, how
# patch features are stored, the extraction's arithmetic. The calibration's defaults live here only (the config
# and the schema point here). Candidates, per term the fraction of point pairs that repel: most pairs repel
# (street photos; chosen on CamVid's validation split), or most pairs within an image and with a neighbour
# attract (scenes whose parts the features separate cleanly, like the demos). A head trained 200 steps per
# candidate; the second replaces the first only if the CRF changes at most 0.8 times as many pixels of its
# clusters on 32 training images (label-free).
PRESET_DEFAULTS: dict[str, Any] = {
    "head": {"nonlinear": True},
    "checkpoint": None,
    "store_dtype": "float16",
    "precision": "float32",
    "calibrate": "auto",
    "released_shifts": [],
    "calibration": {"candidates": [{"self": 0.7, "knn": 0.7, "random": 0.95},
                                   {"self": 0.2, "knn": 0.1, "random": 1.0}],
                    "selection": {"steps": 200, "images": 32, "ratio": 0.8}, "batches": 24,
                    "values_per_batch": 20000},
}


class ConfigError(UserError):
    """A configuration problem, with the offending key in the message."""


def deep_merge(base: dict, update: dict) -> dict:
    """Copy of `base` with `update` merged in recursively (update wins)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_schema(path: Path = SCHEMA) -> dict:
    """The schema (a fresh copy: callers may fill in defaults)."""
    return copy.deepcopy(_read_schema(path))


@functools.lru_cache(maxsize=4)
def _read_schema(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _coerce_scalar(value: str, types: list[str]) -> Any:
    lowered = value.strip().lower()
    if "null" in types and lowered in ("null", "none", "~"):
        return None
    if "boolean" in types and lowered in ("true", "false"):
        return lowered == "true"
    for kind, cast in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def coerce(value: Any, schema: dict, defs: dict | None = None) -> Any:
    """Values typed as the schema says: `snakemake --config` hands nested values over as strings ('5').

    Returns the coerced copy; anything that does not parse is left for `validate` to report.
    """
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str) and set(types) & {"integer", "number", "boolean", "null"}:
        return _coerce_scalar(value, types)
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce(v, props.get(k, extra if isinstance(extra, dict) else {}), defs) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce(v, schema["items"], defs) for v in value]
    return value


def validate(config: dict, schema: dict | None = None) -> None:
    """Check the config against the JSON schema; the error names the offending key and the problem."""
    import jsonschema

    schema = schema or load_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = []
        for err in errors[:5]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            hint = HINTS.get(err.message, "")
            lines.append(f"  {where}: {err.message}{hint}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))


def _missing_keys(schema: dict, value: dict, defs: dict, prefix: str) -> list[str]:
    """Leaf keys that the preset schema defines but `value` lacks."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    missing = []
    for key, sub in schema.get("properties", {}).items():
        if key not in value:
            missing.append(prefix + key)
        elif isinstance(value[key], dict):
            missing += _missing_keys(sub, value[key], defs, f"{prefix}{key}.")
    return missing


DEFAULT_VARIANT = "default"


#: The ablation axes, each one component of the method: (the override of its variant `ablate_<axis>`, whether a
#: resolved variant keeps the component). The head's MLP path and the zero clamp are removed; five-crop and
#: spatial centering are flipped from the preset's choice (the paper's presets differ there); each loss term is
#: removed by a zero weight. The variants, the ablation table's runs and its columns all read this.
ABLATION_AXES: dict[str, tuple[Callable[[dict], dict], Callable[[dict], Any]]] = {
    "mlp": (lambda r: {"head": {"nonlinear": False}}, lambda r: r["head"]["nonlinear"]),
    "zero_clamp": (lambda r: {"loss": {"zero_clamp": False}}, lambda r: r["loss"]["zero_clamp"]),
    "five_crop": (lambda r: {"five_crop": not r["five_crop"]}, lambda r: r["five_crop"]),
    "spatial_centering": (lambda r: {"loss": {"spatial_centering": not r["loss"]["spatial_centering"]}},
                          lambda r: r["loss"]["spatial_centering"]),
    **{term: ((lambda r, t=term: {"loss": {"weights": {t: 0.0}}}), (lambda r, t=term: r["loss"]["weights"][t] != 0))
       for term in ("self", "knn", "random")},
}
ABLATION_PREFIX = "ablate_"


def ablations(resolved: dict) -> dict[str, dict]:
    """The built-in ablation variants of a resolved preset: `ablate_<axis>` switches that axis's component."""
    return {f"{ABLATION_PREFIX}{axis}": off(resolved) for axis, (off, _) in ABLATION_AXES.items()}


def is_ablation(variant: str) -> bool:
    return variant.startswith(ABLATION_PREFIX)


def ablation_axes(resolved: dict) -> dict[str, Any]:
    """Which components of the method a resolved variant keeps, per axis (the ablation table's ✓/✗)."""
    return {axis: kept(resolved) for axis, (_, kept) in ABLATION_AXES.items()}


def resolve(config: dict, dataset: str, variant: str = DEFAULT_VARIANT, schema: dict | None = None) -> dict:
    """Hyper-parameters of one variant of a dataset: its preset, with the dataset's overrides and then the
    variant's applied, checked for completeness."""
    schema = schema or load_schema()
    datasets = config.get("datasets", {})
    if dataset not in datasets:
        raise ConfigError(f"dataset '{dataset}' is not configured; configured datasets: "
                          f"{', '.join(sorted(datasets)) or 'none'} (add it under `datasets:`)")
    entry = datasets[dataset]
    preset_name = entry["preset"]
    if preset_name not in config.get("presets", {}):
        raise ConfigError(f"datasets.{dataset}.preset: unknown preset '{preset_name}'; known presets: "
                          f"{', '.join(sorted(config.get('presets', {})))}")
    resolved = deep_merge(PRESET_DEFAULTS, config["presets"][preset_name])
    resolved = deep_merge(resolved, entry.get("overrides") or {})
    missing = _missing_keys(schema["$defs"]["preset"], resolved, schema["$defs"], "")
    if missing:
        raise ConfigError(f"preset '{preset_name}' of dataset '{dataset}' lacks {', '.join(missing)}: "
                          "add them to the preset or to the dataset's overrides")
    if variant == DEFAULT_VARIANT:
        return resolved
    variants = {**ablations(resolved), **(entry.get("variants") or {})}
    if variant not in variants:
        raise ConfigError(f"dataset '{dataset}' has no variant '{variant}'; its variants: {DEFAULT_VARIANT}, "
                          f"{', '.join(sorted(variants))} (add it under `datasets.{dataset}.variants`)")
    return deep_merge(resolved, variants[variant])


def variants(config: dict, dataset: str) -> list[str]:
    """Every variant of a dataset: the default, the built-in ablations, then the configured ones."""
    return [DEFAULT_VARIANT, *ablations(resolve(config, dataset)), *(config["datasets"][dataset].get("variants") or {})]


def seeds(config: dict, dataset: str) -> list[int]:
    """The seeds of a dataset's runs: its `seeds`, else its preset's seed."""
    return list(config["datasets"][dataset].get("seeds") or [resolve(config, dataset)["seed"]])


def index_name(resolved: dict) -> str:
    """The folder of the sample index that a variant trains on: five-crop rows differ from whole images."""
    return f"index_five_crop_{resolved['crop_ratio']}" if resolved["five_crop"] else "index"


def crop_of_index(name: str) -> dict[str, Any]:
    """`five_crop` and `crop_ratio` of an index folder name (inverse of `index_name`)."""
    if name == "index":
        return {"five_crop": False}
    return {"five_crop": True, "crop_ratio": float(name.removeprefix("index_five_crop_"))}


def digest(value: Any) -> str:
    """8 hex digits identifying a JSON-able value (key order ignored)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _extraction(config: dict, dataset: str, variant: str) -> dict[str, Any]:
    """What decides a variant's features: the index they come from and each split's extraction settings
    (the seed only for a random backbone), less the batch size (which changes how, not what, is computed)."""
    r = resolve(config, dataset, variant)
    splits = {split: {k: v for k, v in stage_settings(config, dataset, "extract", split, variant).items()
                      if k != "batch_size"} for split in ("train", "val")}
    return {"index": index_name(r), **splits}


def features_key(config: dict, dataset: str, variant: str = DEFAULT_VARIANT) -> str:
    """The folder name of a variant's feature stores: `<backbone>_<digest of what produced them>`, so that
    variants with the same extraction share them and any other extraction gets its own."""
    backbone = safe_name(resolve(config, dataset, variant)["backbone"])
    return f"{backbone}_{digest(_extraction(config, dataset, variant))}"


def baseline_key(config: dict, dataset: str, variant: str = DEFAULT_VARIANT) -> str:
    """The folder name of a variant's backbone baselines (K-Means and linear probe on the raw features):
    its features key and the clustering and probe settings, which are all the baselines depend on."""
    settings = {stage: {k: v for k, v in stage_settings(config, dataset, stage, variant=variant).items() if k != "seed"}
                for stage in ("cluster", "probe")}
    return f"{features_key(config, dataset, variant)}_{digest(settings)}"


def check_experiments(config: dict, schema: dict | None = None) -> None:
    """Every variant of every dataset resolves, and the tables name configured datasets and variants."""
    schema = schema or load_schema()
    for dataset in config["datasets"]:
        for variant in variants(config, dataset):
            resolve(config, dataset, variant, schema)
        for variant in config["datasets"][dataset].get("main_variants") or []:
            if variant not in variants(config, dataset):
                raise ConfigError(f"datasets.{dataset}.main_variants: no variant '{variant}'; add it under "
                                  f"`datasets.{dataset}.variants` (known: {', '.join(variants(config, dataset))})")
    for table, names in (config.get("tables") or {}).items():
        for name in names:
            if name not in config["datasets"]:
                raise ConfigError(f"tables.{table} lists '{name}', which is not under `datasets:`")


def dataset_settings(config: dict, dataset: str, variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """What the `prepare` stage needs: the dataset entry plus the preset values that shape the index."""
    entry = {k: v for k, v in config["datasets"][dataset].items()
             if k not in ("overrides", "preset", "seeds", "variants", "main_variants")}
    resolved = resolve(config, dataset, variant)
    return {**entry, "five_crop": resolved["five_crop"], "crop_ratio": resolved["crop_ratio"]}


def backbone_weights(config: dict, backbone: str) -> str | None:
    return (config.get("backbones") or {}).get(backbone, {}).get("weights")


def backbone_layers(config: dict, backbone: str) -> list[int] | None:
    """The feature layers configured for a `timm/<model>` backbone (None: its last block or stage)."""
    return (config.get("backbones") or {}).get(backbone, {}).get("layers")


def safe_name(backbone: str) -> str:
    """A backbone name as a folder name and wildcard value: `timm/vit_base_patch16_clip_224.openai` →
    `timm-vit_base_patch16_clip_224-openai` (no `/` or `.`); the named backbones are already safe."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", backbone)


# Preset keys of a stage that change how often something is saved, never what is computed: they stay out of
# the stage's settings (so out of Snakemake's params and every cache key) and reach the job another way
# (`bookkeeping`; the rule hands them over as resources, which are no rerun trigger).
BOOKKEEPING = {"train": ("checkpoint_every",)}


def random_backbone(name: str) -> bool:
    """Whether a backbone is a seeded random initialisation (`<name>_random`): the only ones the seed decides.
    (The suffix of `backbones.RANDOM_SUFFIX`, spelled here so that resolving a config imports no torch.)"""
    return name.endswith("_random")


def bookkeeping(config: dict, dataset: str, stage: str, variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """The bookkeeping keys of a stage (see `BOOKKEEPING`), by name."""
    section = resolve(config, dataset, variant).get(stage) or {}
    return {k: section[k] for k in BOOKKEEPING.get(stage, ()) if k in section}


def stage_settings(config: dict, dataset: str, stage: str, split: str = "train", variant: str = DEFAULT_VARIANT,
                   seed: int | None = None) -> dict[str, Any]:
    """The JSON settings passed to one stage's CLI: exactly what decides that stage's output, so that
    Snakemake's parameter tracking reruns exactly the stages whose result can change. `seed` is the run's seed
    (training onward); the extraction takes the preset's seed only for random backbones (the only ones it
    seeds). Bookkeeping (`BOOKKEEPING`) is left out; so are the device and the memory budget, which change
    where and how fast, not what, a stage computes."""
    r = resolve(config, dataset, variant)
    run_seed = r["seed"] if seed is None else seed
    if stage == "extract":
        train = split == "train"
        return {
            "backbone": r["backbone"], "weights": backbone_weights(config, r["backbone"]),
            "res": r["train_res"] if train else r["eval_res"], "evaluation": not train,
            # The official five-crops were stored as JPEG; evaluation images never were.
            "jpeg_quality": r["jpeg_quality"] if (train and r["five_crop"]) else None,
            # The batch size aligns the shards and sets the batches' composition (the features' last bits);
            # it stays out of the features key (`_extraction`).
            "batch_size": r["extract_batch"],
            **({"seed": r["seed"]} if random_backbone(r["backbone"]) else {}),
            "store_dtype": r["store_dtype"], "precision": r["precision"],
            # Chosen layers of a `timm/` model, only where configured (the other keys stay as they were).
            **({"layers": layers} if (layers := backbone_layers(config, r["backbone"])) else {}),
        }
    if stage == "train":
        kept = {k: v for k, v in r["train"].items() if k not in BOOKKEEPING["train"]}
        return {**r["head"], **kept, **{k: v for k, v in r["loss"].items()},
                "neighbours": r["knn_k"], "seed": run_seed}
    if stage == "calibrate":
        # The candidate heads train for `calibration.selection.steps`: the train stage's steps decide nothing here.
        trained = {k: v for k, v in stage_settings(config, dataset, "train", variant=variant, seed=seed).items()
                   if k != "steps"}
        return {**trained, "calibrate": r["calibrate"],
                "calibration": r["calibration"], "cluster": r["cluster"], "kind": config["datasets"][dataset]["kind"],
                "backbone": r["backbone"], "released_shifts": r["released_shifts"]}
    if stage == "cluster":
        return {**r["cluster"], "seed": run_seed}
    if stage == "probe":
        return {**r["probe"], "seed": run_seed}
    raise ConfigError(f"no settings for stage '{stage}'")


# ---------------------------------------------------------------------------------------------------------
# `python -m stego_steps.config [my.yaml ...]`: check config files before a run

DEFAULT_CONFIG = SCHEMA.parents[2] / "config" / "config.yaml"


def load_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict; a syntax error is a `ConfigError` naming the file, line and column."""
    path = Path(path)
    try:
        value = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the config file {path}: {err.strerror}") from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({err.context})" if err.context else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {err.problem}{context}; fix that line (indent "
                          "with spaces, not tabs; close brackets and quotes; put a space after each colon)") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: a config file must map keys to values, got a {type(value).__name__}")
    return value


def check_files(paths: list[str | Path]) -> dict:
    """The configuration `snakemake --configfile <paths>` would run with (the paths merged in order over
    config/config.yaml), validated and with every dataset's preset resolved."""
    config: dict = load_yaml(DEFAULT_CONFIG)
    for path in paths:
        config = deep_merge(config, load_yaml(path))
    schema = load_schema()
    config = coerce(config, schema)
    validate(config, schema)
    check_experiments(config, schema)
    return config


def check_main(argv: list[str] | None = None) -> None:
    """`python -m stego_steps.config FILE...`: a checker, not a workflow stage."""
    import argparse

    parser = argparse.ArgumentParser(description="Check config files as `snakemake --configfile FILE ...` merges "
                                     "them over config/config.yaml: YAML syntax (with the line), keys, types, "
                                     "values and presets.")
    parser.add_argument("configfiles", nargs="*", type=Path)
    args = parser.parse_args(argv)
    config = check_files(args.configfiles)
    print(f"configuration valid: datasets {', '.join(config['datasets'])}; run {', '.join(config['run'])}")


if __name__ == "__main__":
    from stego_steps.errors import cli

    cli(check_main)
