# The experiment tables: `snakemake --cores N tables` (or one of results/tables/main.md, ablation_<ds>.md)
# builds every run they need; runs shared with other tables or variants are built once.


rule tables:
    """Every table named under `tables:` in the config (target rule)."""
    input:
        EXP.table_targets(),


rule table_main:
    """Per dataset and variant (backbone): the cluster and linear rows with and without the CRF and the
    backbone baselines, mean ± std over the seeds, beside the paper's numbers."""
    input:
        provenance_check("table_main"),
        lambda w: [run["path"] for run in EXP.main_table_runs()],
    output:
        csv="results/tables/main.csv",
        md=report(
            "results/tables/main.md",
            caption="../report/table_main.rst",
            category="tables",
            labels={"figure": "main table"},
        ),
    log:
        "logs/tables/table_main.log",
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("table_main")
    resources:
        mem_mb=JOBS.mem_mb("table_main"),
        runtime=JOBS.runtime("table_main"),
    params:
        provenance=provenance("table_main"),
        runs=lambda w: json.dumps(EXP.main_table_runs()),
    shell:
        "python -m stego_steps.stages.tables main --runs {params.runs:q} --out-csv {output.csv} --out-md {output.md}"
        " 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule table_ablation:
    """One row per ablation of the dataset's preset (each switches one component), ✓/✗ per component."""
    input:
        provenance_check("table_ablation"),
        lambda w: [run["path"] for run in EXP.ablation_runs(w.ds)],
    output:
        csv="results/tables/ablation_{ds}.csv",
        md=report(
            "results/tables/ablation_{ds}.md",
            caption="../report/table_ablation.rst",
            category="tables",
            labels={"figure": "ablation, {ds}"},
        ),
    log:
        "logs/tables/table_ablation.{ds}.log",
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("table_ablation")
    resources:
        mem_mb=JOBS.mem_mb("table_ablation"),
        runtime=JOBS.runtime("table_ablation"),
    params:
        provenance=provenance("table_ablation"),
        runs=lambda w: json.dumps(EXP.ablation_runs(w.ds)),
    shell:
        "python -m stego_steps.stages.tables ablation --runs {params.runs:q} --out-csv {output.csv}"
        " --out-md {output.md} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
