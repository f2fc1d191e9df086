"""Shared plumbing for the stage CLIs: atomic outputs, logging, progress bars, JSON settings."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

log = logging.getLogger("stego_steps")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr (Snakemake redirects it into the rule's log file)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def progress(iterable: Iterable, *, every_fraction: float = 0.05, every_s: float = 60.0, **kwargs: Any
             ) -> Iterable:
    """A tqdm bar on a terminal; elsewhere (a log file under a scheduler) one log line with count, rate and
    time left whenever another `every_fraction` of the total is done or `every_s` seconds have passed."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return _progress_lines(iterable, every_fraction, every_s, kwargs.get("desc", "progress"),
                           kwargs.get("total"), kwargs.get("initial", 0))


def _progress_lines(iterable: Iterable, every_fraction: float, every_s: float, desc: str, total: int | None,
                    initial: int) -> Iterator:
    if total is None and hasattr(iterable, "__len__"):
        total = initial + len(iterable)  # type: ignore[arg-type]
    step = max(int(total * every_fraction), 1) if total else None
    start = last = time.monotonic()
    done = initial
    next_count = done + step if step else None
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if (next_count is not None and done >= next_count) or now - last >= every_s or done == total:
            rate = (done - initial) / max(now - start, 1e-9)
            if total:
                left = (total - done) / rate if rate > 0 else float("inf")
                log.info("%s: %d/%d (%.0f%%), %.2f it/s, %s left", desc, done, total, 100.0 * done / total, rate,
                         _duration(left))
                next_count = done + step
            else:
                log.info("%s: %d done, %.2f it/s", desc, done, rate)
            last = now


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A killed or failing writer therefore never leaves a truncated artifact under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; artifacts get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def write_csv(path: str | os.PathLike, frame: Any) -> None:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def fingerprint(*parts: Any) -> str:
    """A digest of what an interrupted run was computing, so that a resume never mixes two inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def settings_arg(text: str) -> dict:
    """argparse type for `--settings '{json}'` or `--settings @file.json`."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def base_parser(description: str, *, device: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and workers")
    parser.add_argument("--verbose", action="store_true")
    if device:
        parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    return parser


def parse_stage_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a stage's CLI, set up logging, cap torch at the job's threads and resolve `--device`."""
    import torch

    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    if hasattr(args, "device"):
        args.device = select_device(args.device)
    return args


def select_device(requested: str = "auto") -> str:
    """'auto' takes a GPU when torch sees one (a free one on multi-GPU machines); 'cuda' without a GPU is an
    error, not a silent fallback."""
    import torch

    if requested == "auto":
        return pick_gpu() if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{requested}' requested but torch sees no GPU; set device: auto or cpu")
    return pick_gpu() if requested == "cuda" else requested


# Locks on the GPUs this process took; held until it exits so that concurrent jobs spread over the GPUs.
_gpu_locks: list = []


def pick_gpu(lock_dir: str | os.PathLike | None = None) -> str:
    """A GPU for this job on a machine with several: Snakemake counts GPUs but assigns no ids.

    Schedulers that set CUDA_VISIBLE_DEVICES (SLURM) leave one visible GPU, taken as is. Otherwise take the GPU
    with the most free memory that no other stego job holds (an flock per GPU in the temp folder); when all
    are held, share the one with the most free memory.
    """
    import fcntl

    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return "cuda:0"
    by_free_memory = sorted(range(count), key=lambda i: -torch.cuda.mem_get_info(i)[0])
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    for i in by_free_memory:
        handle = open(lock_dir / f"stego-steps-gpu{i}.lock", "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _gpu_locks.append(handle)
        log.info("using GPU %d of %d", i, count)
        return f"cuda:{i}"
    return f"cuda:{by_free_memory[0]}"
