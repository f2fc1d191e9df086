"""The project's own error type and how a stage's CLI reports it.

A `UserError` is a problem the user can fix (bad input file, bad setting): its message names the file or key,
says what is wrong and how to fix it. A stage's `main()` run through `cli()` prints such an error as one block
that starts with `ERROR:` on stderr (no traceback) and exits with status 2. Snakemake redirects stderr into the
job's log, and the workflow's `onerror:` handler prints the `ERROR:` blocks of the failed jobs' logs on the
terminal (see `error_blocks`). Any other exception is a bug and keeps its traceback.

Ctrl-C (SIGINT) and SIGTERM (`timeout`, a scheduler's cancel, `kill`) end a stage with one line,
`INTERRUPTED: <stage> stopped by <signal>`, and the shell's status for that signal (128 + its number), no
traceback; SIGTERM unwinds like Ctrl-C, so open files are closed and partial files stay resumable.
"""

from __future__ import annotations

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


def failed_job_logs(snakemake_log: str | Path | Iterable[str | Path]) -> list[Path]:
    """The log files that Snakemake's own log (one path, or a list of them) names for its failed jobs
    (`log: <path> (check log file(s) for error details)`)."""
    logs = [snakemake_log] if isinstance(snakemake_log, str | Path) else list(snakemake_log)
    text = ""
    for path in logs:
        try:
            text += Path(path).read_text(errors="replace") + "\n"
        except OSError:
            continue
    paths: list[Path] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("log:") and "(check log file" in stripped:
            for item in stripped[len("log:"):].split("(check log file")[0].split(","):
                if item.strip() and Path(item.strip()) not in paths:
                    paths.append(Path(item.strip()))
    return paths


def report_failed_jobs(snakemake_log: str | Path | Iterable[str | Path], stream: TextIO | None = None) -> None:
    """For `onerror:`: print the `ERROR:` blocks (or last line) of every failed job's log on stderr."""
    stream = stream or sys.stderr
    for path in failed_job_logs(snakemake_log):
        try:
            blocks = error_blocks(path.read_text(errors="replace"))
        except OSError:
            continue
        if blocks:
            print(f"{path}:", file=stream)
            for block in blocks:
                print(block, file=stream)
    stream.flush()


def first_lines(items: Iterable[str], limit: int) -> list[str]:
    """At most `limit` items, with a last line saying how many were left out."""
    items = list(items)
    if len(items) <= limit:
        return items
    return [*items[:limit], f"... and {len(items) - limit} more"]
