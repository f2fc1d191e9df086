rule prepare:
    """Index the samples of each split (rendering the scenes first for the demo)."""
    output:
        train="results/{ds}/index/train.csv",
        val="results/{ds}/index/val.csv",
        classes="results/{ds}/index/classes.json",
    params:
        kind=lambda w: config["datasets"][w.ds]["kind"],
        settings=prepare_settings,
        out_dir=subpath(output.classes, parent=True),
    log:
        "logs/{ds}/prepare.log",
    benchmark:
        "benchmarks/{ds}/prepare/all.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.prepare --kind {params.kind} --settings {params.settings:q}"
        " --out-dir {params.out_dir} 2> {log}"
