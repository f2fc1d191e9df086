# STEGO: unsupervised semantic segmentation by distilling feature correspondences, as a staged workflow.
#
#   prepare → extract (frozen backbone → HDF5) → knn → train (head) → cluster / probe → predict
#           → segment (+ dense CRF) → evaluate → results/{dataset}/miou.csv
#
# `snakemake --cores 2` runs the offline demo; `snakemake --cores 8 results/cocostuff/miou.csv` a paper preset;
# `snakemake --cores 2 tables` the experiment tables (variants × seeds) under results/tables/.
import os

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

import stego_steps

min_version("9.0")

# Under `--sdm conda` the jobs' environment (workflow/envs/stego.yaml) holds the dependencies only; a start-up
# file there puts this folder, the one holding the package that this process imports, on the jobs' import path,
# so that they run this code. An installed copy cannot be added so: the rest of its site-packages would follow.
STEGO_STEPS_SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(stego_steps.__file__)))
os.environ.update(STEGO_STEPS_SOURCE=STEGO_STEPS_SOURCE)
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method and not os.path.isfile(
    os.path.join(STEGO_STEPS_SOURCE, "pyproject.toml")
):
    raise WorkflowError(
        f"--sdm conda: stego_steps is imported from {STEGO_STEPS_SOURCE}, an installed copy, not a source "
        "checkout; the jobs' conda environment reads the package from its checkout. Install the project "
        "editable (`pip install -e <checkout>`) in the environment that runs Snakemake, or run without --sdm conda."
    )


# Found next to this file, so `snakemake -s <repo>/Snakefile -d <elsewhere>` works too.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# `snakemake --report report.html`: this description, the tables and the pictures, grouped per dataset.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/provenance.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/segment_images.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/downloads.smk"


# A failed job's own message (its `ERROR:` lines, or the last line of its log) is shown here, not only in its log.
onerror:
    report_failed_jobs(log)


# Before the first job of a real run: this folder's run lock and the checks that need the DAG (the disk for
# every feature store of the request, a GPU for `device: cuda`, the cores for torch_threads).
onstart:
    start_run(log)


rule all:
    default_target: True
    input:
        # miou.csv, or clusters.csv for a dataset without labels
        [final_target(ds) for ds in config["run"]],
        # the pictures under results/{ds}/figures/
        rules.figures.input,
