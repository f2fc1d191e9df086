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
        # Names, sizes and times of the dataset's files: a change re-runs prepare (and what depends on it).
        manifest=dataset_manifest,
    log:
        "logs/{ds}/prepare.log",
    benchmark:
        "benchmarks/{ds}/prepare/all.tsv"
    threads: 4  # reading every image and label once to check them
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.prepare --kind {params.kind} --settings {params.settings:q}"
        " --out-dir {params.out_dir} --threads {threads} 2> {log}"


rule plan:
    """Samples and bytes of a split's feature store; refuses to start extracting when the disk cannot hold it."""
    input:
        index="results/{ds}/index/{split}.csv",
    output:
        "results/{ds}/plan/{bb}/{split}.txt",
    params:
        # The very settings of the split's extraction: a plan re-runs exactly when its extraction must.
        settings=lambda w: json.dumps({w.split: stage_settings(config, w.ds, "extract", w.split)}),
        store_dir=lambda w: f"results/{w.ds}/features/{w.bb}",
        title=lambda w: f"plan: dataset {w.ds}, backbone {w.bb}, split {w.split}",
    log:
        "logs/{ds}/plan_{bb}_{split}.log",
    benchmark:
        "benchmarks/{ds}/plan/{bb}_{split}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.plan --index {wildcards.split}={input.index} --settings {params.settings:q}"
        " --store-dir {params.store_dir} --title {params.title:q} --out {output} 2> {log}"
