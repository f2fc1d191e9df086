rule predict:
    """Codes of the evaluation images, averaged with those of their mirror images (flip TTA)."""
    input:
        provenance_check("predict"),
        features=IN.run_features("val"),
        head=f"{RUN}/head.pt",
    output:
        f"{RUN}/codes.h5",
    log:
        f"{RUN_LOGS}/predict.log",
    benchmark:
        f"{RUN_BENCHMARKS}/predict.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("predict")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("predict"),
        mem_mb=JOBS.mem_mb("predict"),
        runtime=JOBS.runtime("predict"),
    params:
        provenance=provenance("predict"),
        torch_threads=TORCH_THREADS,
    shell:
        "python -m stego_steps.stages.predict --features {input.features} --head {input.head}"
        " --device {resources.device} --out {output} --threads {threads} --torch-threads {params.torch_threads}"
        " 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule segment:
    """Class maps of one shard of evaluation images for one probe of a run or a baseline, before and after the
    dense CRF."""
    input:
        provenance_check("segment"),
        unpack(IN.segment_inputs),
    output:
        "results/{ds}/{owner}/segment/{probe}.{scatteritem}.h5",
    log:
        "logs/{ds}/{owner}/segment.{probe}.{scatteritem}.log",
    benchmark:
        "benchmarks/{ds}/{owner}/segment.{probe}.{scatteritem}.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("segment")
    resources:
        mem_mb=JOBS.mem_mb("segment"),
        runtime=JOBS.runtime("segment"),
    params:
        provenance=provenance("segment"),
        args=IN.segment_args,
        shard=IN.shard_index,
        n_shards=IN.shard_count,
    shell:
        "python -m stego_steps.stages.segment --features {input.features} --probe {wildcards.probe} {params.args}"
        " --shard {params.shard} --n-shards {params.n_shards} --out {output} --threads {threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule evaluate:
    """Hungarian-matched accuracy / mIoU table, per-class IoU, confusion matrices and cluster → class mappings."""
    input:
        provenance_check("evaluate"),
        unpack(IN.evaluate_inputs),
    output:
        table=report(
            f"{RUN}/miou.csv",
            caption="../report/miou.rst",
            category="{ds}",
            subcategory="{variant}, seed {seed}: metrics",
            labels={"figure": "accuracy and mIoU"},
        ),
        per_class=report(
            f"{RUN}/per_class_iou.csv",
            caption="../report/per_class_table.rst",
            category="{ds}",
            subcategory="{variant}, seed {seed}: metrics",
            labels={"figure": "per-class IoU (table)"},
        ),
        crf_effect=report(
            f"{RUN}/crf_effect.csv",
            caption="../report/crf_effect.rst",
            category="{ds}",
            subcategory="{variant}, seed {seed}: metrics",
            labels={"figure": "per-class IoU change by the CRF"},
        ),
        confusion=directory(f"{RUN}/confusion"),
        mapping=report(
            directory(f"{RUN}/mapping"),
            patterns=["{row}.csv"],
            caption="../report/mapping.rst",
            category="{ds}",
            subcategory="{variant}, seed {seed}: mappings",
            labels={"figure": "cluster → class, {row}"},
        ),
    log:
        f"{RUN_LOGS}/evaluate.log",
    benchmark:
        f"{RUN_BENCHMARKS}/evaluate.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("evaluate")
    resources:
        mem_mb=JOBS.mem_mb("evaluate"),
        runtime=JOBS.runtime("evaluate"),
    params:
        provenance=provenance("evaluate"),
        out_dir=subpath(output.table, parent=True),
    shell:
        "python -m stego_steps.stages.evaluate --features {input.features} --segments {input.segments}"
        " --dataset {wildcards.ds} --out-dir {params.out_dir} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule evaluate_unlabelled:
    """Without labels: the pixel share of every cluster of the cluster probe and the backbone K-Means."""
    input:
        provenance_check("evaluate_unlabelled"),
        unpack(IN.evaluate_unlabelled_inputs),
    output:
        report(
            f"{RUN}/clusters.csv",
            caption="../report/clusters.rst",
            category="{ds}",
            subcategory="{variant}, seed {seed}: metrics",
            labels={"figure": "cluster pixel shares"},
        ),
    log:
        f"{RUN_LOGS}/evaluate_unlabelled.log",
    benchmark:
        f"{RUN_BENCHMARKS}/evaluate_unlabelled.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("evaluate_unlabelled")
    resources:
        mem_mb=JOBS.mem_mb("evaluate_unlabelled"),
        runtime=JOBS.runtime("evaluate_unlabelled"),
    params:
        provenance=provenance("evaluate_unlabelled"),
        out_dir=subpath(output[0], parent=True),
    shell:
        "python -m stego_steps.stages.evaluate --no-labels --features {input.features} --segments {input.segments}"
        " --dataset {wildcards.ds} --out-dir {params.out_dir} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule dataset_table:
    """results/{ds}/miou.csv (or clusters.csv without labels): the table of the dataset's default run (the
    default variant, first seed), where the README's first command ends."""
    input:
        provenance_check("dataset_table"),
        lambda w: f"{EXP.default_run(w.ds)}/{w.table}.csv",
    output:
        "results/{ds}/{table}.csv",
    log:
        "logs/{ds}/dataset_table.{table}.log",
    wildcard_constraints:
        table="miou|clusters",
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("dataset_table")
    resources:
        mem_mb=JOBS.mem_mb("dataset_table"),
        runtime=JOBS.runtime("dataset_table"),
    params:
        provenance=provenance("dataset_table"),
    shell:
        "cp {input} {output} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
