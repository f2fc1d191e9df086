# The experiment tables: `snakemake --cores N tables` (or one of results/tables/main.md, ablation_<ds>.md)
# builds every run they need; runs shared with other tables or variants are built once.


rule tables:
    """Every table named under `tables:` in the config (target rule)."""
    input:
        table_targets(),


rule table_main:
    """Per dataset and variant (backbone): the cluster and linear rows with and without the CRF and the
    backbone baselines, mean ± std over the seeds, beside the paper's numbers."""
    input:
        provenance_check("table_main"),
        lambda w: [run["path"] for run in main_table_runs()],
    output:
        csv="results/tables/main.csv",
        md=report(
            "results/tables/main.md",
            caption="../report/table_main.rst",
            category="tables",
            labels={"figure": "main table"},
        ),
    log:
        "logs/tables/main.log",
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: job_threads("table_main")
    resources:
        mem_mb=job_mem_mb("table_main"),
        runtime=job_runtime("table_main"),
    params:
        provenance=provenance("table_main"),
        runs=lambda w: json.dumps(main_table_runs()),
    shell:
        "python -m stego_steps.stages.tables main --runs {params.runs:q} --out-csv {output.csv} --out-md {output.md}"
        " 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule table_ablation:
    """One row per ablation of the dataset's preset (each switches one component), ✓/✗ per component."""
    input:
        provenance_check("table_ablation"),
        lambda w: [run["path"] for run in ablation_runs(w)],
    output:
        csv="results/tables/ablation_{ds}.csv",
        md=report(
            "results/tables/ablation_{ds}.md",
            caption="../report/table_ablation.rst",
            category="tables",
            labels={"figure": "ablation, {ds}"},
        ),
    log:
        "logs/tables/ablation_{ds}.log",
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: job_threads("table_ablation")
    resources:
        mem_mb=job_mem_mb("table_ablation"),
        runtime=job_runtime("table_ablation"),
    params:
        provenance=provenance("table_ablation"),
        runs=lambda w: json.dumps(ablation_runs(w)),
    shell:
        "python -m stego_steps.stages.tables ablation --runs {params.runs:q} --out-csv {output.csv}"
        " --out-md {output.md} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
