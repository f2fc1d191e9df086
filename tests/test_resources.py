"""What jobs ask for: the table in stego_steps/resources.py, the rules that read it, the profiles and docs checked
against it, and the COCO-Stuff DAG under the SLURM profile (a dry run: no data, no GPU, no cluster)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stego_steps import resources
from stego_steps.resources import DEVICE_RULES, RULES, WORKER_MB, WORKER_RULES
from tests.helpers import ROOT, snakemake

RULES_DIR = ROOT / "workflow" / "rules"
SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm"
DEFAULT_PROFILE = ROOT / "workflow" / "profiles" / "default"
CONFIG = ROOT / "config" / "config.yaml"
GPU_PARTITION = "<your-gpu-partition>"
#: The rules the issue names as putting tensors on the GPU (import_checkpoint converts on the CPU).
GPU_RULES = {"extract", "calibrate", "train", "cluster", "linear_probe", "backbone_kmeans", "backbone_linear", "knn",
             "predict", "segment_images"}


# ---------------------------------------------------------------------------------------------------------
# the table's functions


def test_device_rules_are_the_rules_that_put_tensors_on_the_gpu():
    assert set(DEVICE_RULES) == GPU_RULES
    assert set(WORKER_RULES) == {"render_demo", "prepare", "extract", "calibrate", "segment"}


@pytest.mark.parametrize("torch_threads", [1, 2, 7])
def test_model_rules_ask_for_their_torch_threads(torch_threads):
    for name in DEVICE_RULES:
        if name != "extract":
            assert resources.threads(name, torch_threads) == torch_threads, name
            assert resources.workers(name, torch_threads, torch_threads) == (
                torch_threads if name == "calibrate" else 0), name
    # extract: the compute threads and, beside them, the image loaders
    assert resources.threads("extract", torch_threads) == torch_threads
    assert resources.threads("extract", torch_threads, workers=6) == torch_threads + 6
    assert resources.workers("extract", torch_threads + 6, torch_threads) == 6
    assert resources.workers("extract", 1, torch_threads) == 0


def test_workers_invert_threads():
    for name in WORKER_RULES:
        for torch_threads in (1, 2, 4):
            low = 0 if RULES[name].alongside else resources.compute_threads(name, torch_threads)
            for w in range(max(low, 1), 20):
                assert resources.workers(name, resources.threads(name, torch_threads, w), torch_threads) == w, name


def test_other_rules_use_one_thread():
    for name, rule in RULES.items():
        if not rule.device and not rule.workers:
            assert resources.threads(name, 8) == 1, name
            assert resources.workers(name, 16, 8) == 0, name


def test_crf_memory_grows_with_its_workers():
    for name in ("segment", "calibrate"):
        base = resources.mem_mb(name, job_threads=2, torch_threads=2)
        for threads in (3, 8, 16):
            more = (threads - 2) * WORKER_MB["crf"]
            assert resources.mem_mb(name, job_threads=threads, torch_threads=2) == base + more
    assert resources.mem_mb("segment", job_threads=16, torch_threads=2) == 3000 + 16 * 1000
    # a model rule's memory does not depend on the threads it is given
    assert resources.mem_mb("train", job_threads=16, torch_threads=2) == resources.mem_mb("train", job_threads=2,
                                                                                           torch_threads=2)


def test_memory_of_the_inputs_and_the_attempt():
    assert resources.mem_mb("train", job_threads=2, torch_threads=2, store_mb=1000) == 4000 + 1200
    # beyond the budget the store is streamed: the request stops growing
    capped = resources.mem_mb("train", job_threads=2, torch_threads=2, store_mb=50_000, budget_mb=8192)
    assert capped == int(4000 + 1.2 * 8192)
    assert resources.mem_mb("knn", job_threads=2, torch_threads=2, pooled_mb=1000) == 4000 + 4000
    assert resources.mem_mb("knn", job_threads=2, torch_threads=2, pooled_mb=1000, attempt=2) == 2 * 8000
    assert resources.mem_mb("predict", job_threads=2, torch_threads=2, store_mb=1e6) == 8000


def test_gpu_requests():
    assert resources.uses_gpu("cuda", gpu_visible=False)
    assert resources.uses_gpu("cuda:1", gpu_visible=False)
    assert resources.uses_gpu("auto", gpu_visible=True)
    assert not resources.uses_gpu("auto", gpu_visible=False)
    assert not resources.uses_gpu("cpu", gpu_visible=True)
    assert {name for name in RULES if resources.gpu(name, True)} == set(DEVICE_RULES)
    assert not any(resources.gpu(name, False) for name in RULES)
    with pytest.raises(KeyError, match="stego_steps.resources.RULES"):
        resources.gpu("no_such_rule", True)


def test_runtimes():
    assert resources.runtime("train", attempt=2) == 2 * 720
    assert resources.extract_runtime(samples_per_shard=12_000, passes=2, attempt=1) == 30 + 20
    assert resources.segment_runtime(images_per_shard=2_400, crf_workers=4, attempt=1) == 30 + 30
    assert resources.segment_runtime(images_per_shard=2_400, crf_workers=16, attempt=2) == 2 * (30 + 7)


# ---------------------------------------------------------------------------------------------------------
# the rules, the profiles and the docs read or are checked against the table


def rule_blocks() -> dict[str, str]:
    blocks = {}
    for path in sorted(RULES_DIR.glob("*.smk")):
        for part in re.split(r"(?m)^(?=rule \w+:)", path.read_text()):
            match = re.match(r"rule (\w+):", part)
            if match:
                blocks[match.group(1)] = part
    return blocks


def test_every_rule_reads_its_own_row():
    blocks = rule_blocks()
    runs = {name for name, block in blocks.items() if re.search(r"(?m)^    (shell|run|script):", block)}
    assert runs == set(RULES), "rules that run something must have a row in stego_steps.resources.RULES"
    for name in RULES:
        block = blocks[name]
        assert f'    threads: JOBS.threads("{name}")\n' in block, name
        assert f'        mem_mb=JOBS.mem_mb("{name}"),\n' in block, name
        assert f'        runtime=JOBS.runtime("{name}"),\n' in block, name
        assert (f'        gpu=JOBS.gpu("{name}"),\n' in block) == (name in DEVICE_RULES), name
        assert ("        device=DEVICE,\n" in block) == (name in DEVICE_RULES), name


def test_slurm_profile_matches_the_table():
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    by_rule = profile["set-resources"]
    assert set(by_rule) == set(DEVICE_RULES)
    for name, values in by_rule.items():
        assert values == {"slurm_partition": GPU_PARTITION, "gpu": 1}, name
    # threads are raised only for workers; model rules keep their torch_threads
    assert set(profile["set-threads"]) <= set(WORKER_RULES)
    assert "cpus_per_gpu" not in profile["default-resources"]


def test_default_profile_leaves_threads_and_resources_to_the_rules():
    profile = yaml.safe_load((DEFAULT_PROFILE / "config.yaml").read_text())
    assert not {"set-threads", "set-resources", "default-resources"} & set(profile)


def test_the_docs_list_the_table():
    page = (ROOT / "docs" / "performance.md").read_text()
    block = re.search(r"<!-- resources table: [^>]*-->\n(.*?)\n<!-- end of resources table -->", page, re.S)
    assert block, "docs/performance.md: the generated table of what each job asks for is missing"
    assert block.group(1) == resources.markdown_table(), "regenerate it: stego_steps.resources.markdown_table()"
    slurm_readme = " ".join((SLURM_PROFILE / "README.md").read_text().split())
    listed = re.search(r"the rules that run their model on the device: ([^;]*);", slurm_readme)
    assert listed and re.findall(r"`(\w+)`", listed.group(1)) == list(DEVICE_RULES)
    common = (RULES_DIR / "common.smk").read_text()
    assert "stego_steps.resources.DEVICE_RULES" in common
    # no other list of device rules beside the table's
    assert "GPU rules (`" not in page and "(extract, knn, train" not in common


# ---------------------------------------------------------------------------------------------------------
# the COCO-Stuff DAG, dry runs


def dry_run_jobs(workdir: Path, *args: str) -> list[dict]:
    """Every job of a dry run: rule, threads, resources and shell command."""
    out = snakemake(workdir, "-n", "--printshellcmds", "--cores", "256", *args, configfile=CONFIG, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    jobs: list[dict] = []
    for line in (out.stdout + out.stderr).splitlines():
        if match := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append({"rule": match.group(1), "threads": 1, "resources": {}, "shell": ""})
        elif jobs and (match := re.match(r"    threads: (\d+)$", line)):
            jobs[-1]["threads"] = int(match.group(1))
        elif jobs and line.startswith("    resources: "):
            jobs[-1]["resources"] = dict(item.split("=", 1) for item in line[len("    resources: "):].split(", "))
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line
    return jobs


COCO = ("--", "results/cocostuff/miou.csv")


def test_cocostuff_under_the_slurm_profile(tmp_path):
    """`device: cuda`: each job's GPU request, partition, threads (what sbatch gets as --cpus-per-task) and
    memory are the table's."""
    torch_threads = yaml.safe_load(CONFIG.read_text())["torch_threads"]
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    jobs = dry_run_jobs(tmp_path, "--workflow-profile", str(SLURM_PROFILE), "--config", "device=cuda", *COCO)
    rules = {job["rule"] for job in jobs}
    assert GPU_RULES - {"segment_images"} <= rules  # every device rule of the COCO-Stuff table
    assert {"download", "prepare", "segment", "evaluate"} <= rules
    for job in jobs:
        name, res = job["rule"], job["resources"]
        threads = profile["set-threads"].get(name, resources.threads(name, torch_threads))
        assert job["threads"] == threads, job
        assert int(res.get("gpu", 0)) == resources.gpu(name, True), job
        assert res["slurm_partition"] == (GPU_PARTITION if name in DEVICE_RULES else "<your-partition>"), job
        assert "cpus_per_gpu" not in res, job
        # no store exists yet, so the memory is the base plus the workers
        assert int(res["mem_mb"]) == resources.mem_mb(name, job_threads=threads, torch_threads=torch_threads), job
        if "--threads " in job["shell"]:
            assert f" --threads {threads} " in job["shell"], job
        if name in DEVICE_RULES:
            assert f" --torch-threads {torch_threads} " in job["shell"], job
            assert res["device"] == "cuda", job
    by_rule = {job["rule"]: job for job in jobs}
    assert by_rule["cluster"]["threads"] == by_rule["knn"]["threads"] == by_rule["backbone_kmeans"]["threads"] == 2
    assert by_rule["segment"]["threads"] == 16 and int(by_rule["segment"]["resources"]["mem_mb"]) == 19_000


