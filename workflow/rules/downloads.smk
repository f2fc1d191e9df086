# Downloads into resources/: `snakemake resources/<path>` fetches a file of the table of known resources
# (stego_steps/data/resources.yaml, with the config's `downloads:` merged over it), checksum-verified;
# `snakemake resources/<folder>` unpacks an archive whose entry names that folder under `extract`; a folder
# with `instructions` (data behind a login) stops with them while it is missing.
# The table (IN.resources) is read in common.smk, which needs it first.


rule download:
    """A file of the table of known resources, checksum-verified; a partial download never takes its name."""
    output:
        "resources/{resource}",
    log:
        "logs/download/{resource}.log",
    wildcard_constraints:
        resource=stego_download.path_pattern(IN.downloadable_paths),
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("download")
    resources:
        mem_mb=JOBS.mem_mb("download"),
        runtime=JOBS.runtime("download"),
    params:
        args=lambda wildcards: stego_download.cli_args(IN.resources[wildcards.resource]),
    shell:
        "python -m stego_steps.stages.download {params.args} --out {output:q} 2> {log}"


rule unpack_resource:
    """A downloaded archive, unpacked into its folder under resources/."""
    input:
        lambda wildcards: f"resources/{IN.archive_of[wildcards.folder]}",
    output:
        directory("resources/{folder}"),
    log:
        "logs/download/unpack/{folder}.log",
    wildcard_constraints:
        folder=stego_download.path_pattern(IN.archive_of),
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("unpack_resource")
    resources:
        mem_mb=JOBS.mem_mb("unpack_resource"),
        runtime=JOBS.runtime("unpack_resource"),
    shell:
        "python -m stego_steps.stages.download --out {input:q} --extract-to {output:q} 2> {log}"


rule resource_by_hand:
    """Data that needs an account: stops with where to download it and where to put it while it is missing."""
    output:
        directory("resources/{manual}"),
    log:
        "logs/download/manual/{manual}.log",
    wildcard_constraints:
        manual=stego_download.path_pattern(IN.by_hand),
    localrule: True
    conda:
        "../envs/stego.yaml"
    threads: JOBS.threads("resource_by_hand")
    resources:
        mem_mb=JOBS.mem_mb("resource_by_hand"),
        runtime=JOBS.runtime("resource_by_hand"),
    params:
        instructions=lambda wildcards: IN.resources[wildcards.manual]["instructions"],
    shell:
        "python -m stego_steps.stages.download --out {output:q} --instructions {params.instructions:q} 2> {log}"
