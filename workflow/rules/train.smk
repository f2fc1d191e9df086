# One run = one variant of a dataset trained with one seed: results/{ds}/runs/{variant}/seed{seed}/.
RUN = "results/{ds}/runs/{variant}/seed{seed}"
# The backbone baselines depend only on the features and the clustering and probe settings: shared by variants.
BASELINE = "results/{ds}/baselines/{bkey}/seed{seed}"
# Variants that train (the rules below) or import a released checkpoint (rule import_checkpoint).
TRAINED_VARIANT = "|".join(re.escape(v) for v in TRAINED) or "(?!)"
IMPORTED_VARIANT = "|".join(re.escape(v) for v in IMPORTED) or "(?!)"


rule calibrate:
    """Label-free loss shifts from the feature-correlation statistics of the training set; among several
    candidates, the one whose short-trained head's clusters the CRF changes least on training images (reads no
    labels)."""
    input:
        features=run_features("train"),
        knn=run_knn,
        index=lambda w: f"{index_of(w)}/train.csv",
    output:
        f"{RUN}/calibration.json",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("calibrate"),
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    log:
        "logs/{ds}/{variant}/seed{seed}/calibrate.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/calibrate.tsv"
    threads: 2
    resources:
        device=DEVICE,
        gpu=GPU,
        mem_mb=in_memory_mb,
        runtime=per_attempt(180),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.calibrate --features {input.features} --knn {input.knn} --index {input.index}"
        " --settings {params.settings:q} --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads}"
        " 2> {log}"


rule train:
    """The segmentation head, trained with the STEGO correlation loss on cached features."""
    input:
        features=run_features("train"),
        knn=run_knn,
        calibration=f"{RUN}/calibration.json",
    output:
        head=f"{RUN}/head.pt",
        log_csv=f"{RUN}/train_log.csv",
        resolved=f"{RUN}/settings.json",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("train"),
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    log:
        "logs/{ds}/{variant}/seed{seed}/train.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/train.tsv"
    threads: 2
    resources:
        device=DEVICE,
        gpu=GPU,
        mem_mb=in_memory_mb,
        runtime=per_attempt(720),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.train --features {input.features} --knn {input.knn}"
        " --settings {params.settings:q} --calibration {input.calibration} --device {resources.device}"
        " --head {output.head} --log-csv {output.log_csv} --resolved {output.resolved} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"


rule cluster:
    """Minibatch spherical K-Means on the head's codes of the training set."""
    input:
        features=run_features("train"),
        head=f"{RUN}/head.pt",
    output:
        f"{RUN}/centroids.npy",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("cluster"),
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    log:
        "logs/{ds}/{variant}/seed{seed}/cluster.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/cluster.tsv"
    threads: 2
    resources:
        device=DEVICE,
        mem_mb=in_memory_mb,
        runtime=per_attempt(240),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.cluster --features {input.features} --head {input.head}"
        " --settings {params.settings:q} --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"


rule linear_probe:
    """Supervised linear probe on the final codes (a diagnostic, uses the training labels)."""
    input:
        features=run_features("train"),
        head=f"{RUN}/head.pt",
    output:
        f"{RUN}/linear.pt",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("probe"),
    wildcard_constraints:
        variant=TRAINED_VARIANT,
    log:
        "logs/{ds}/{variant}/seed{seed}/linear_probe.log",
    benchmark:
        "benchmarks/{ds}/{variant}/seed{seed}/linear_probe.tsv"
    threads: 2
    resources:
        device=DEVICE,
        gpu=GPU,
        mem_mb=in_memory_mb,
        runtime=per_attempt(240),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.probe --features {input.features} --head {input.head}"
        " --settings {params.settings:q} --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"


rule backbone_kmeans:
    """The paper's baseline: the same K-Means directly on the backbone features."""
    input:
        features=baseline_features,
    output:
        f"{BASELINE}/kmeans.npy",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("cluster"),
    log:
        "logs/{ds}/baselines/{bkey}/seed{seed}/backbone_kmeans.log",
    benchmark:
        "benchmarks/{ds}/baselines/{bkey}/seed{seed}/backbone_kmeans.tsv"
    threads: 2
    resources:
        device=DEVICE,
        mem_mb=in_memory_mb,
        runtime=per_attempt(240),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.cluster --features {input.features} --settings {params.settings:q}"
        " --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"


rule backbone_linear:
    """The paper's other baseline: the same linear probe directly on the backbone features (uses labels)."""
    input:
        features=baseline_features,
    output:
        f"{BASELINE}/linear.pt",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("probe"),
    log:
        "logs/{ds}/baselines/{bkey}/seed{seed}/backbone_linear.log",
    benchmark:
        "benchmarks/{ds}/baselines/{bkey}/seed{seed}/backbone_linear.tsv"
    threads: 2
    resources:
        device=DEVICE,
        gpu=GPU,
        mem_mb=in_memory_mb,
        runtime=per_attempt(240),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.probe --features {input.features} --settings {params.settings:q}"
        " --device {resources.device} --out {output} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"


rule import_checkpoint:
    """A released STEGO checkpoint's head, cluster centroids and linear probe, in this workflow's formats; its
    backbone must be the DINO weights file that the variant's features come from."""
    input:
        ckpt=checkpoint_input,
        weights=backbone_weights_input,
    output:
        head=f"{RUN}/head.pt",
        centroids=f"{RUN}/centroids.npy",
        linear=f"{RUN}/linear.pt",
    params:
        args=import_args,
        out_dir=subpath(output.head, parent=True),
    wildcard_constraints:
        variant=IMPORTED_VARIANT,
    log:
        "logs/{ds}/{variant}/seed{seed}/import_checkpoint.log",
    threads: 1
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(30),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.checkpoint --ckpt {input.ckpt} --out-dir {params.out_dir} {params.args} 2> {log}"
