# Segment a folder of new images with a dataset's default run: name the folder under `segment_images:` in the
# config, then `snakemake --cores 2 results/{ds}/segmented/{name}`. Each file of the folder is an input, so an
# added, removed or edited image re-runs this job; the run's codes say how its features were computed.


rule segment_images:
    """Label PNGs and colour overlays (and the CRF-refined ones) of a folder of new images, at their own sizes."""
    input:
        provenance_check("segment_images"),
        unpack(IN.segment_images_inputs),
    output:
        directory("results/{ds}/segmented/{name}"),
    log:
        "logs/{ds}/segment_images.{name}.log",
    benchmark:
        "benchmarks/{ds}/segment_images.{name}.tsv"
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("segment_images")
    resources:
        gpu=JOBS.gpu("segment_images"),
        device=DEVICE,
        mem_mb=JOBS.mem_mb("segment_images"),
        runtime=JOBS.runtime("segment_images"),
    params:
        provenance=provenance("segment_images"),
        run=lambda w: EXP.default_run(w.ds),
        images=lambda w: config["segment_images"][w.name],
        torch_threads=TORCH_THREADS,
    shell:
        "python -m stego_steps.stages.segment_images --run {params.run} --images {params.images:q} --out {output}"
        " --crf --device {resources.device} --threads {threads}"
        " --torch-threads {params.torch_threads} 2> {log}"
        " && python -m stego_steps.provenance record --provenance {params.provenance:q} {output:q}"
