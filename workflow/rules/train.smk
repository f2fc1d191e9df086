rule calibrate:
    """Label-free loss shifts from the feature-correlation statistics of the training set (reads no labels)."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
        knn="results/{ds}/knn/{bb}/train.npy",
    output:
        "results/{ds}/train/{bb}/calibration.json",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("calibrate"),
    log:
        "logs/{ds}/calibrate_{bb}.log",
    benchmark:
        "benchmarks/{ds}/calibrate/{bb}.tsv"
    threads: 2
    resources:
        mem_mb=in_memory_mb,
        runtime=per_attempt(60),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.calibrate --features {input.features} --knn {input.knn}"
        " --settings {params.settings:q} --out {output} --threads {threads} --torch-threads {params.torch_threads}"
        " 2> {log}"


rule train:
    """The segmentation head, trained with the STEGO correlation loss on cached features."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
        knn="results/{ds}/knn/{bb}/train.npy",
        calibration="results/{ds}/train/{bb}/calibration.json",
    output:
        head="results/{ds}/train/{bb}/head.pt",
        log_csv="results/{ds}/train/{bb}/train_log.csv",
        resolved="results/{ds}/train/{bb}/settings.json",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("train"),
    log:
        "logs/{ds}/train_{bb}.log",
    benchmark:
        "benchmarks/{ds}/train/{bb}.tsv"
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
        features="results/{ds}/features/{bb}/train.h5",
        head="results/{ds}/train/{bb}/head.pt",
    output:
        "results/{ds}/cluster/{bb}/centroids.npy",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("cluster"),
    log:
        "logs/{ds}/cluster_{bb}.log",
    benchmark:
        "benchmarks/{ds}/cluster/{bb}.tsv"
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


rule backbone_kmeans:
    """The paper's baseline: the same K-Means directly on the backbone features."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
    output:
        "results/{ds}/cluster/{bb}/backbone_centroids.npy",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("cluster"),
    log:
        "logs/{ds}/backbone_kmeans_{bb}.log",
    benchmark:
        "benchmarks/{ds}/backbone_kmeans/{bb}.tsv"
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


rule linear_probe:
    """Supervised linear probe on the final codes (a diagnostic, uses the training labels)."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
        head="results/{ds}/train/{bb}/head.pt",
    output:
        "results/{ds}/probe/{bb}/linear.pt",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("probe"),
    log:
        "logs/{ds}/linear_probe_{bb}.log",
    benchmark:
        "benchmarks/{ds}/linear_probe/{bb}.tsv"
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
