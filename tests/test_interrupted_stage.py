"""A stage run through `errors.cli` ends on Ctrl-C or SIGTERM with one line and the signal's exit status; on
Snakemake's terminal, such a job is not reported as failed and one line says what was interrupted."""

import io
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stego_steps import errors

STAGE = """
import sys, time
from pathlib import Path
from stego_steps.errors import cli

def main():
    try:
        print("ready", flush=True)
        time.sleep(600)
    finally:
        Path(sys.argv[1]).write_text("unwound")

cli(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_stage_with_one_line_and_unwinds_it(tmp_path, sig):
    script, cleaned = tmp_path / "fakestage.py", tmp_path / "cleaned"
    script.write_text(STAGE)
    proc = subprocess.Popen([sys.executable, str(script), str(cleaned)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert err == f"INTERRUPTED: fakestage stopped by {sig.name}\n"
    assert proc.returncode == 128 + sig
    assert cleaned.read_text() == "unwound"  # finally blocks ran: open files are closed, partial files kept


def record(msg: str, **extra) -> logging.LogRecord:
    """A log record as Snakemake 9 makes it (`logger.error(msg, extra=...)`)."""
    rec = logging.LogRecord("snakemake.logging", logging.ERROR, __file__, 0, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_the_terminal_shows_an_interrupted_run_as_one_line(tmp_path):
    stopped, failed = tmp_path / "train.log", tmp_path / "prepare.log"
    stopped.write_text("INFO step 10/20\nINTERRUPTED: train stopped by SIGINT\n")
    failed.write_text("Traceback ...\nValueError: boom\n")
    main_log = tmp_path / "snakemake.log"
    main_log.write_text(f"Error in rule train:\n    log: {stopped} (check log file(s) for error details)\n")
    quiet = errors.QuietInterruptions()
    shell = record("RuleException:\nCalledProcessError in file train.smk, line 79:\nCommand 'python -m "
                   "stego_steps.stages.train' returned non-zero exit status 130.", event="error",
                   exception="RuleException")
    assert not quiet.filter(shell)
    died = record("RuleException:\nCommand 'set -euo pipefail; python -m stego_steps.stages.train' died with "
                  "<Signals.SIGTERM: 15>.", event="error", exception="RuleException")
    assert not quiet.filter(died)
    assert not quiet.filter(record("Error in rule train, jobid: 9", event="job_error", log=[str(stopped)]))
    assert not quiet.filter(record("Exiting because a job execution failed. Look above for error messages"))
    out = io.StringIO()
    errors.report_failed_jobs(main_log, out, quiet=quiet)
    assert out.getvalue() == ""  # the summary goes last, in place of Snakemake's closing error
    closing = record("WorkflowError:\nAt least one job did not complete successfully.", event="error",
                     exception="WorkflowError")
    assert quiet.filter(closing)
    assert closing.getMessage() == (f"INTERRUPTED: train stopped by SIGINT ({stopped}). Nothing failed: run the same "
                                    "command again to go on (a partial shard or a checkpoint resumes)")
    assert quiet.filter(record("Terminating processes on user request, this might take some time."))


def test_a_real_failure_beside_an_interruption_is_shown_in_full(tmp_path):
    stopped, failed = tmp_path / "train.log", tmp_path / "knn.log"
    stopped.write_text("INTERRUPTED: train stopped by SIGTERM\n")
    failed.write_text("ERROR: knn7.npy is damaged\n")
    quiet = errors.QuietInterruptions()
    assert not quiet.filter(record("Error in rule train", event="job_error", log=[str(stopped)]))
    assert quiet.filter(record("Error in rule knn", event="job_error", log=[str(failed)]))
    other = record("RuleException:\n... returned non-zero exit status 1.", event="error", exception="RuleException")
    assert quiet.filter(other)
    main_log = tmp_path / "snakemake.log"
    main_log.write_text("".join(f"    log: {p} (check log file(s) for error details)\n" for p in (stopped, failed)))
    out = io.StringIO()
    errors.report_failed_jobs(main_log, out, quiet=quiet)
    assert out.getvalue() == (f"{failed}:\nERROR: knn7.npy is damaged\nINTERRUPTED: train stopped by SIGTERM "
                              f"({stopped}). after fixing the failure above, run the same command again to go on (a "
                              "partial shard or a checkpoint resumes)\n")
    closing = record("WorkflowError:\nAt least one job did not complete successfully.", event="error")
    assert quiet.filter(closing) and "did not complete" in closing.getMessage()


def test_a_job_killed_by_sigkill_is_named_with_its_signal_not_its_last_progress_line(tmp_path):
    # Snakemake 9's log of a job whose stage the out-of-memory killer ended: the shell's status (128 + 9) comes
    # before the job's "Error in rule" block; the stage had no chance to write anything but progress.
    killed, failed = tmp_path / "train.log", tmp_path / "knn.log"
    killed.write_text("INFO stego_steps: train: 9/20 (45%), 15.16 it/s, 0:00:01 left\n")
    failed.write_text("Traceback ...\nValueError: boom\n")
    main_log = tmp_path / "snakemake.log"
    main_log.write_text(
        "RuleException:\nCalledProcessError in file train.smk, line 79:\nCommand 'set -euo pipefail; python -m "
        "stego_steps.stages.train' returned non-zero exit status 137.\n[Mon Dec  7 15:20:11 2026]\n"
        f"Error in rule train:\n    message: None\n    jobid: 9\n    log: {killed} (check log file(s) for error "
        "details)\n        (command exited with non-zero exit code)\n"
        "RuleException:\nCommand 'python -m stego_steps.stages.knn' returned non-zero exit status 1.\n"
        f"Error in rule knn:\n    jobid: 4\n    log: {failed} (check log file(s) for error details)\n")
    assert errors.signalled_jobs(main_log) == {killed: ("train", "SIGKILL")}
    out = io.StringIO()
    errors.report_failed_jobs(main_log, out)
    assert out.getvalue() == (
        f"{killed}:\nKILLED: train was ended by SIGKILL, most often the out-of-memory killer or a scheduler's memory "
        "or time limit. Its log's last line: INFO stego_steps: train: 9/20 (45%), 15.16 it/s, 0:00:01 left\n"
        "    Run the same command again to go on (a partial shard or a checkpoint resumes); if memory ran out, ask "
        f"for more: --set-resources train:mem_mb=<MB>\n{failed}:\nValueError: boom\n")


def test_a_shell_that_died_of_a_signal_counts_as_signalled(tmp_path):
    main_log = tmp_path / "snakemake.log"
    main_log.write_text("Command 'set -euo pipefail; python -m x' died with <Signals.SIGKILL: 9>.\n"
                        "Error in rule cluster:\n    log: logs/c.log (check log file(s) for error details)\n"
                        "Error in rule evaluate:\n    log: logs/e.log (check log file(s) for error details)\n")
    assert errors.signalled_jobs(main_log) == {Path("logs/c.log"): ("cluster", "SIGKILL")}


def test_the_terminal_filter_is_found_on_the_logger_it_was_put_on():
    logger = logging.getLogger("test_the_terminal_filter")
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    assert errors.installed_quiet(logger) is None
    quiet = errors.quiet_interruptions(logger)
    assert errors.installed_quiet(logger) is quiet


def test_sigterm_of_snakemake_alone_closes_the_run_with_one_line(tmp_path):
    # Snakemake's own handler finishes the running jobs and stops; ours runs first and tells the filter.
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        quiet = errors.QuietInterruptions()
        errors.notice_run_sigterm(quiet)
        signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == [signal.SIGTERM] and quiet.run_signal == "SIGTERM"
    main_log = tmp_path / "snakemake.log"
    main_log.write_text("Will exit after finishing currently running jobs (scheduler).\n")
    out = io.StringIO()
    errors.report_failed_jobs(main_log, out, quiet=quiet)
    assert out.getvalue() == ""
    closing = record("WorkflowError:\nAt least one job did not complete successfully.", event="error")
    assert quiet.filter(closing)
    assert closing.getMessage() == ("INTERRUPTED: the run was stopped by SIGTERM once the jobs it was running had "
                                    "finished. Nothing failed: run the same command again to go on")
