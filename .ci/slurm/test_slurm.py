"""The workflow runs through SLURM (snakemake-executor-plugin-slurm) on a throw-away local cluster.

Opt-in, because the fixture installs Debian packages, writes /etc/slurm/slurm.conf (restored afterwards)
and starts munged/slurmctld/slurmd as root: run ``pytest -m slurm`` (or set STEGO_TEST_SLURM=1). Under
CI (CI=true) a cluster that cannot be started is a failure, elsewhere a skip.

* ``test_toy_dag_through_slurm``: a 3-rule toy Snakefile through ``.ci/slurm/profile``; checks the
  outputs, that the job environment was inherited (HF_HUB_OFFLINE) and that every non-local job was a
  SLURM job (slurmctld's job-completion records, squeue, the plugin's per-job logs, SLURM_JOB_ID).
* ``test_demo_workflow_slurm_matches_local``: the demo workflow with ``tests/data/tiny_config.yaml``,
  once locally and once through SLURM (with extraction and CRF in 2 shards each), in two copies of the
  working tree; the mIoU tables must match.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

try:  # run as a package module or as a plain file
    from .slurm_cluster import PARTITION, SlurmCluster, in_ci, local_slurm
except ImportError:
    from slurm_cluster import PARTITION, SlurmCluster, in_ci, local_slurm

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
TEST_PROFILE = Path(__file__).resolve().parent / "profile"
TINY_CONFIG = Path("tests/data/tiny_config.yaml")  # relative to the (copied) working tree
DEMO_TARGET = "results/demo/miou.csv"
#: Generated or heavy paths not copied into the per-run working trees.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "results",
    "resources",
    "logs",
    "benchmarks",
    ".snakemake",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
)


def _opted_in(config: pytest.Config) -> bool:
    markexpr = config.getoption("markexpr", default="") or ""
    return "slurm" in markexpr or os.environ.get("STEGO_TEST_SLURM", "") not in {"", "0"}


@pytest.fixture(scope="module")
def slurm(request, tmp_path_factory) -> SlurmCluster:
    """One local SLURM cluster shared by the tests of this module."""
    if not _opted_in(request.config):
        pytest.skip("starts a local SLURM cluster as root; opt in with `pytest -m slurm`")
    with local_slurm(tmp_path_factory.mktemp("slurm-cluster")) as cluster:
        yield cluster


def snakemake_env() -> dict[str, str]:
    """Environment of the submitting Snakemake; jobs inherit it (the plugin submits with --export=ALL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"  # no network: timm/HF fail fast instead of retrying for ~46 s
    env["STEGO_SLURM_PROBE"] = "inherited"
    return env


class SnakemakeRun:
    """One Snakemake process in the background; its stdout+stderr go to ``log``."""

    def __init__(self, args: list[str], cwd: Path, log: Path):
        self.cmd = [sys.executable, "-m", "snakemake", *args]
        self.log = log
        self.start = time.monotonic()
        self.seconds = 0.0
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            out.write(f"$ {' '.join(self.cmd)}\n")
            out.flush()
            self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=snakemake_env(), stdout=out, stderr=subprocess.STDOUT)

    def done(self) -> bool:
        """Non-blocking check; remembers when the process was first seen finished."""
        if self.proc.poll() is None:
            return False
        if not self.seconds:
            self.seconds = time.monotonic() - self.start
        return True

    def wait(self, timeout: float) -> str:
        """Wait for the process; assert success; return its output."""
        deadline = self.start + timeout
        while not self.done():
            if time.monotonic() > deadline:
                self.proc.terminate()  # SLURM jobs left behind are cancelled by the fixture
                self.proc.wait(timeout=60)
                raise TimeoutError(f"snakemake ran longer than {timeout:.0f} s ({self.log})")
            time.sleep(0.5)
        text = self.log.read_text(errors="replace")
        assert self.proc.returncode == 0, f"snakemake failed ({self.log}):\n{text[-6000:]}"
        return text


def run_snakemake(args: list[str], cwd: Path, log: Path, timeout: float) -> str:
    return SnakemakeRun(args, cwd, log).wait(timeout)


def slurm_args(workdir: Path) -> list[str]:
    return [
        "--profile",
        str(TEST_PROFILE),
        "--directory",
        str(workdir),
        "--max-threads",
        str(len(os.sched_getaffinity(0))),  # never ask for more CPUs than the node has
    ]


