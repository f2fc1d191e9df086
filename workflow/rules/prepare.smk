rule prepare:
    """Index the samples of each split (rendering the scenes first for the demo)."""
    input:
        unpack(data_files),
    output:
        train="results/{ds}/index/train.csv",
        val="results/{ds}/index/val.csv",
        classes="results/{ds}/index/classes.json",
    params:
        kind=lookup(dpath="datasets/{ds}/kind", within=config),
        settings=prepare_settings,
        out_dir=subpath(output.classes, parent=True),
    log:
        "logs/{ds}/prepare.log",
    benchmark:
        "benchmarks/{ds}/prepare/all.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(60),
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
        settings=plan_settings,
        store_dir="results/{ds}/features/{bb}",
        title="plan: dataset {ds}, backbone {bb}",
    log:
        "logs/{ds}/plan_{bb}.log",
    benchmark:
        "benchmarks/{ds}/plan/{bb}.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.plan --index train={input.train} val={input.val} --settings {params.settings:q}"
        " --store-dir {params.store_dir} --title {params.title:q} --out {output} 2> {log}"
