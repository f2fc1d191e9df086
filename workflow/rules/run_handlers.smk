# What `onstart:` and `onerror:` (in workflow/Snakefile) run: this folder's run lock and the checks that need the
# DAG before the first job, and the report of failed or interrupted jobs at the end.
import atexit
import os
import sys

from stego_steps import runlock, start_checks
from stego_steps.errors import (
    UserError,
    installed_quiet,
    notice_run_sigterm,
    quiet_interruptions,
    report_failed_jobs,
)

# SIGTERM of a job's group (`timeout`, a scheduler's cancel) reaches its stage, which ends with its INTERRUPTED
# line and status 143; the job's shell waits for that (bash runs a trap only after the running command), where
# without the trap it would die first and Snakemake would report the job before its log says why.
shell.prefix("set -euo pipefail; trap 'exit 143' TERM; ")


def report_failures(log):
    """`onerror:`: each failed job's own message; the jobs a signal stopped in one line, last."""
    report_failed_jobs(log, quiet=installed_quiet(logger))


# When jobs are about to run (`onstart`: a real run, not a dry run, in the Snakemake process, not in a job):
# this folder's run lock, and what the DAG decides (stego_steps.start_checks).
def start_run(log):
    if not workflow.is_main_process:
        return
    lock = os.path.abspath(runlock.LOCK)  # Snakemake leaves the working directory before the process exits
    try:
        runlock.acquire(lock, command=" ".join(sys.argv))
    except UserError as err:
        raise WorkflowError(str(err))
    atexit.register(runlock.release, lock, os.getpid())
    # On the terminal, a job stopped by Ctrl-C or SIGTERM is not a failure: one line says what was interrupted.
    notice_run_sigterm(quiet_interruptions(logger))
    try:
        start_checks.check_jobs(
            EXP,
            workflow.dag.needrun_jobs(),
            local=workflow.local_exec,
            torch_threads=TORCH_THREADS,
            disk_free_bytes=config.get("disk_free_bytes"),
        )
    except UserError as err:
        runlock.release(lock)
        raise WorkflowError(str(err))
