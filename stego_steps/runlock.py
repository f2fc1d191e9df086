"""One workflow at a time on a results folder.

Snakemake's own lock covers only the outputs two invocations share, so two invocations with different
targets on one folder run side by side (and both write the shared feature stores, the logs and
`.snakemake/`), and `snakemake --unlock` removes that lock even while a workflow runs. The workflow therefore
takes its own lock when it starts executing jobs: a file holding the pid and host of the Snakemake process.
A lock whose process is alive refuses another run and `--unlock`; a lock whose process died (killed,
crashed) is stale and removed.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from stego_steps.errors import UserError

LOCK = Path(".snakemake") / "stego_steps.lock"


def started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where that cannot be read.
    Process ids are reused (32,768 of them by default on Linux), so a lock names its holder by both."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before it may hold spaces


def alive(pid: int, start: str | None = None) -> bool:
    """Whether the process with this id (and, when known, this start time) exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return start is None or started(pid) in (None, start)


def holder(path: str | os.PathLike = LOCK) -> dict | None:
    """{pid, host, command, start} of the lock at `path`, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return {"pid": int(data["pid"]), "host": str(data["host"]), "command": str(data.get("command", "")),
                "start": data.get("start")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_holder(path: str | os.PathLike = LOCK) -> dict | None:
    """The lock's holder when it is a live process (or one on another host, which cannot be checked from
    here); a stale lock (dead process on this host, or unreadable file) is removed and None returned."""
    who = holder(path)
    if who is not None and (who["host"] != socket.gethostname() or alive(who["pid"], who["start"])):
        return who
    Path(path).unlink(missing_ok=True)
    return None


def busy_message(who: dict, path: str | os.PathLike, doing: str) -> str:
    where = "" if who["host"] == socket.gethostname() else f" on host {who['host']}"
    return (f"{doing}: another workflow is running on this folder (Snakemake process {who['pid']}{where}"
            + (f": {who['command']}" if who["command"] else "") + f"; lock {path}). Wait for it to finish, or "
            f"stop it (kill {who['pid']}, or Ctrl-C in its terminal); if that process is gone, delete {path}")


def acquire(path: str | os.PathLike = LOCK, pid: int | None = None, command: str = "") -> None:
    """Take the lock for process `pid` (default: this one), or raise UserError naming the live holder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = pid or os.getpid()
    record = json.dumps({"pid": pid, "host": socket.gethostname(), "command": command, "start": started(pid)})
    for _ in range(3):  # a stale lock is removed and the creation retried
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            who = live_holder(path)
            if who is not None:
                raise UserError(busy_message(who, path, "this run is refused")) from None
            continue
        with os.fdopen(fd, "w") as f:
            f.write(record + "\n")
        return
    raise UserError(f"could not take the lock {path}: it keeps being re-created; is another workflow starting?")


def release(path: str | os.PathLike = LOCK, pid: int | None = None) -> None:
    """Remove the lock if process `pid` (default: this one) holds it."""
    who = holder(path)
    if who is not None and who["pid"] == (pid or os.getpid()) and who["host"] == socket.gethostname():
        Path(path).unlink(missing_ok=True)


def check_unlock(path: str | os.PathLike = LOCK) -> None:
    """For `snakemake --unlock`: refuse while the workflow that holds the lock is alive."""
    who = live_holder(path)
    if who is not None:
        raise UserError(busy_message(who, path, "--unlock is refused"))
