rule render_demo:
    """The demo's synthetic scenes (images and exact label maps), rendered into the dataset's root."""
    input:
        provenance_check("render_demo"),
    output:
        directory("{demo_root}"),
    log:
        "logs/render_demo/{demo_root}.log",
    benchmark:
        "benchmarks/render_demo/{demo_root}.tsv"
    wildcard_constraints:
        demo_root="|".join(re.escape(root) for root in IN.demo_roots) or "(?!)",
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("render_demo")
    resources:
        mem_mb=JOBS.mem_mb("render_demo"),
        runtime=JOBS.runtime("render_demo"),
    params:
        provenance=provenance("render_demo"),
        settings=IN.demo_settings,
    shell:
        "python -m stego_steps.stages.prepare render --settings {params.settings:q} --threads {threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule curated_list:
    """A curated COCO-Stuff image list (IIC/PiCIE), downloaded and checksum-verified when it is missing."""
    output:
        "{coco_root}/curated/{coco_split}/{list_name}.txt",
    log:
        "logs/curated_list/{coco_root}/{coco_split}/{list_name}.log",
    wildcard_constraints:
        coco_root="|".join(re.escape(root) for root in IN.coco_roots) or "(?!)",
        coco_split="train2017|val2017",
        list_name=r"[A-Za-z0-9_\-]+",
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("curated_list")
    resources:
        mem_mb=JOBS.mem_mb("curated_list"),
        runtime=JOBS.runtime("curated_list"),
    params:
        url=IN.curated_url,
    shell:
        "python -m stego_steps.stages.prepare fetch --root {wildcards.coco_root:q} --split {wildcards.coco_split}"
        " --name {wildcards.list_name} --url {params.url:q} 2> {log}"


rule prepare:
    """Index the samples of each split and write the class table (`index_five_crop_<ratio>`: training rows are
    the five crops of each image)."""
    input:
        provenance_check("prepare"),
        unpack(IN.data_files),
    output:
        train="results/{ds}/{idx}/train.csv",
        val="results/{ds}/{idx}/val.csv",
        classes="results/{ds}/{idx}/classes.json",
    log:
        "logs/{ds}/{idx}/prepare.log",
    benchmark:
        "benchmarks/{ds}/{idx}/prepare.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("prepare")
    resources:
        mem_mb=JOBS.mem_mb("prepare"),
        runtime=JOBS.runtime("prepare"),
    params:
        provenance=provenance("prepare"),
        kind=lookup(dpath="datasets/{ds}/kind", within=config),
        settings=IN.prepare_settings,
        out_dir=subpath(output.classes, parent=True),
        # Names, sizes and times of the dataset's files: a change re-runs prepare (and what depends on it).
        manifest=IN.dataset_manifest,
    shell:
        "python -m stego_steps.stages.prepare --kind {params.kind} --settings {params.settings:q}"
        " --out-dir {params.out_dir} --threads {threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"


rule plan:
    """Samples and bytes of a split's feature store; refuses to start extracting when the disk cannot hold it."""
    input:
        index=lambda w: f"{IN.index_of(w)}/{w.split}.csv",
    output:
        "results/{ds}/plan/{fkey}/{split}.txt",
    log:
        "logs/{ds}/plan/{fkey}/plan.{split}.log",
    benchmark:
        "benchmarks/{ds}/plan/{fkey}/plan.{split}.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("plan")
    resources:
        mem_mb=JOBS.mem_mb("plan"),
        runtime=JOBS.runtime("plan"),
    params:
        settings=IN.plan_settings,
        store_dir="results/{ds}/features/{fkey}",
        title="plan: dataset {ds}, features {fkey}, split {split}",
    shell:
        "python -m stego_steps.stages.plan --index {wildcards.split}={input.index} --settings {params.settings:q}"
        " --store-dir {params.store_dir} --title {params.title:q} --out {output} 2> {log}"