def test_cocostuff_rules_ask_for_the_gpu_of_their_device(tmp_path):
    """Without a profile's overrides (the local default profile), the rules themselves ask for a GPU exactly
    where the table says so."""
    jobs = dry_run_jobs(tmp_path, "--config", "device=cuda", *COCO)
    assert GPU_RULES - {"segment_images"} <= {job["rule"] for job in jobs}
    for job in jobs:
        assert int(job["resources"].get("gpu", 0)) == resources.gpu(job["rule"], True), job
        assert "slurm_partition" not in job["resources"], job


@pytest.mark.parametrize(("threads", "torch_threads"), [(2, 2), (8, 2), (3, 1), (1, 2)])
def test_extract_runs_the_tables_loaders(tmp_path, monkeypatch, threads, torch_threads):
    """The stage reads `--threads` as the table does: the threads beside torch's are image loaders."""
    import torch

    from stego_steps import feature_extraction
    from stego_steps.stages import extract

    seen = {}
    monkeypatch.setattr(extract, "read_index", lambda path: None)
    # main() imports the extractor when it runs (gather starts without torch): patch it at its home
    monkeypatch.setattr(feature_extraction, "extract", lambda *args, **kwargs: seen.update(kwargs))
    (tmp_path / "classes.json").write_text("{}")
    before = torch.get_num_threads()  # the CLI sets torch's threads for the process
    try:
        extract.main(["--index", "index.csv", "--classes", str(tmp_path / "classes.json"), "--out", "x.h5",
                      "--settings", "{}", "--device", "cpu", "--threads", str(threads),
                      "--torch-threads", str(torch_threads)])
    finally:
        torch.set_num_threads(before)
    assert seen["workers"] == resources.workers("extract", threads, torch_threads)
