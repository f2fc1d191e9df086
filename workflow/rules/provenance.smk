# Provenance: every rule's `provenance` param is the digest of the code and settings of its own stage and of
# every stage upstream of it (stego_steps/provenance.py says what counts as code). Snakemake re-runs a job
# whose param changed, so an edit of a compute function or a setting re-runs its stage and everything
# downstream, in one invocation, even where an intermediate was lost. Each job ends by recording the digest
# under .provenance/; an existing output whose record differs from the expected digest, or whose size is not
# the one its job wrote, is re-made (forced) with everything after it, which also holds after `rm -rf .snakemake`.
from stego_steps import provenance as stego_provenance

# `code_changes: keep` keeps artifacts whose settings match but whose code differs (they are listed).
KEEP_CODE = config["code_changes"] == "keep"


def _extraction_steps(ds, variant, split):
    """The steps that decide a split's features: the data (or the demo's rendering), its index, the extraction."""
    r = RESOLVED[ds][variant]
    entry = config["datasets"][ds]
    if entry["kind"] == "demo":
        data = ("stages.prepare", {"root": entry["root"], "generator": entry["generator"]})
    else:
        data = (None, manifest_of(ds))
    extract = {k: v for k, v in stage_settings(config, ds, "extract", split, variant).items() if k != "batch_size"}
    return {
        "data": data,
        "prepare": ("stages.prepare", {**dataset_settings(config, ds, variant), **crop_of_index(index_name(r))}),
        f"extract_{split}": ("stages.extract", extract),
    }


def _head_steps(ds, variant, seed):
    """The steps that decide a run's head: trained (features, KNN, calibration, training) or imported."""
    r = RESOLVED[ds][variant]
    steps = _extraction_steps(ds, variant, "train")
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
        "knn": ("stages.knn", {"k": r["knn_k"]}),
        "calibrate": ("stages.calibrate", stage_settings(config, ds, "calibrate", variant=variant, seed=seed)),
        "train": ("stages.train", stage_settings(config, ds, "train", variant=variant, seed=seed)),
    }


def _baseline_steps(ds, variant, seed, probe):
    """The steps that decide a backbone baseline (K-Means or the linear probe on the raw training features)."""
    stage = "cluster" if probe == "backbone_kmeans" else "probe"
    return {
        **_extraction_steps(ds, variant, "train"),
        probe: (f"stages.{stage}", stage_settings(config, ds, stage, variant=variant, seed=seed)),
    }


def _probe_steps(ds, variant, seed, probe):
    """The steps that decide one probe's segmentation of the evaluation images."""
    steps = _extraction_steps(ds, variant, "val")
    if probe in BASELINE_PROBES:
        steps.update(_baseline_steps(ds, variant, seed, probe))
    else:
        steps.update(_head_steps(ds, variant, seed))
        steps["predict"] = ("stages.predict", {})
        stage = "cluster" if probe == "cluster" else "probe"
        steps[stage] = (
            f"stages.{stage}" if not RESOLVED[ds][variant]["checkpoint"] else None,
            stage_settings(config, ds, stage, variant=variant, seed=seed),
        )
    steps[f"segment_{probe}"] = ("stages.segment", {"probe": probe})
    return steps


def _evaluation_steps(ds, variant, seed, probes, stage="evaluate"):
    steps = {}
    for probe in probes:
        steps.update(_probe_steps(ds, variant, seed, probe))
    steps[stage] = ("stages.evaluate", {"labelled": stage == "evaluate"})
    return steps


def run_steps(ds, variant, seed):
    """The steps that decide a run's table."""
    if labelled(ds):
        return _evaluation_steps(ds, variant, int(seed), PROBES)
    return _evaluation_steps(ds, variant, int(seed), UNSUPERVISED_PROBES, "evaluate_unlabelled")


