"""Dense CRF refinement of per-pixel class log-probabilities (the official parameters), run in parallel.

The official evaluation runs the CRF in a `multiprocessing.Pool` that users report deadlocking (issue #16 of
mhamilton723/STEGO). Here the worker pool uses the `spawn` start method, keeps a bounded number of images in
flight, awaits every result with a timeout and turns a dead or stuck worker into a RuntimeError instead of a hang.
The parent computes each softmax (torch) and the workers only run pydensecrf on it, so they never import torch:
a spawned worker starts in a fraction of a second instead of seconds.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Official CRF parameters (official `crf.py`: MAX_ITER, POS_XY_STD/POS_W, Bi_XY_STD/Bi_RGB_STD/Bi_W); the one
#: definition, which `dense_crf`'s defaults and the segment shards' fingerprint read.
CRF_DEFAULTS: dict[str, float] = {
    "iterations": 10,
    "gauss_sxy": 1,
    "gauss_compat": 3,
    "bilat_sxy": 67,
    "bilat_srgb": 3,
    "bilat_compat": 4,
}


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(image: Any, log_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return C-contiguous `(uint8 [H,W,3], float32 [C,H,W])` arrays."""
    image = _as_numpy(image)
    log_probs = _as_numpy(log_probs)
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be [C,H,W], got shape {log_probs.shape}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H,W,3] (RGB, channels last), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.shape[:2] != log_probs.shape[1:]:
        raise ValueError(
            f"image is {image.shape[0]}x{image.shape[1]} but log_probs are {log_probs.shape[1]}x"
            f"{log_probs.shape[2]}: upsample the predictions to the image size first"
        )
    if log_probs.shape[0] < 1:
        raise ValueError("log_probs have no classes")
    return np.ascontiguousarray(image), np.ascontiguousarray(log_probs, dtype=np.float32)


def dense_crf(
    image_uint8_hwc: Any,
    log_probs_chw: Any,
    *,
    iterations: int = int(CRF_DEFAULTS["iterations"]),
    gauss_sxy: float = CRF_DEFAULTS["gauss_sxy"],
    gauss_compat: float = CRF_DEFAULTS["gauss_compat"],
    bilat_sxy: float = CRF_DEFAULTS["bilat_sxy"],
    bilat_srgb: float = CRF_DEFAULTS["bilat_srgb"],
    bilat_compat: float = CRF_DEFAULTS["bilat_compat"],
) -> np.ndarray:
    """Refine class log-probabilities `[C,H,W]` with a fully connected CRF on the image `[H,W,3]` uint8.

    Softmax over classes (torch float32), unary = −log p (`unary_from_softmax`), a Gaussian smoothness
    kernel and a bilateral appearance kernel, mean-field inference. Returns float32 probabilities `[C,H,W]`.
    """
    image, log_probs = _check_inputs(image_uint8_hwc, log_probs_chw)
    return _crf_of_probs(image, softmax(log_probs), iterations=iterations, gauss_sxy=gauss_sxy,
                         gauss_compat=gauss_compat, bilat_sxy=bilat_sxy, bilat_srgb=bilat_srgb,
                         bilat_compat=bilat_compat)


def softmax(log_probs: np.ndarray) -> np.ndarray:
    """torch's float32 softmax over classes of `[C,H,W]`, as in the official code: the CRF amplifies last-bit
    differences of the unary to ~1e-4 in the output, so matching its arithmetic keeps results comparable."""
    import torch

    return torch.softmax(torch.from_numpy(log_probs), dim=0).numpy()


def _crf_of_probs(image: np.ndarray, probs: np.ndarray, *, iterations: int, gauss_sxy: float,
                  gauss_compat: float, bilat_sxy: float, bilat_srgb: float, bilat_compat: float) -> np.ndarray:
    """Mean-field inference from class probabilities `[C,H,W]` (no torch: the pool's workers run this)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilat_sxy, srgb=bilat_srgb, rgbim=image, compat=bilat_compat)
    q = crf.inference(int(iterations))
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _label_dtype(n_classes: int) -> type:
    return np.uint8 if n_classes <= 256 else np.int64


def crf_labels(image: np.ndarray, log_probs: np.ndarray, crf_kwargs: dict[str, Any]) -> np.ndarray:
    """Argmax label map `[H,W]` after the CRF (uint8 when there are at most 256 classes)."""
    probs = dense_crf(image, log_probs, **crf_kwargs)
    return probs.argmax(axis=0).astype(_label_dtype(probs.shape[0]))


def _labels_of_probs(image: np.ndarray, probs: np.ndarray, crf_kwargs: dict[str, Any]) -> np.ndarray:
    """`crf_labels` from the softmax the parent computed: what a pool worker runs."""
    out = _crf_of_probs(image, probs, **{**CRF_DEFAULTS, **crf_kwargs})
    return out.argmax(axis=0).astype(_label_dtype(out.shape[0]))


def refine_labels(
    items: Iterable[tuple[Any, Any]],
    *,
    workers: int,
    timeout_s: float = 600,
    _fn: Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray] | None = None,
    **crf_kwargs: Any,
) -> Iterator[np.ndarray]:
    """Yield the CRF-refined label map of each `(image, log_probs)` pair, in input order.

    `workers <= 1` runs in this process. Otherwise at most `workers` spawned processes run the CRFs, with at
    most `2 * workers` items in flight, so a generator of items is consumed with bounded memory. Each
    result is awaited for at most `timeout_s` seconds; a worker that dies or times out raises RuntimeError
    and the pool is torn down. `_fn` replaces the per-item function (a hook for tests; it must be picklable).
    """
    unknown = set(crf_kwargs) - set(CRF_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown CRF parameters {sorted(unknown)}; known: {sorted(CRF_DEFAULTS)}")
    if workers <= 1:
        for image, log_probs in items:
            yield (_fn or crf_labels)(*_check_inputs(image, log_probs), crf_kwargs)
        return
    # Workers get the softmax (computed here, where torch is loaded) unless a test hook replaces the function.
    fn, prepare = (_fn, None) if _fn else (_labels_of_probs, softmax)

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    )
    pending: deque[tuple[int, Future]] = deque()
    clean = False
    try:
        for index, (image, log_probs) in enumerate(items):
            image, log_probs = _check_inputs(image, log_probs)
            pending.append((index, pool.submit(fn, image, prepare(log_probs) if prepare else log_probs, crf_kwargs)))
            if len(pending) >= 2 * workers:
                yield _await(*pending.popleft(), timeout_s=timeout_s, workers=workers)
        while pending:
            yield _await(*pending.popleft(), timeout_s=timeout_s, workers=workers)
        clean = True
    finally:
        if clean:
            pool.shutdown(wait=True)
        else:
            _tear_down(pool)


def _init_worker() -> None:
    """One thread per worker process: the parallelism comes from the processes. Workers ignore Ctrl-C (it
    reaches the whole process group): the parent stops them, and each would print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


def _await(index: int, future: Future, *, timeout_s: float, workers: int) -> np.ndarray:
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise RuntimeError(
            f"CRF of item {index} did not finish within {timeout_s:g} s with {workers} workers; "
            "raise the CRF timeout or use fewer CRF workers"
        ) from None
    except BrokenProcessPool as exc:
        raise RuntimeError(
            f"a CRF worker process died while item {index} was pending (out of memory?); "
            f"use fewer CRF workers (now {workers}) or a larger timeout"
        ) from exc


def _tear_down(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for stuck workers: cancel queued work, then kill the processes."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.kill()
    for proc in processes:
        proc.join(timeout=5)
