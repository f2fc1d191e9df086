"""The project's own error type and how a stage's CLI reports it.

A `UserError` is a problem the user can fix (bad input file, bad setting): its message names the file or key,
says what is wrong and how to fix it. A stage's `main()` run through `cli()` prints such an error as one block
that starts with `ERROR:` on stderr (no traceback) and exits with status 2. Snakemake redirects stderr into the
job's log, and the workflow's `onerror:` handler prints the `ERROR:` blocks of the failed jobs' logs on the
terminal (see `error_blocks`). Any other exception is a bug and keeps its traceback.

Ctrl-C (SIGINT) and SIGTERM (`timeout`, a scheduler's cancel, `kill`) end a stage with one line,
`INTERRUPTED: <stage> stopped by <signal>`, and the shell's status for that signal (128 + its number), no
traceback; SIGTERM unwinds like Ctrl-C, so open files are closed and partial files stay resumable. Snakemake
reports such a job as failed (its "Error in rule" block, the shell's CalledProcessError, "At least one job did
not complete successfully"); on the terminal `QuietInterruptions` leaves those out for jobs whose log ends with
that line, and the `onerror:` summary ends the run with one line naming what was interrupted (Snakemake's own
log file keeps everything).
"""

from __future__ import annotations

import logging
import re
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

EXIT_USER_ERROR = 2
PREFIX = "ERROR: "
INTERRUPTED = "INTERRUPTED: "


class UserError(ValueError):
    """A problem with the user's input or settings; the message says what is wrong and how to fix it."""