def submitted_rules(snakemake_log: str) -> list[str]:
    """Rule names of the jobs Snakemake handed to the executor (``rule x:``; local ones are ``localrule``)."""
    return re.findall(r"^rule (\w+):$", snakemake_log, flags=re.M)


def slurm_evidence(cluster: SlurmCluster, workdir: Path, before: set[str], snakemake_log: str) -> dict:
    """Cross-check the jobs of one run from four independent sources and return a summary."""
    new_jobs = [j for j in cluster.completed_jobs() if j["JobId"] not in before]
    job_ids = {j["JobId"] for j in new_jobs}
    plugin_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    log_ids = {p.stem for p in plugin_logs}
    queue = {q["job_id"]: q for q in cluster.squeue_all() if q["job_id"] in job_ids}
    rules = submitted_rules(snakemake_log)
    evidence = {
        "slurm_jobs": len(new_jobs),
        "states": sorted({j["JobState"] for j in new_jobs}),
        "partitions": sorted({j["Partition"] for j in new_jobs}),
        "rules_submitted_by_snakemake": len(rules),
        "plugin_logs": len(plugin_logs),
        "per_rule": {},
    }
    for q in queue.values():  # the plugin puts "rule_<name>[_wildcards_...]" into --comment
        rule = re.sub(r"^rule_|_wildcards_.*$", "", q["comment"])
        evidence["per_rule"][rule] = evidence["per_rule"].get(rule, 0) + 1
    print(f"SLURM evidence for {workdir.name}: {evidence}")
    assert new_jobs, "no job went through SLURM"
    assert evidence["states"] == ["COMPLETED"], new_jobs
    assert evidence["partitions"] == [PARTITION]
    assert len(new_jobs) == len(rules), f"{len(rules)} jobs submitted, {len(new_jobs)} SLURM jobs"
    assert log_ids == job_ids, f"plugin logs {sorted(log_ids)} != SLURM jobs {sorted(job_ids)}"
    assert set(cluster.submitted_job_ids()) >= {int(i) for i in job_ids}
    assert sorted(evidence["per_rule"].items()) == sorted({r: rules.count(r) for r in set(rules)}.items())
    return evidence


# ----------------------------------------------------------------------------------------------- tests

TOY_SNAKEFILE = textwrap.dedent(
    """\
    SAMPLES = ["a", "b"]

    rule all:
        input:
            "out/combined.txt",

    rule greet:
        output:
            "out/{sample}.txt",
        shell:
            "echo sample={wildcards.sample} job=${{SLURM_JOB_ID:-none}} "
            "hf=${{HF_HUB_OFFLINE:-unset}} probe=${{STEGO_SLURM_PROBE:-unset}} > {output}"

    rule combine:
        input:
            expand("out/{sample}.txt", sample=SAMPLES),
        output:
            "out/combined.txt",
        shell:
            "cat {input} > {output}"
    """
)


