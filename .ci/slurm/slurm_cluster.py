"""A throw-away single-node SLURM cluster on localhost, for tests of the SLURM profile.

``local_slurm(tmp_path)`` is a context manager (wrapped as a fixture in ``test_slurm.py``) that follows
a recipe measured on Debian 12 with SLURM 22.05:

* installs ``slurm-wlm slurmctld slurmd slurm-client munge`` with apt-get when ``slurmctld`` is missing
  (no service starts by itself on install);
* creates a munge key if missing and starts ``munged`` as user ``munge`` unless one already answers;
* writes ``/etc/slurm/slurm.conf`` and ``/etc/slurm/gres.conf`` (existing files are backed up and restored
  afterwards): the executor plugin strips ``SLURM_*`` variables inside jobs, so a config named by
  ``SLURM_CONF`` elsewhere would not be found there;
* starts ``slurmctld`` and ``slurmd`` as root with all state, spool, log and PID files under ``tmp_path``;
* waits until ``sinfo`` reports the node idle, yields a :class:`SlurmCluster`, and on exit cancels what is
  left in *its* queue and stops exactly the daemons it started, by PID, waiting for each to exit.

Design choices:

* No accounting (no slurmdbd/MariaDB). The Snakemake profile therefore sets
  ``slurm-status-command: squeue``; ``MinJobAge`` is set high so that finished jobs stay visible to
  ``squeue --states=all`` (the plugin falls back to ``sacct`` when MinJobAge < 3 x the initial status
  delay, and ``sacct`` without slurmdbd never reports anything).
* Evidence that jobs went through SLURM comes from the job-completion plugin ``jobcomp/filetxt`` (one
  line per finished job, written by slurmctld), from slurmctld's log and from ``squeue --states=all``.
* The daemons run in the foreground (``-D``, ``munged -F``) as children of the test process rather than
  forking into the background: the PID we hold is then exactly the daemon's, a start-up failure shows up
  as an exit code, and we reap the processes ourselves (PID 1 in containers often does not reap
  orphans, which would leave a zombie that looks alive to ``kill(pid, 0)``). PID files are still written
  (slurm.conf names them) for anyone inspecting the state directory.
* The node declares ``GPUS`` stand-in GPUs, a ``gpu`` GRES whose device file is ``/dev/null``, so that jobs
  can ask for GPUs with ``--gpus`` (what the workflow's SLURM profile sends) and the scheduler runs no more of
  them at once than the node has, while they compute on the CPU. A count-only GPU (``Name=gpu Count=1``
  without ``File=``) does not work with SLURM 22.05: slurmd drops it ("Removing file-less GPU gpu:(null) from
  final GRES list", at SlurmdDebug=debug) and slurmctld then marks the node INVAL ("gres/gpu count reported
  lower than configured (0 < 1)"). Count-only GRES of other names work, but ``--gpus`` asks for ``gpu``.
  With ``task/none`` nothing confines the device; slurmd sets ``CUDA_VISIBLE_DEVICES`` to the index it
  allocated, which a job that computes on the CPU ignores.
* Ports are chosen free at start-up, so a stray service on 6817/6818 does not break the test. If any
  ``slurmctld``/``slurmd`` process is already running we refuse to start (we never touch processes we did
  not start).

The cluster needs root (apt-get, /etc/slurm, starting munged as another user). When that is impossible
the test is skipped with the reason, except under CI (``CI=true``), where it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = SLURM_CONF.with_name("gres.conf")  # slurmd reads it beside slurm.conf
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
APT_PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
#: Name of the single partition; ``.ci/slurm/profile/config.yaml`` uses the same name.
PARTITION = "localtest"
CLUSTER_NAME = "stegotest"
#: Memory (MiB) kept back from SLURM for the OS, pytest and the submitting Snakemake process.
MEMORY_HEADROOM_MB = 1024
#: Seconds SLURM keeps finished jobs in memory (visible to ``squeue --states=all``).
MIN_JOB_AGE_S = 3600
#: Stand-in GPUs the node declares (a ``gpu`` GRES on ``GPU_FILES``: SLURM 22.05 drops a file-less ``gpu``).
GPUS = 1
GPU_FILES = ("/dev/null", "/dev/zero")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str):
    """Skip the test locally, fail it in CI (where the cluster is required)."""
    if in_ci():
        pytest.fail(f"local SLURM cluster unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {reason}")


@dataclass
class SlurmCluster:
    """What a test needs to know about the running cluster."""

    root: Path
    hostname: str
    partition: str
    cpus: int
    real_memory_mb: int
    gpus: int
    ctld_log: Path
    slurmd_log: Path
    jobcomp_log: Path
    env: dict[str, str] = field(default_factory=dict)

    def completed_jobs(self) -> list[dict[str, str]]:
        """Finished jobs as recorded by slurmctld's jobcomp/filetxt plugin (one dict per job)."""
        jobs = []
        if not self.jobcomp_log.exists():
            return jobs
        for line in self.jobcomp_log.read_text().splitlines():
            # "JobId=3 UserId=root(0) GroupId=root(0) Name=<uuid> JobState=COMPLETED Partition=..."
            jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
        return jobs

    def submitted_job_ids(self) -> list[int]:
        """Job IDs that slurmctld logged as submitted batch jobs."""
        text = self.ctld_log.read_text(errors="replace") if self.ctld_log.exists() else ""
        return [int(m) for m in re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)]

    def squeue_all(self) -> list[dict[str, str]]:
        """All jobs slurmctld still remembers (pending, running and finished within MinJobAge)."""
        out = subprocess.run(
            ["squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%P|%k"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        keys = ["job_id", "name", "state", "partition", "comment"]
        return [dict(zip(keys, line.split("|", 4), strict=False)) for line in out.splitlines() if line]


# --------------------------------------------------------------------------------------------- helpers


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    return subprocess.run(cmd, **kw)


def _ensure_packages() -> None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        _unavailable("SLURM is not installed and we are not root (cannot apt-get install)")
    if not shutil.which("apt-get"):
        _unavailable("SLURM is not installed and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
    ]
    for cmd in steps:
        try:
            res = _run(cmd, env=env, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"{' '.join(cmd)} failed: {exc}")
        if res.returncode != 0:
            _unavailable(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    if not shutil.which("slurmctld"):
        _unavailable("apt-get succeeded but slurmctld is still not on PATH")


def _running_processes(names: set[str]) -> list[tuple[int, str]]:
    """(pid, name) of running processes whose command name is in ``names`` (read-only /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if comm in names and state != "Z":
            found.append((int(entry.name), comm))
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what `nproc` prints
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _real_memory_mb() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M).group(1))
    return max(1024, total_kb // 1024 - MEMORY_HEADROOM_MB)


def _munge_works() -> bool:
    """True when a munged answers on the default socket (encode + decode round trip)."""
    if not shutil.which("munge") or not shutil.which("unmunge"):
        return False
    try:
        cred = _run(["munge", "-n"], timeout=10)
        if cred.returncode != 0:
            return False
        return _run(["unmunge"], input=cred.stdout, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait_until(predicate, timeout: float, what: str, procs: dict[str, subprocess.Popen], logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode} while waiting for {what}" + _tails(logs)
                )
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}" + _tails(logs))


def _tails(logs: list[Path], n: int = 15) -> str:
    parts = []
    for log in logs:
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"\n--- {log} (last {len(lines)} lines) ---\n" + "\n".join(lines))
    return "".join(parts)


def _stop(proc: subprocess.Popen, name: str, timeout: float = 20) -> None:
    """Stop one daemon we started, by its PID, and wait for it to exit (SIGKILL as a last resort)."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _slurm_conf(root: Path, host: str, cpus: int, mem_mb: int, ctld_port: int, slurmd_port: int, gpus: int) -> str:
    return f"""\
# Written by .ci/slurm/slurm_cluster.py for a throw-away single-node test cluster; the original file (if
# any) is restored when the test ends. Everything stateful lives under {root}.
ClusterName={CLUSTER_NAME}
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers / CI runners: track processes via /proc, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# No accounting daemon: Snakemake must use `squeue` for status (see .ci/slurm/profile/config.yaml).
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# One line per finished job, written by slurmctld: the tests' evidence that jobs ran under SLURM.
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Stand-in GPUs (gres.conf): jobs ask with --gpus, the scheduler counts them; the jobs compute on the CPU.
GresTypes=gpu
SchedulerType=sched/backfill
ReturnToService=2
# Keep finished jobs visible to `squeue --states=all` long enough for the plugin's status checks.
MinJobAge={MIN_JOB_AGE_S}
# Trust the CPU/memory figures below even if the hardware probe disagrees (cgroup-limited runners).
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _gres_conf(host: str, gpus: int) -> str:
    if not 0 < gpus <= len(GPU_FILES):
        raise ValueError(f"the test node can declare 1 to {len(GPU_FILES)} stand-in GPUs, not {gpus}")
    return f"""\
# Written by .ci/slurm/slurm_cluster.py: {gpus} stand-in GPU(s) on files that are no GPU (the jobs compute on
# the CPU); SLURM 22.05 drops a gpu GRES without File=.
NodeName={host} Name=gpu File={",".join(GPU_FILES[:gpus])}
"""


# ------------------------------------------------------------------------------------------ the cluster


@contextlib.contextmanager
def local_slurm(tmp_path: Path, start_timeout: float = 60, gpus: int = GPUS):
    """Start a single-node SLURM cluster for the duration of the ``with`` block; yield a SlurmCluster."""
    if os.geteuid() != 0:
        _unavailable("needs root (writes /etc/slurm/slurm.conf, starts munged/slurmctld/slurmd)")
    _ensure_packages()
    already = _running_processes({"slurmctld", "slurmd"})
    if already:
        _unavailable(f"SLURM daemons already running {already}; refusing to interfere with them")

    root = Path(tmp_path) / "slurm"
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    cpus = _cpus()
    mem_mb = _real_memory_mb()
    ctld_log, slurmd_log = root / "log/slurmctld.log", root / "log/slurmd.log"
    cluster = SlurmCluster(
        root=root,
        hostname=host,
        partition=PARTITION,
        cpus=cpus,
        real_memory_mb=mem_mb,
        gpus=gpus,
        ctld_log=ctld_log,
        slurmd_log=slurmd_log,
        jobcomp_log=root / "log/jobcomp.txt",
    )

    procs: dict[str, subprocess.Popen] = {}  # only daemons started here; stopped in reverse order
    backups: dict[Path, Path] = {}  # written config file -> the original it replaced
    written: list[Path] = []
    try:
        # --- munge: key, then daemon (as user munge) unless one already serves the default socket
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            res = _run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"])
            if res.returncode != 0:
                raise RuntimeError(f"mungekey failed: {res.stderr}")
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o400)
        if not _munge_works():
            MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
            MUNGE_RUN_DIR.chmod(0o755)
            for d in (Path("/var/log/munge"), Path("/var/lib/munge")):
                d.mkdir(parents=True, exist_ok=True)
                shutil.chown(d, "munge", "munge")
            munge_out = open(root / "log/munged.out", "w")  # noqa: SIM115 - closed with the process
            procs["munged"] = subprocess.Popen(
                ["munged", "--foreground", "--force"],
                user="munge",
                group="munge",
                stdout=munge_out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            _wait_until(_munge_works, 20, "munged", procs, [root / "log/munged.out"])

        # --- slurm.conf and gres.conf (back up whatever is there)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((SLURM_CONF, _slurm_conf(root, host, cpus, mem_mb, _free_port(), _free_port(), gpus)),
                           (GRES_CONF, _gres_conf(host, gpus))):
            if path.exists() or path.is_symlink():
                backups[path] = path.with_name(f"{path.name}.before-test.{os.getpid()}")
                path.rename(backups[path])
            path.write_text(text)
            written.append(path)

        # --- controller, then node daemon (foreground children; see module docstring)
        for name, cmd in (("slurmctld", ["slurmctld", "-D", "-i"]), ("slurmd", ["slurmd", "-D", "-N", host])):
            out = open(root / f"log/{name}.out", "w")  # noqa: SIM115
            procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

        def node_idle() -> bool:
            res = _run(["sinfo", "--noheader", "--format=%T", f"--partition={PARTITION}"], timeout=10)
            return res.returncode == 0 and res.stdout.strip() == "idle"

        logs = [ctld_log, slurmd_log, root / "log/slurmctld.out", root / "log/slurmd.out"]
        _wait_until(node_idle, start_timeout, "the node to become idle in sinfo", procs, logs)
        yield cluster
    finally:
        if "slurmctld" in procs and procs["slurmctld"].poll() is None:
            # Cancel whatever a failed test left in *our* queue, so no slurmstepd outlives slurmd.
            with contextlib.suppress(Exception):
                _run(["scancel", "--full", f"--partition={PARTITION}"], timeout=20)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    states = _run(["squeue", "--noheader", "--format=%T"], timeout=10).stdout.split()
                    if not set(states) & {"RUNNING", "COMPLETING", "PENDING", "CONFIGURING"}:
                        break
                    time.sleep(0.5)
        for name in reversed(list(procs)):  # slurmd, slurmctld, munged
            with contextlib.suppress(Exception):
                _stop(procs[name], name)
        for path in written:
            path.unlink(missing_ok=True)
        for path, backup in backups.items():
            backup.rename(path)
