"""The stage CLIs' common parts: argument parsing, logging to the rule's log file, progress bars."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stego_steps.devices import select_device

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
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the job, for worker processes (data loading, CRF)")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch's (and FAISS's) compute threads. Fixed by the config rather than taken from the "
                             "job's share of --cores: CPU kernels round differently with other thread counts, and "
                             "a result must not depend on how many cores a run was given")
    parser.add_argument("--verbose", action="store_true")
    if device:
        parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    return parser


def parse_stage_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a stage's CLI, set up logging, fix torch's compute threads and resolve `--device`.

    Stages without a model do not import torch (it takes seconds): when torch is not imported yet, its thread
    count is set through OMP_NUM_THREADS, which torch reads when it is imported."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if "torch" in sys.modules or hasattr(args, "device"):
        import torch

        torch.set_num_threads(args.torch_threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.torch_threads)
    if hasattr(args, "device"):
        args.device = select_device(args.device)
    return args
