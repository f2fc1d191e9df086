from stego_steps import knn as stego_knn


rule extract:
    """Frozen backbone features of one shard of a split → HDF5 (float16 patch features, pooled descriptors).

    Stores live under features/<backbone>_<digest of the extraction settings>: every variant with the same
    extraction shares them."""
    input:
        provenance_check("extract"),
        index=lambda w: f"{IN.index_of(w)}/{w.split}.csv",
        classes=lambda w: f"{IN.index_of(w)}/classes.json",
        # The split's disk check runs first.
        plan="results/{ds}/plan/{fkey}/{split}.txt",
        weights=IN.backbone_weights_input,
    output:
        "results/{ds}/features/{fkey}/{split}/{scatteritem}.h5",
    log:
        f"{FEATURE_LOGS}/extract.{{split}}.{{scatteritem}}.log",
    benchmark:
        f"{FEATURE_BENCHMARKS}/extract.{{split}}.{{scatteritem}}.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("extract")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("extract"),
        mem_mb=JOBS.mem_mb("extract"),
        runtime=JOBS.runtime("extract"),
    params:
        provenance=provenance("extract"),
        torch_threads=TORCH_THREADS,
        settings=IN.settings("extract"),
        shard=IN.shard_index,
        n_shards=IN.shard_count,
    shell:
        "python -m stego_steps.stages.extract --index {input.index} --classes {input.classes} --split {wildcards.split}"
        " --shard {params.shard} --n-shards {params.n_shards} --settings {params.settings:q}"
        " --device {resources.device} --out {output} --threads {threads} --torch-threads {params.torch_threads}"
        " 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule gather_features:
    """One feature store per split: HDF5 virtual datasets over the shards (nothing is copied)."""
    input:
        provenance_check("gather_features"),
        gather.extract("results/{{ds}}/features/{{fkey}}/{{split}}/{scatteritem}.h5"),
    output:
        "results/{ds}/features/{fkey}/{split}.h5",
    log:
        f"{FEATURE_LOGS}/gather_features.{{split}}.log",
    benchmark:
        f"{FEATURE_BENCHMARKS}/gather_features.{{split}}.tsv"
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("gather_features")
    resources:
        mem_mb=JOBS.mem_mb("gather_features"),
        runtime=JOBS.runtime("gather_features"),
    params:
        provenance=provenance("gather_features"),
    shell:
        "python -m stego_steps.stages.extract gather --out {output} {input} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule knn:
    """Cosine top-k neighbours of the pooled training descriptors (FAISS), self first."""
    input:
        provenance_check("knn"),
        "results/{ds}/features/{fkey}/train.h5",
    output:
        "results/{ds}/features/{fkey}/knn{k}.npy",
    log:
        f"{FEATURE_LOGS}/knn.{{k}}.log",
    benchmark:
        f"{FEATURE_BENCHMARKS}/knn.{{k}}.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("knn")
    resources:
        device=DEVICE,
        gpu=JOBS.gpu("knn"),
        mem_mb=JOBS.mem_mb("knn"),
        runtime=JOBS.runtime("knn"),
    params:
        provenance=provenance("knn"),
        torch_threads=TORCH_THREADS,
        # The config's `knn:` as far as it decides the table (exact, or the approximate search's settings).
        search=json.dumps(stego_knn.search_argument(config["knn"]), sort_keys=True),
    shell:
        "python -m stego_steps.stages.knn --features {input} --k {wildcards.k} --device {resources.device} --out {output}"
        " --threads {threads} --torch-threads {params.torch_threads} --search {params.search:q} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
