# The workflow lives in workflow/Snakefile (the layout Snakemake's published workflows share); this file lets
# `snakemake -s <checkout>/Snakefile` keep working.
include: "workflow/Snakefile"


# An included file's default target is dropped when the include returns; keep the workflow's.
workflow.default_target = "all"
