# Pictures of a finished run under <run>/figures/ (also shown in `snakemake --report report.html`).


rule figures:
    """All pictures of the default runs of the datasets under `run:` (target rule)."""
    input:
        [EXP.figure_targets(ds) for ds in config["run"]],


rule figure_panels:
    """Evaluation images beside their ground truth and every probe's segmentation, in class colours."""
    input:
        provenance_check("figure_panels"),
        unpack(IN.panel_inputs),
    output:
        report(
            f"{RUN}/figures/panels.png",
            caption="../report/panels.rst",
            category="{ds}",
            subcategory="segmentations",
            labels={"figure": "validation panels"},
        ),
    log:
        f"{RUN_LOGS}/figure_panels.log",
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("figure_panels")
    resources:
        mem_mb=JOBS.mem_mb("figure_panels"),
        runtime=JOBS.runtime("figure_panels"),
    params:
        provenance=provenance("figure_panels"),
        n_images=config["figures"]["panel_images"],
        extra=IN.panel_args,
    shell:
        "python -m stego_steps.stages.figures panels --features {input.features} --segments {input.segments}"
        " {params.extra} --count {params.n_images} --out {output} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule figure_metrics:
    """Confusion heat maps of every evaluated row and per-class IoU bars."""
    input:
        provenance_check("figure_metrics"),
        confusion=f"{RUN}/confusion",
        per_class=f"{RUN}/per_class_iou.csv",
    output:
        confusion=[
            report(
                f"{RUN}/figures/confusion_{row_key(probe, crf)}.png",
                caption="../report/confusion.rst",
                category="{ds}",
                subcategory="metrics",
                labels={"figure": f"confusion, {probe}{', CRF' if crf else ''}"},
            )
            for probe, crf in ROWS
        ],
        iou=report(
            f"{RUN}/figures/per_class_iou.png",
            caption="../report/per_class_iou.rst",
            category="{ds}",
            subcategory="metrics",
            labels={"figure": "per-class IoU"},
        ),
    log:
        f"{RUN_LOGS}/figure_metrics.log",
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("figure_metrics")
    resources:
        mem_mb=JOBS.mem_mb("figure_metrics"),
        runtime=JOBS.runtime("figure_metrics"),
    params:
        provenance=provenance("figure_metrics"),
        out_dir=subpath(output.iou, parent=True),
    shell:
        "python -m stego_steps.stages.figures metrics --confusion {input.confusion} --per-class {input.per_class}"
        " --out-dir {params.out_dir} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule figure_training:
    """Training curves: the total loss and each term."""
    input:
        provenance_check("figure_training"),
        f"{RUN}/train_log.csv",
    output:
        report(
            f"{RUN}/figures/training.png",
            caption="../report/training.rst",
            category="{ds}",
            subcategory="training",
            labels={"figure": "training curves"},
        ),
    log:
        f"{RUN_LOGS}/figure_training.log",
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("figure_training")
    resources:
        mem_mb=JOBS.mem_mb("figure_training"),
        runtime=JOBS.runtime("figure_training"),
    params:
        provenance=provenance("figure_training"),
    shell:
        "python -m stego_steps.stages.figures training --log-csv {input} --out {output} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule figure_correlations:
    """Histograms of the feature correlations that each loss term compares with its shift."""
    input:
        provenance_check("figure_correlations"),
        features=IN.run_features("train"),
        knn=IN.run_knn,
        resolved=f"{RUN}/settings.json",
        calibration=f"{RUN}/calibration.json",
    output:
        png=report(
            f"{RUN}/figures/correlations.png",
            caption="../report/correlations.rst",
            category="{ds}",
            subcategory="training",
            labels={"figure": "loss correlations"},
        ),
        csv=report(
            f"{RUN}/figures/correlations.csv",
            caption="../report/correlations_table.rst",
            category="{ds}",
            subcategory="training",
            labels={"figure": "loss correlations (table)"},
        ),
        calibration=report(
            f"{RUN}/figures/calibration.csv",
            caption="../report/calibration.rst",
            category="{ds}",
            subcategory="training",
            labels={"figure": "loss shifts: calibration"},
        ),
    log:
        f"{RUN_LOGS}/figure_correlations.log",
    benchmark:
        f"{RUN_BENCHMARKS}/figure_correlations.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("figure_correlations")
    resources:
        mem_mb=JOBS.mem_mb("figure_correlations"),
        runtime=JOBS.runtime("figure_correlations"),
    params:
        provenance=provenance("figure_correlations"),
        batches=config["figures"]["correlation_batches"],
    shell:
        "python -m stego_steps.stages.figures --threads {threads} correlations --features {input.features}"
        " --knn {input.knn} --resolved {input.resolved} --batches {params.batches} --calibration {input.calibration}"
        " --calibration-out {output.calibration} --out {output.png} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
