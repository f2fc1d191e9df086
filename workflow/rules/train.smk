rule calibrate:
    """Label-free loss shifts from the feature-correlation statistics of the training set (reads no labels)."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
        knn="results/{ds}/knn/{bb}/train.npy",
    output:
        "results/{ds}/train/{bb}/calibration.json",
    params:
        settings=settings("calibrate"),
    log:
        "logs/{ds}/calibrate_{bb}.log",
    benchmark:
        "benchmarks/{ds}/calibrate/{bb}.tsv"
    threads: 2
    resources:
        mem_mb=in_memory_mb,
        runtime=60,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.calibrate --features {input.features} --knn {input.knn}"
        " --settings {params.settings:q} --out {output} --threads {threads} 2> {log}"


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
        settings=settings("train"),
        device=config["device"],
    log:
        "logs/{ds}/train_{bb}.log",
    benchmark:
        "benchmarks/{ds}/train/{bb}.tsv"
    threads: 2
    resources:
        gpu=GPU,
        mem_mb=in_memory_mb,
        runtime=720,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.train --features {input.features} --knn {input.knn}"
        " --settings {params.settings:q} --calibration {input.calibration} --device {params.device} --head {output.head}"
        " --log-csv {output.log_csv} --resolved {output.resolved} --threads {threads} 2> {log}"


rule cluster:
    """Minibatch spherical K-Means on the head's codes of the training set."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
        head="results/{ds}/train/{bb}/head.pt",
    output:
        "results/{ds}/cluster/{bb}/centroids.npy",
    params:
        settings=settings("cluster"),
        device=config["device"],
    log:
        "logs/{ds}/cluster_{bb}.log",
    benchmark:
        "benchmarks/{ds}/cluster/{bb}.tsv"
    threads: 2
    resources:
        mem_mb=in_memory_mb,
        runtime=240,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.cluster --features {input.features} --head {input.head}"
        " --settings {params.settings:q} --device {params.device} --out {output} --threads {threads} 2> {log}"


rule backbone_kmeans:
    """The paper's baseline: the same K-Means directly on the backbone features."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
    output:
        "results/{ds}/cluster/{bb}/backbone_centroids.npy",
    params:
        settings=settings("cluster"),
        device=config["device"],
    log:
        "logs/{ds}/backbone_kmeans_{bb}.log",
    benchmark:
        "benchmarks/{ds}/backbone_kmeans/{bb}.tsv"
    threads: 2
    resources:
        mem_mb=in_memory_mb,
        runtime=240,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.cluster --features {input.features} --settings {params.settings:q}"
        " --device {params.device} --out {output} --threads {threads} 2> {log}"


rule linear_probe:
    """Supervised linear probe on the final codes (a diagnostic, uses the training labels)."""
    input:
        features="results/{ds}/features/{bb}/train.h5",
        head="results/{ds}/train/{bb}/head.pt",
    output:
        "results/{ds}/probe/{bb}/linear.pt",
    params:
        settings=settings("probe"),
        device=config["device"],
    log:
        "logs/{ds}/linear_probe_{bb}.log",
    benchmark:
        "benchmarks/{ds}/linear_probe/{bb}.tsv"
    threads: 2
    resources:
        gpu=GPU,
        mem_mb=in_memory_mb,
        runtime=240,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.probe --features {input.features} --head {input.head}"
        " --settings {params.settings:q} --device {params.device} --out {output} --threads {threads} 2> {log}"
