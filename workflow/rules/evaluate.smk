rule predict:
    """Codes of the evaluation images, averaged with those of their mirror images (flip TTA)."""
    input:
        features=run_features("val"),
        head=f"{RUN}/head.pt",
    output:
        f"{RUN}/codes.h5",
    params:
        torch_threads=TORCH_THREADS,
    log:
        "logs/{ds}/{variant}/seed{seed}/predict.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/predict.tsv"
    threads: 2
    resources:
        device=DEVICE,
        gpu=GPU,
        mem_mb=per_attempt(8000),
        runtime=per_attempt(120),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.predict --features {input.features} --head {input.head}"
        " --device {resources.device} --out {output} --threads {threads} --torch-threads {params.torch_threads}"
        " 2> {log}"


rule segment:
    """Class maps of one shard of evaluation images for one probe of a run or a baseline, before and after the
    dense CRF."""
    input:
        unpack(segment_inputs),
    output:
        "results/{ds}/{owner}/segment/{probe}.{scatteritem}.h5",
    params:
        args=segment_args,
        shard=shard_index,
        n_shards=shard_count,
    log:
        "logs/{ds}/{owner}/segment_{probe}.{scatteritem}.log",
    benchmark:
        "benchmarks/{ds}/{owner}/segment_{probe}.{scatteritem}.tsv"
    threads: 2
    resources:
        mem_mb=per_attempt(4000),
        runtime=segment_runtime,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.segment --features {input.features} --probe {wildcards.probe} {params.args}"
        " --shard {params.shard} --n-shards {params.n_shards} --out {output} --threads {threads} 2> {log}"


rule evaluate:
    """Hungarian-matched accuracy / mIoU table, per-class IoU, confusion matrices and cluster → class mappings."""
    input:
        unpack(evaluate_inputs),
    output:
        table=report(f"{RUN}/miou.csv", caption="../report/miou.rst", category="{ds}",
                     subcategory="{variant}, seed {seed}: metrics", labels={"figure": "accuracy and mIoU"}),
        per_class=report(f"{RUN}/per_class_iou.csv", caption="../report/per_class_table.rst",
                         category="{ds}", subcategory="{variant}, seed {seed}: metrics",
                         labels={"figure": "per-class IoU (table)"}),
        crf_effect=report(f"{RUN}/crf_effect.csv", caption="../report/crf_effect.rst", category="{ds}",
                          subcategory="{variant}, seed {seed}: metrics",
                          labels={"figure": "per-class IoU change by the CRF"}),
        confusion=directory(f"{RUN}/confusion"),
        mapping=report(directory(f"{RUN}/mapping"), patterns=["{row}.csv"],
                       caption="../report/mapping.rst", category="{ds}",
                       subcategory="{variant}, seed {seed}: mappings", labels={"figure": "cluster → class, {row}"}),
    params:
        out_dir=subpath(output.table, parent=True),
    log:
        "logs/{ds}/{variant}/seed{seed}/evaluate.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/evaluate.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(60),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.evaluate --features {input.features} --segments {input.segments}"
        " --dataset {wildcards.ds} --out-dir {params.out_dir} 2> {log}"


rule evaluate_unlabelled:
    """Without labels: the pixel share of every cluster of the cluster probe and the backbone K-Means."""
    input:
        unpack(evaluate_unlabelled_inputs),
    output:
        report(f"{RUN}/clusters.csv", caption="../report/clusters.rst", category="{ds}",
               subcategory="{variant}, seed {seed}: metrics", labels={"figure": "cluster pixel shares"}),
    params:
        out_dir=subpath(output[0], parent=True),
    log:
        "logs/{ds}/{variant}/seed{seed}/evaluate_unlabelled.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/evaluate_unlabelled.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.evaluate --no-labels --features {input.features} --segments {input.segments}"
        " --dataset {wildcards.ds} --out-dir {params.out_dir} 2> {log}"


rule dataset_table:
    """results/{ds}/miou.csv (or clusters.csv without labels): the table of the dataset's default run (the
    default variant, first seed), where the README's first command ends."""
    input:
        lambda w: f"{default_run(w.ds)}/{w.table}.csv",
    output:
        "results/{ds}/{table}.csv",
    wildcard_constraints:
        table="miou|clusters",
    log:
        "logs/{ds}/dataset_table_{table}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=100,
        runtime=5,
    conda:
        "../envs/stego.yaml"
    shell:
        "cp {input} {output} 2> {log}"
