rule extract:
    """Frozen backbone features of one shard of a split → HDF5 (float16 patch features, pooled descriptors)."""
    input:
        index="results/{ds}/index/{split}.csv",
        classes="results/{ds}/index/classes.json",
        # The split's disk check runs first.
        plan="results/{ds}/plan/{bb}/{split}.txt",
        weights=backbone_weights_input,
    output:
        "results/{ds}/features/{bb}/{split}/{scatteritem}.h5",
    params:
        torch_threads=TORCH_THREADS,
        settings=settings("extract"),
        shard=shard_index,
        n_shards=shard_count,
    log:
        "logs/{ds}/extract_{bb}_{split}.{scatteritem}.log",
    benchmark:
        "benchmarks/{ds}/extract/{bb}_{split}.{scatteritem}.tsv"
    threads: 2
    resources:
        device=DEVICE,
        gpu=GPU,
        mem_mb=per_attempt(8000),
        runtime=extract_runtime,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.extract --index {input.index} --classes {input.classes} --split {wildcards.split}"
        " --shard {params.shard} --n-shards {params.n_shards} --settings {params.settings:q}"
        " --device {resources.device} --out {output} --threads {threads} --torch-threads {params.torch_threads}"
        " 2> {log}"


rule gather_features:
    """One feature store per split: HDF5 virtual datasets over the shards (nothing is copied)."""
    input:
        gather.extract("results/{{ds}}/features/{{bb}}/{{split}}/{scatteritem}.h5"),
    output:
        "results/{ds}/features/{bb}/{split}.h5",
    log:
        "logs/{ds}/gather_features_{bb}_{split}.log",
    benchmark:
        "benchmarks/{ds}/gather_features/{bb}_{split}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.extract gather --out {output} {input} 2> {log}"


rule knn:
    """Cosine top-k neighbours of the pooled training descriptors (FAISS), self first."""
    input:
        "results/{ds}/features/{bb}/train.h5",
    output:
        "results/{ds}/knn/{bb}/train.npy",
    params:
        torch_threads=TORCH_THREADS,
        k=lookup(dpath="{ds}/knn_k", within=PRESETS),
    log:
        "logs/{ds}/knn_{bb}.log",
    benchmark:
        "benchmarks/{ds}/knn/{bb}.tsv"
    threads: 2
    resources:
        device=DEVICE,
        mem_mb=per_attempt(4000),
        runtime=per_attempt(60),
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.knn --features {input} --k {params.k} --device {resources.device} --out {output}"
        " --threads {threads} --torch-threads {params.torch_threads} 2> {log}"