def deciding_steps(name, w):
    """Step name → (stage module, settings) of everything that decides the outputs of rule `name`, wildcards `w`."""
    if name == "render_demo":
        return {"data": _extraction_steps(DEMO_ROOTS[w.demo_root], DEFAULT_VARIANT, "train")["data"]}
    if name in ("table_main", "table_ablation"):
        runs = main_table_runs() if name == "table_main" else ablation_runs(w)
        steps = {}
        for run in runs:
            key = f"{run['dataset']}/{run['variant']}/seed{run['seed']}"
            steps.update(
                {
                    f"{key}/{step}": value
                    for step, value in run_steps(run["dataset"], run["variant"], run["seed"]).items()
                }
            )
        return {**steps, "table": ("stages.tables", {"kind": name})}
    ds = w.ds
    if name == "segment_images":
        # the default run's chain, the folder's files (names, sizes, times) and the stage's code
        folder = config["segment_images"].get(w.name)
        if folder is None:
            return {}  # segment_images_inputs names the mistake
        images = (
            [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()]
            if os.path.isdir(folder)
            else []
        )
        return {
            **run_steps(ds, DEFAULT_VARIANT, seeds(config, ds)[0]),
            "images": (None, images),
            "segment_images": ("stages.segment_images", {"folder": folder}),
        }
    if name == "dataset_table":
        return run_steps(ds, DEFAULT_VARIANT, seeds(config, ds)[0])
    if name in ("extract", "gather_features"):
        return _extraction_steps(ds, variant_of(w), w.split)
    if name == "prepare":
        variant = next(v for v in RESOLVED[ds] if index_name(RESOLVED[ds][v]) == w.idx)
        steps = _extraction_steps(ds, variant, "train")
        return {"data": steps["data"], "prepare": steps["prepare"]}
    if name == "knn":
        return {**_extraction_steps(ds, variant_of(w), "train"), "knn": ("stages.knn", {"k": int(w.k)})}
    if name == "segment":
        kind, name, seed = w.owner.split("/")
        variant = name if kind == "runs" else BASELINES[(ds, name)]
        return _probe_steps(ds, variant, int(seed.removeprefix("seed")), w.probe)
    seed = int(w.seed)
    if name in ("backbone_kmeans", "backbone_linear"):
        return _baseline_steps(ds, variant_of(w), seed, name)
    variant = w.variant
    head = _head_steps(ds, variant, seed)
    if name == "calibrate":
        return {k: v for k, v in head.items() if k != "train"}
    if name in ("train", "import_checkpoint"):
        return head
    if name == "cluster":
        return {
            **head,
            "cluster": ("stages.cluster", stage_settings(config, ds, "cluster", variant=variant, seed=seed)),
        }
    if name == "linear_probe":
        return {**head, "probe": ("stages.probe", stage_settings(config, ds, "probe", variant=variant, seed=seed))}
    if name == "predict":
        return {**head, **_extraction_steps(ds, variant, "val"), "predict": ("stages.predict", {})}
    if name in ("evaluate", "evaluate_unlabelled"):
        return run_steps(ds, variant, seed)
    if name in ("figure_panels", "figure_metrics"):
        return {**run_steps(ds, variant, seed), "figures": ("stages.figures", {})}
    if name in ("figure_training", "figure_correlations"):
        return {**head, "figures": ("stages.figures", {})}
    raise WorkflowError(f"no provenance steps for rule '{name}'")


_EXPECTED = {}


def _expected(rule, wildcards):
    """The provenance a job of `rule` makes now; computed once per job (its input check and its param ask)."""
    key = (rule, tuple(sorted(wildcards.items())))
    if key not in _EXPECTED:
        _EXPECTED[key] = {
            "rule": rule,
            "wildcards": dict(wildcards.items()),
            **stego_provenance.chain(deciding_steps(rule, wildcards)),
        }
    return _EXPECTED[key]


def _outputs(rule, wildcards):
    return [str(path) for path in workflow.get_rule(rule).expand_output(wildcards)[0]]


def provenance(rule):
    """Params function → the provenance of a job of `rule` (JSON): its rule, wildcards, chain digest and steps.

    With `code_changes: keep`, an output whose record differs from it only in code keeps its recorded value,
    so that Snakemake does not re-run it either."""

    def get(wildcards):
        expected = _expected(rule, wildcards)
        if KEEP_CODE:
            for path in _outputs(rule, wildcards):
                recorded = stego_provenance.read_record(path)
                if recorded and stego_provenance.only_code_differs(recorded, expected):
                    expected = {key: recorded[key] for key in expected}
                    break
        return json.dumps(expected, sort_keys=True)

    return get


def provenance_check(rule):
    """Input function (adds no input) → removes the job's outputs that another chain made, before Snakemake
    decides what to run."""

    def check(wildcards):
        _check_outputs(rule, wildcards, _expected(rule, wildcards))
        return []

    return check


_REPORTED = set()


def _check_outputs(rule, wildcards, expected):
    """Have Snakemake re-make this job's outputs whose record says another chain made them, or whose size is not
    the one their job wrote (truncated or replaced).

    Called while the DAG is built, before Snakemake decides which jobs run: such an output is added to the DAG's
    forced files (a dry run lists the job as forced; a real run re-makes it and what follows). Outputs without
    a record (made before records existed, or by hand) are left to Snakemake's own checks."""
    for path in _outputs(rule, wildcards):
        recorded = stego_provenance.read_record(path)
        if recorded is None or not os.path.exists(path) or path in _REPORTED:
            continue
        size = stego_provenance.size(path)
        damaged = recorded.get("bytes") not in (None, size)
        if recorded["digest"] == expected["digest"] and not damaged:
            continue
        _REPORTED.add(path)
        if damaged:
            why = f"is damaged ({size} bytes where its job wrote {recorded['bytes']}: truncated or replaced)"
        else:
            why = f"was made by other code or settings ({stego_provenance.summary(stego_provenance.differences(recorded, expected))})"
            if KEEP_CODE and stego_provenance.only_code_differs(recorded, expected):
                logger.warning(f"{path} {why}: kept (`code_changes: keep`)")
                continue
        logger.warning(f"{path} {why}: re-made")
        workflow.dag.forcefiles.add(path)
