# STEGO: unsupervised semantic segmentation by distilling feature correspondences, as a staged workflow.
#
#   prepare → extract (frozen backbone → HDF5) → knn → train (head) → cluster / probe → predict
#           → segment (+ dense CRF) → evaluate → results/{dataset}/miou.csv
#
# `snakemake --cores 2` runs the offline demo; `snakemake --cores 8 results/cocostuff/miou.csv` a paper preset;
# `snakemake --cores 2 tables` the experiment tables (variants × seeds) under results/tables/.
import os

from snakemake.utils import min_version

min_version("9.0")


# Found next to this file, so `snakemake -s <repo>/Snakefile -d <elsewhere>` works too.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# `snakemake --report report.html`: this description, the tables and the pictures, grouped per dataset.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
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


rule all:
    default_target: True
    input:
        # miou.csv, or clusters.csv for a dataset without labels
        [final_target(ds) for ds in config["run"]],
        # the pictures under results/{ds}/figures/
        rules.figures.input,
