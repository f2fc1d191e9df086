"""The stage CLIs' common parts: argument parsing, logging to the rule's log file, progress bars."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stego_steps.devices import select_device


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr (Snakemake redirects it into the rule's log file)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def progress(iterable: Iterable, **kwargs: Any) -> Iterable:
    """tqdm that stays quiet when stderr is not a terminal (log files stay readable)."""
    return tqdm(iterable, disable=not sys.stderr.isatty(), **kwargs)


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
    """Parse a stage's CLI, set up logging, fix torch's compute threads and resolve `--device`."""
    import torch

    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.torch_threads)
    if hasattr(args, "device"):
        args.device = select_device(args.device)
    return args