def format_error(err: BaseException) -> str:
    """`ERROR: <first line>` followed by the message's other lines, indented."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return "\n".join([PREFIX + lines[0], *("    " + line.strip() for line in lines[1:])])


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM, so that a stage unwinds as it does on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def cli(main: Callable[[], object]) -> None:
    """Run a stage's `main()`: a `UserError` becomes an `ERROR:` block on stderr and exit status 2; SIGINT and
    SIGTERM become one `INTERRUPTED:` line and exit status 128 + the signal's number."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        main()
    except UserError as err:
        print(format_error(err), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except (KeyboardInterrupt, Interrupted) as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while exiting ends the process
        stage = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "stage"
        print(f"{INTERRUPTED}{stage} stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None


def error_blocks(text: str) -> list[str]:
    """The `ERROR:` blocks of a job's log (a line starting with `ERROR:` and the indented lines after it);
    without any, the log's last non-empty line (for an uncaught exception: its type and message)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(PREFIX):
            current = [line]
            blocks.append(current)
        elif current is not None and line.startswith((" ", "\t")):
            current.append(line)
        else:
            current = None
    if blocks:
        return ["\n".join(block) for block in blocks]
    tail = [line for line in text.splitlines() if line.strip()]
    return tail[-1:]


def _read_logs(snakemake_log: str | Path | Iterable[str | Path]) -> str:
    logs = [snakemake_log] if isinstance(snakemake_log, str | Path) else list(snakemake_log)
    text = ""
    for path in logs:
        try:
            text += Path(path).read_text(errors="replace") + "\n"
        except OSError:
            continue
    return text


def _job_log_paths(line: str) -> list[Path]:
    """The paths of a failed job's `log: <path>, ... (check log file(s) for error details)` line."""
    stripped = line.strip()
    if not (stripped.startswith("log:") and "(check log file" in stripped):
        return []
    items = stripped[len("log:"):].split("(check log file")[0].split(",")
    return [Path(item.strip()) for item in items if item.strip()]


def failed_job_logs(snakemake_log: str | Path | Iterable[str | Path]) -> list[Path]:
    """The log files that Snakemake's own log (one path, or a list of them) names for its failed jobs
    (`log: <path> (check log file(s) for error details)`)."""
    paths: list[Path] = []
    for line in _read_logs(snakemake_log).splitlines():
        paths += [path for path in _job_log_paths(line) if path not in paths]
    return paths


# A job's shell status in Snakemake's log: 128 + n when signal n ended the stage's process, or Python's text for
# a shell that was itself ended by a signal. It comes before the job's "Error in rule" block.
_STATUS = re.compile(r"returned non-zero exit status (\d+)\b|died with <Signals\.(SIG[A-Z0-9]+):")
_ERROR_IN_RULE = re.compile(r"Error in rule (\w+)")


def _status_signal(match: re.Match[str]) -> str | None:
    """The signal's name of a `_STATUS` match, None for an exit status that no signal gives."""
    if match.group(2):
        return match.group(2)
    number = int(match.group(1)) - 128
    return next((sig.name for sig in signal.Signals if sig.value == number), None)


def signalled_jobs(snakemake_log: str | Path | Iterable[str | Path]) -> dict[Path, tuple[str, str]]:
    """The failed jobs that a signal ended (status 128 + n, or a shell that died of it), by log file: the rule and
    the signal's name. A SIGKILL gives the stage no chance to say so in its own log: the out-of-memory killer, a
    scheduler's hard limit, `kill -9`."""
    found: dict[Path, tuple[str, str]] = {}
    signame = rule = None
    for line in _read_logs(snakemake_log).splitlines():
        if match := _STATUS.search(line):
            signame = _status_signal(match)
        elif match := _ERROR_IN_RULE.match(line.strip()):
            rule = match.group(1)
        elif paths := _job_log_paths(line):
            if signame and rule:
                found.update(dict.fromkeys(paths, (rule, signame)))
            signame = rule = None
    return found


def killed_message(rule: str, signame: str, log_text: str) -> str:
    """What to say for a job that a signal ended without its stage's own line."""
    tail = [line for line in log_text.splitlines() if line.strip()][-1:]
    last = f" Its log's last line: {tail[0].strip()}" if tail else ""
    return (f"KILLED: {rule} was ended by {signame}, most often the out-of-memory killer or a scheduler's memory or "
            f"time limit.{last}\n    Run the same command again to go on (a partial shard or a checkpoint "
            f"resumes); if memory ran out, ask for more: --set-resources {rule}:mem_mb=<MB>")


def interruption(log: str | Path) -> str | None:
    """The `INTERRUPTED:` line a job's log ends with (its stage was stopped by a signal), else None."""
    try:
        blocks = error_blocks(Path(log).read_text(errors="replace"))
    except OSError:
        return None
    return blocks[-1] if blocks and blocks[-1].startswith(INTERRUPTED) else None


def interrupted_summary(lines: list[str], logs: list[Path], failed: bool = False) -> str:
    """One line for the jobs a signal stopped: `INTERRUPTED: train stopped by SIGINT (<log>); ...`."""
    parts = [f"{line.removeprefix(INTERRUPTED)} ({log})" for line, log in zip(lines, logs, strict=True)]
    then = "after fixing the failure above, run" if failed else "Nothing failed: run"
    return f"{INTERRUPTED}{'; '.join(parts)}. {then} the same command again to go on (a partial shard or a " \
           "checkpoint resumes)"


def report_failed_jobs(snakemake_log: str | Path | Iterable[str | Path], stream: TextIO | None = None,
                       quiet: QuietInterruptions | None = None) -> None:
    """For `onerror:`: print the `ERROR:` blocks (or last line) of every failed job's log on stderr; the jobs a
    signal stopped get one line together, last. With `quiet` (the filter on Snakemake's terminal handler), that
    line replaces Snakemake's closing "did not complete" message when no job failed otherwise."""
    stream = stream or sys.stderr
    stopped: tuple[list[str], list[Path]] = ([], [])
    failed = False
    signalled = signalled_jobs(snakemake_log)
    for path in failed_job_logs(snakemake_log):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        blocks = error_blocks(text)
        if path in signalled and not any(block.startswith((PREFIX, INTERRUPTED)) for block in blocks):
            blocks = [killed_message(*signalled[path], text)]
        if blocks and blocks[-1].startswith(INTERRUPTED):
            stopped[0].append(blocks[-1])
            stopped[1].append(path)
        elif blocks:
            failed = True
            print(f"{path}:", file=stream)
            for block in blocks:
                print(block, file=stream)
    if stopped[0]:
        summary = interrupted_summary(*stopped, failed=failed)
        if quiet is not None and not failed and not quiet.failed:
            quiet.summary = summary  # printed last, in place of Snakemake's closing error
        else:
            print(summary, file=stream)
    elif quiet is not None and quiet.run_signal and not failed and not quiet.failed:
        quiet.summary = (f"{INTERRUPTED}the run was stopped by {quiet.run_signal} once the jobs it was running had "
                         "finished. Nothing failed: run the same command again to go on")
    stream.flush()


def notice_run_sigterm(quiet: QuietInterruptions) -> None:
    """SIGTERM sent to Snakemake's process alone (not its group) makes it finish the running jobs and stop, then
    close with "did not complete" although nothing failed. Chained before Snakemake's own handler (installed
    before `onstart:` runs), this tells `quiet` so that the closing message becomes one `INTERRUPTED:` line."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: object) -> None:
        quiet.run_signal = signal.Signals(signum).name
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


# Snakemake's closing messages when a job did not succeed (its scheduler's and its workflow's).
_CLOSING = ("Exiting because a job execution failed", "At least one job did not complete successfully")


class QuietInterruptions(logging.Filter):
    """A filter for Snakemake's terminal handler: a job that a signal stopped (its log ends with the stage's
    `INTERRUPTED:` line) did not fail, so its "Error in rule" block and the shell's CalledProcessError (status
    130 or 143) are left out; when every job that did not succeed was stopped so, Snakemake's closing "did not
    complete" messages are too, and the last one is replaced by the one-line summary of `report_failed_jobs`.
    Any other failure is shown in full. Reads Snakemake's log records by their `event` (Snakemake 9)."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[str] = []
        self.failed = False
        self.summary: str | None = None
        self.run_signal: str | None = None  # a signal sent to Snakemake alone (see `notice_run_sigterm`)

    def filter(self, record: logging.LogRecord) -> bool:
        event = str(getattr(record, "event", "") or "")
        if event == "job_error":
            logs = [str(log) for log in getattr(record, "log", None) or []]
            lines = [line for log in logs if (line := interruption(log))]
            if logs and lines:
                self.stopped += lines
                return False
            self.failed = True
            return True
        message = str(record.msg or "")
        status = _STATUS.search(message) if event == "error" else None
        # the shell's status for a stage that `cli` ended on SIGINT or SIGTERM, or a shell that the signal ended
        if getattr(record, "exception", None) == "RuleException" and status and \
                _status_signal(status) in ("SIGINT", "SIGTERM"):
            return False
        if (self.stopped or self.run_signal) and not self.failed and any(text in message for text in _CLOSING):
            if self.summary is None or "did not complete" not in message:
                return False
            record.msg, record.args = self.summary, None
        return True


def first_lines(items: Iterable[str], limit: int) -> list[str]:
    """At most `limit` items, with a last line saying how many were left out."""
    items = list(items)
    if len(items) <= limit:
        return items
    return [*items[:limit], f"... and {len(items) - limit} more"]


def installed_quiet(logger: logging.Logger) -> QuietInterruptions | None:
    """The filter that `quiet_interruptions` put on the logger's terminal handlers, if it did."""
    filters = (f for handler in logger.handlers for f in handler.filters)
    return next((f for f in filters if isinstance(f, QuietInterruptions)), None)


def quiet_interruptions(logger: logging.Logger) -> QuietInterruptions:
    """Put a `QuietInterruptions` on the terminal handlers of Snakemake's logger (not its log file)."""
    quiet = QuietInterruptions()
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(quiet)
    return quiet