def test_toy_dag_through_slurm(slurm: SlurmCluster, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    before = {j["JobId"] for j in slurm.completed_jobs()}
    start = time.monotonic()
    output = run_snakemake(slurm_args(tmp_path), tmp_path, tmp_path / "snakemake.log", timeout=300)
    elapsed = time.monotonic() - start

    lines = (tmp_path / "out" / "combined.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["sample=a", "sample=b"]
    fields = [dict(f.split("=", 1) for f in ln.split()) for ln in lines]
    assert all(f["hf"] == "1" and f["probe"] == "inherited" for f in fields), lines  # env inherited
    evidence = slurm_evidence(slurm, tmp_path, before, output)
    assert evidence["slurm_jobs"] == 3 and evidence["per_rule"] == {"greet": 2, "combine": 1}
    new_ids = {j["JobId"] for j in slurm.completed_jobs()} - before
    assert {f["job"] for f in fields} <= new_ids  # each greet ran inside one of those SLURM jobs
    print(f"toy DAG through SLURM: {elapsed:.1f} s")


def _wait_for_workflow(timeout: float = 0) -> None:
    """The demo workflow and its tiny config are written by another change; skip (or fail in CI)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in (REPO / "Snakefile", REPO / TINY_CONFIG) if not p.exists()]
        if not missing:
            return
        if time.monotonic() >= deadline:
            msg = f"demo workflow not ready: missing {', '.join(map(str, missing))}"
            if in_ci():
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)
        time.sleep(5)


def _read_table(path: Path) -> list[list[str]]:
    return [ln.split(",") for ln in path.read_text().strip().splitlines()]


def small_job_resources(snakefile: Path, workdir: Path, mem_mb: int = 2000) -> list[str]:
    """``--set-resources`` giving every rule a small memory request and no GPU.

    The rules declare memory for the paper presets (up to 12 GB), which would serialise or, on a small CI
    runner, reject the tiny demo's jobs; and the test cluster has no GPUs. Memory is only bookkeeping
    here (slurm.conf enforces no limits); 2000 MB leaves room for the Snakemake process in each job.
    """
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "--list-rules"],
        cwd=workdir, env=snakemake_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    rules = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    assert rules, res.stdout
    return ["--set-resources", *(f"{r}:{k}={v}" for r in rules for k, v in (("mem_mb", mem_mb), ("gpu", 0)))]


def test_demo_workflow_slurm_matches_local(slurm: SlurmCluster, tmp_path: Path):
    """The same tiny demo, locally and through SLURM, gives the same mIoU table.

    The two runs go at the same time: the SLURM run spends most of its time waiting for status polls
    and job start-up, so overlapping them saves minutes; each job gets the same thread count either way.
    """
    _wait_for_workflow(float(os.environ.get("STEGO_TEST_WAIT_FOR_WORKFLOW_S", "0")))
    trees = {mode: tmp_path / mode for mode in ("local", "slurm")}
    for tree in trees.values():
        shutil.copytree(REPO, tree, ignore=COPY_IGNORE, symlinks=True)
    common = {
        mode: [DEMO_TARGET, "-s", str(tree / "Snakefile"), "--configfile", str(TINY_CONFIG)]
        for mode, tree in trees.items()
    }
    # The SLURM run also splits extraction and the CRF into shards: the table must not depend on sharding.
    slurm_extra = [*slurm_args(trees["slurm"]), *small_job_resources(trees["slurm"] / "Snakefile", trees["slurm"]),
                   "--config", "extract_shards=2", "segment_shards=2"]
    before = {j["JobId"] for j in slurm.completed_jobs()}

    local = SnakemakeRun(
        [*common["local"], "--cores", "2", "--directory", str(trees["local"])],
        trees["local"],
        tmp_path / "snakemake-local.log",
    )
    via_slurm = SnakemakeRun([*common["slurm"], *slurm_extra], trees["slurm"], tmp_path / "snakemake-slurm.log")
    deadline = time.monotonic() + 600
    while not (local.done() and via_slurm.done()) and time.monotonic() < deadline:
        time.sleep(1)  # note each run's own duration
    slurm_log = via_slurm.wait(timeout=600)
    local.wait(timeout=600)
    print(f"demo workflow, concurrently: local {local.seconds:.0f} s, through SLURM {via_slurm.seconds:.0f} s")

    # Every new SLURM job belongs to the SLURM run (the local run submitted nothing).
    evidence = slurm_evidence(slurm, trees["slurm"], before, slurm_log)
    assert not (trees["local"] / ".snakemake" / "slurm_logs").exists()
    local_table = _read_table(trees["local"] / DEMO_TARGET)
    slurm_table = _read_table(trees["slurm"] / DEMO_TARGET)
    assert local_table == slurm_table, (
        f"mIoU tables differ:\nlocal:\n{(trees['local'] / DEMO_TARGET).read_text()}\n"
        f"slurm:\n{(trees['slurm'] / DEMO_TARGET).read_text()}"
    )
    print(f"demo workflow: {evidence['slurm_jobs']} SLURM jobs, mIoU tables identical ({len(local_table)} lines)")


def test_site_profile_parses(tmp_path: Path):
    """workflow/profiles/slurm is valid Snakemake profile syntax (dry run; no cluster needed)."""
    profile = REPO / "workflow" / "profiles" / "slurm"
    cfg = yaml.safe_load((profile / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", str(profile), "-n", "-d", str(tmp_path)],
        cwd=tmp_path,
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-4000:]
