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


rule plan:
    """Samples per split and bytes per feature store; refuses to start extracting when the disk cannot hold them."""
    input:
        train="results/{ds}/index/train.csv",
        val="results/{ds}/index/val.csv",
        classes="results/{ds}/index/classes.json",
    output:
        "results/{ds}/plan/{bb}.txt",
    params:
        settings=lambda w: json.dumps({s: stage_settings(config, w.ds, "extract", s) for s in ("train", "val")}),
        store_dir=lambda w: f"results/{w.ds}/features/{w.bb}",
        title=lambda w: f"plan: dataset {w.ds}, backbone {w.bb}",
    log:
        "logs/{ds}/plan_{bb}.log",
    benchmark:
        "benchmarks/{ds}/plan/{bb}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.plan --index train={input.train} val={input.val} --settings {params.settings:q}"
        " --store-dir {params.store_dir} --title {params.title:q} --out {output} 2> {log}"
