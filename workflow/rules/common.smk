# Start-up: validate the configuration and resolve every dataset's preset, so that a bad configuration fails
# before any job runs (backbone weights are checked while the DAG is built). The logic lives in the library
# (stego_steps.experiment, .rule_inputs, .job_sizes, .steps); this file names it for the rules.
import json
import os
import re
import shutil
import sys

from snakemake.utils import validate

from stego_steps import config as stego_config
from stego_steps import download as stego_download
from stego_steps import resources as stego_resources
from stego_steps import runlock
from stego_steps import targets as stego_targets
from stego_steps.config import ConfigError
from stego_steps.errors import UserError
from stego_steps.experiment import Experiment
from stego_steps.job_sizes import JobResources
from stego_steps.layout import BASELINE, BASELINE_BENCHMARKS, BASELINE_LOGS, FEATURE_BENCHMARKS, FEATURE_LOGS, RUN
from stego_steps.layout import RUN_BENCHMARKS, RUN_LOGS
from stego_steps.protocol import PROBES, ROWS, row_key
from stego_steps.rule_inputs import RuleInputs
from stego_steps.store import MAX_MEMORY_GB

# A short message naming the bad key first; then Snakemake's own validation fills in the defaults.
config.update(stego_config.coerce(config, stego_config.load_schema()))
try:
    stego_config.validate(config)
except ConfigError as err:
    raise WorkflowError(str(err))
validate(config, schema=str(stego_config.SCHEMA))

# EXP.resolved[ds][variant]: the hyper-parameters of every variant, resolved once; the keys of the feature stores
# and baselines they share; the checks of backbones, resolutions and knn_k against the training split.
try:
    EXP = Experiment(config)
    EXP.check_datasets()
    # The table of known downloads (stego_steps/data/resources.yaml, the config's `downloads:` merged over it).
    RESOURCES = stego_download.load_table(config.get("downloads"))
except (UserError, ValueError) as err:
    raise WorkflowError(str(err) if isinstance(err, UserError) else f"config/config.yaml: {err}")

# OpenMP threads that wait for work sleep instead of spinning: when jobs share cores (2 jobs of 2 threads on a
# 2-core machine), spinning threads starve the others (training measured 2× slower under load). The thread
# counts, and so the results, are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


envvars:
    "PATH",
    "OMP_WAIT_POLICY",


# Jobs call `python -m stego_steps.stages.<stage>`: the interpreter that runs Snakemake (the project's environment)
# comes first on PATH, unless --sdm conda puts the rule's environment in front of it.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# The device of every rule that runs its model on it (stego_steps.resources.DEVICE_RULES) reaches the job as the
# resource `device` (`--device {resources.device}`), never as a param: switching between CPU and GPU changes
# where a job runs, not what it computes. Per rule: `--set-resources train:device=cpu`. Those rules ask for
# `gpu: 1` on a GPU (`cuda`, or `auto` with nvidia-smi where Snakemake starts; the SLURM profile requests it).
DEVICE = config["device"]
# torch's compute threads in every model job: fixed, so that a table does not depend on --cores.
TORCH_THREADS = config["torch_threads"]
# What each job asks for (stego_steps.resources' table): `threads: JOBS.threads("rule")`, JOBS.gpu, .mem_mb, .runtime.
JOBS = JobResources(
    TORCH_THREADS, stego_resources.uses_gpu(DEVICE, bool(shutil.which("nvidia-smi"))), MAX_MEMORY_GB * 1024
)


# Extraction (per split) and the CRF (per probe) run in shards, one job each: `extract_shards` and
# `segment_shards` in the config, or per run `--set-scatter extract=8 segment=16`.
scattergather:
    extract=config["extract_shards"],
    segment=config["segment_shards"],


def _alternatives(names):
    return "|".join(sorted(re.escape(name) for name in names)) or "(?!)"


wildcard_constraints:
    # Only the configured datasets: any other name has no rule (and the start-up check lists the valid targets).
    ds=_alternatives(config["datasets"]),
    split=r"train|val",
    probe="|".join(PROBES),
    scatteritem=r"\d+-of-\d+",
    seed=r"\d+",
    k=r"\d+",
    idx=r"index(_five_crop_[0-9.]+)?",
    variant=_alternatives(EXP.variant_names()),
    fkey=_alternatives({key for _, key in EXP.features}),
    bkey=_alternatives({key for _, key in EXP.baselines}),
    # who a segmentation belongs to: a run (variant and seed) or a baseline (features, settings and seed)
    owner=r"(runs|baselines)/[A-Za-z0-9_.\-]+/seed\d+",


# Variants that train (the training rules) or import a released checkpoint's head and probes (import_checkpoint).
TRAINED_VARIANT, IMPORTED_VARIANT = _alternatives(EXP.trained()), _alternatives(EXP.imported())

# The rules' input functions and params (stego_steps.rule_inputs): `IN.run_features("train")`, `IN.settings(...)`.
IN = RuleInputs(EXP, RESOURCES, gather_segment=gather.segment, dryrun=lambda: workflow.dryrun, warn=logger.warning)


# Start-up checks of the command line (the Snakemake CLI that reads this file; not inside a job): targets that
# name an unconfigured dataset, variant, seed or key are listed with the valid ones, and `--unlock` is refused
# while another workflow runs on this folder. Only in the Snakemake CLI process (not API use, not a job).
CLI = (
    stego_targets.snakemake_cli_args(sys.argv[1:])
    if workflow.is_main_process and "snakemake" in " ".join(sys.argv[:2])
    else None
)
try:
    if CLI is not None and CLI.unlock:
        runlock.check_unlock()
    elif CLI is not None and CLI.targets:
        _problem = stego_targets.check_targets(CLI.targets, EXP.target_datasets(), EXP.table_targets())
        if _problem:
            raise WorkflowError(_problem)
except UserError as err:
    raise WorkflowError(str(err))
