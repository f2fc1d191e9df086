rule predict:
    """Codes of the evaluation images, averaged with those of their mirror images (flip TTA)."""
    input:
        features="results/{ds}/features/{bb}/val.h5",
        head="results/{ds}/train/{bb}/head.pt",
    output:
        "results/{ds}/predict/{bb}/codes.h5",
    params:
        torch_threads=TORCH_THREADS,
    log:
        "logs/{ds}/predict_{bb}.log",
    benchmark:
        "benchmarks/{ds}/predict/{bb}.tsv"
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
    """Class maps of one shard of evaluation images for one probe, before and after the dense CRF."""
    input:
        unpack(segment_inputs),
        features="results/{ds}/features/{bb}/val.h5",
    output:
        "results/{ds}/segment/{bb}/{probe}.{scatteritem}.h5",
    params:
        args=segment_args,
        shard=shard_index,
        n_shards=shard_count,
    log:
        "logs/{ds}/segment_{bb}_{probe}.{scatteritem}.log",
    benchmark:
        "benchmarks/{ds}/segment/{bb}_{probe}.{scatteritem}.tsv"
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
        table=report("results/{ds}/miou.csv", caption="../report/miou.rst", category="{ds}",
                     subcategory="metrics", labels={"figure": "accuracy and mIoU"}),
        per_class=report("results/{ds}/per_class_iou.csv", caption="../report/per_class_table.rst",
                         category="{ds}", subcategory="metrics", labels={"figure": "per-class IoU (table)"}),
        crf_effect=report("results/{ds}/crf_effect.csv", caption="../report/crf_effect.rst", category="{ds}",
                          subcategory="metrics", labels={"figure": "per-class IoU change by the CRF"}),
        confusion=directory("results/{ds}/confusion"),
        mapping=report(directory("results/{ds}/mapping"), patterns=["{row}.csv"],
                       caption="../report/mapping.rst", category="{ds}", subcategory="mappings",
                       labels={"figure": "cluster → class, {row}"}),
    params:
        out_dir=subpath(output.table, parent=True),
    log:
        "logs/{ds}/evaluate.log",
    benchmark:
        "benchmarks/{ds}/evaluate/all.tsv"
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
        report("results/{ds}/clusters.csv", caption="../report/clusters.rst", category="{ds}",
               subcategory="metrics", labels={"figure": "cluster pixel shares"}),
    params:
        out_dir=subpath(output[0], parent=True),
    log:
        "logs/{ds}/evaluate_unlabelled.log",
    benchmark:
        "benchmarks/{ds}/evaluate/unlabelled.tsv"
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.evaluate --no-labels --features {input.features} --segments {input.segments}"
        " --dataset {wildcards.ds} --out-dir {params.out_dir} 2> {log}"
