# One run = one variant of a dataset trained with one seed: results/{ds}/runs/{variant}/seed{seed}/.
# RUN and BASELINE: the templates of stego_steps.layout (results/{ds}/runs/{variant}/seed{seed},
# results/{ds}/baselines/{bkey}/seed{seed}: the baselines are shared by variants with the same features and
# settings). TRAINED_VARIANT, IMPORTED_VARIANT (common.smk): the variants that train, or import a checkpoint.


rule calibrate:
    """Label-free loss shifts from the feature-correlation statistics of the training set; among several
    candidates, the one whose short-trained head's clusters the CRF changes least on training images (reads no
    labels)."""
    input:
        provenance_check("calibrate"),
        features=IN.run_features("train"),
        knn=IN.run_knn,
        index=lambda w: f"{IN.index_of(w)}/train.csv",
    output:
        f"{RUN}/calibration.json",
    log:
        f"{RUN_LOGS}/calibrate.log",
    benchmark:
        f"{RUN_BENCHMARKS}/calibrate.tsv"
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("calibrate")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("calibrate"),
        mem_mb=JOBS.mem_mb("calibrate"),
        runtime=JOBS.runtime("calibrate"),
    params:
        provenance=provenance("calibrate"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("calibrate"),
    shell:
        "python -m stego_steps.stages.calibrate --features {input.features} --knn {input.knn} --index {input.index}"
        " --settings {params.settings:q} --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads}"
        " 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule train:
    """The segmentation head, trained with the STEGO correlation loss on cached features."""
    input:
        provenance_check("train"),
        features=IN.run_features("train"),
        knn=IN.run_knn,
        calibration=f"{RUN}/calibration.json",
    output:
        head=f"{RUN}/head.pt",
        log_csv=f"{RUN}/train_log.csv",
        resolved=f"{RUN}/settings.json",
    log:
        f"{RUN_LOGS}/train.log",
    benchmark:
        f"{RUN_BENCHMARKS}/train.tsv"
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("train")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("train"),
        mem_mb=JOBS.mem_mb("train"),
        runtime=JOBS.runtime("train"),
        checkpoint_every=IN.bookkeeping_of("train", "checkpoint_every"),
    params:
        provenance=provenance("train"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("train"),
    shell:
        "python -m stego_steps.stages.train --features {input.features} --knn {input.knn}"
        " --settings {params.settings:q} --calibration {input.calibration} --device {resources.device}"
        " --head {output.head} --log-csv {output.log_csv} --resolved {output.resolved} --threads {threads}"
        " --torch-threads {params.torch_threads} --checkpoint-every {resources.checkpoint_every} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule cluster:
    """Minibatch spherical K-Means on the head's codes of the training set."""
    input:
        provenance_check("cluster"),
        features=IN.run_features("train"),
        head=f"{RUN}/head.pt",
    output:
        f"{RUN}/centroids.npy",
    log:
        f"{RUN_LOGS}/cluster.log",
    benchmark:
        f"{RUN_BENCHMARKS}/cluster.tsv"
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("cluster")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("cluster"),
        mem_mb=JOBS.mem_mb("cluster"),
        runtime=JOBS.runtime("cluster"),
    params:
        provenance=provenance("cluster"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("cluster"),
    shell:
        "python -m stego_steps.stages.cluster --features {input.features} --head {input.head}"
        " --settings {params.settings:q} --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule linear_probe:
    """Supervised linear probe on the final codes (a diagnostic, uses the training labels)."""
    input:
        provenance_check("linear_probe"),
        features=IN.run_features("train"),
        head=f"{RUN}/head.pt",
    output:
        f"{RUN}/linear.pt",
    log:
        f"{RUN_LOGS}/linear_probe.log",
    benchmark:
        f"{RUN_BENCHMARKS}/linear_probe.tsv"
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("linear_probe")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("linear_probe"),
        mem_mb=JOBS.mem_mb("linear_probe"),
        runtime=JOBS.runtime("linear_probe"),
    params:
        provenance=provenance("linear_probe"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("probe"),
    shell:
        "python -m stego_steps.stages.probe --features {input.features} --head {input.head}"
        " --settings {params.settings:q} --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule backbone_kmeans:
    """The paper's baseline: the same K-Means directly on the backbone features."""
    input:
        provenance_check("backbone_kmeans"),
        features=IN.baseline_features,
    output:
        f"{BASELINE}/kmeans.npy",
    log:
        f"{BASELINE_LOGS}/backbone_kmeans.log",
    benchmark:
        f"{BASELINE_BENCHMARKS}/backbone_kmeans.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("backbone_kmeans")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("backbone_kmeans"),
        mem_mb=JOBS.mem_mb("backbone_kmeans"),
        runtime=JOBS.runtime("backbone_kmeans"),
    params:
        provenance=provenance("backbone_kmeans"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("cluster"),
    shell:
        "python -m stego_steps.stages.cluster --features {input.features} --settings {params.settings:q}"
        " --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule backbone_linear:
    """The paper's other baseline: the same linear probe directly on the backbone features (uses labels)."""
    input:
        provenance_check("backbone_linear"),
        features=IN.baseline_features,
    output:
        f"{BASELINE}/linear.pt",
    log:
        f"{BASELINE_LOGS}/backbone_linear.log",
    benchmark:
        f"{BASELINE_BENCHMARKS}/backbone_linear.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("backbone_linear")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("backbone_linear"),
        mem_mb=JOBS.mem_mb("backbone_linear"),
        runtime=JOBS.runtime("backbone_linear"),
    params:
        provenance=provenance("backbone_linear"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("probe"),
    shell:
        "python -m stego_steps.stages.probe --features {input.features} --settings {params.settings:q}"
        " --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule import_checkpoint:
    """A released STEGO checkpoint's head, cluster centroids and linear probe, in this workflow's formats; its
    backbone must be the DINO weights file that the variant's features come from."""
    input:
        provenance_check("import_checkpoint"),
        ckpt=IN.checkpoint_input,
        weights=IN.backbone_weights_input,
    output:
        head=f"{RUN}/head.pt",
        centroids=f"{RUN}/centroids.npy",
        linear=f"{RUN}/linear.pt",
    log:
        f"{RUN_LOGS}/import_checkpoint.log",
    wildcard_constraints:
        variant=IMPORTED_VARIANT,
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("import_checkpoint")
    resources:
        mem_mb=JOBS.mem_mb("import_checkpoint"),
        runtime=JOBS.runtime("import_checkpoint"),
    params:
        provenance=provenance("import_checkpoint"),
        args=IN.import_args,
        out_dir=subpath(output.head, parent=True),
    shell:
        "python -m stego_steps.stages.import_checkpoint --ckpt {input.ckpt} --out-dir {params.out_dir} {params.args} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
