"""Choosing the device a stage runs its model on, and spreading concurrent jobs over the GPUs of a machine."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from stego_steps.errors import UserError

log = logging.getLogger("stego_steps")


def select_device(requested: str = "auto") -> str:
    """'auto' takes a GPU when torch sees one (a free one on multi-GPU machines); 'cuda' without a GPU is an
    error, not a silent fallback."""
    import torch

    if requested == "auto":
        return pick_gpu() if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{requested}' requested but torch sees no GPU; set device: auto or cpu")
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
