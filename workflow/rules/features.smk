rule extract:
    """Frozen backbone features of one split → HDF5 (float16 patch features, pooled descriptors)."""
    input:
        index="results/{ds}/index/{split}.csv",
        classes="results/{ds}/index/classes.json",
        # The disk check runs first; ancient: a rerun plan (e.g. the other split's settings changed) does
        # not redo this split's extraction by itself.
        plan=ancient("results/{ds}/plan/{bb}.txt"),
        weights=backbone_weights_input,
    output:
        "results/{ds}/features/{bb}/{split}.h5",
    params:
        settings=settings("extract"),
    log:
        "logs/{ds}/extract_{bb}_{split}.log",
    benchmark:
        "benchmarks/{ds}/extract/{bb}_{split}.tsv"
    threads: 2
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=720,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.extract --index {input.index} --classes {input.classes} --split {wildcards.split}"
        " --settings {params.settings:q} --out {output} --threads {threads} 2> {log}"


rule knn:
    """Cosine top-k neighbours of the pooled training descriptors (FAISS), self first."""
    input:
        "results/{ds}/features/{bb}/train.h5",
    output:
        "results/{ds}/knn/{bb}/train.npy",
    params:
        k=lambda w: PRESETS[w.ds]["knn_k"],
    log:
        "logs/{ds}/knn_{bb}.log",
    benchmark:
        "benchmarks/{ds}/knn/{bb}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/stego.yaml"
    shell:
        "python -m stego_steps.knn --features {input} --k {params.k} --out {output} --threads {threads} 2> {log}"
