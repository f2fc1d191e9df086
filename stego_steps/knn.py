"""The nearest-neighbour table of the pooled image descriptors, cosine top-k over the same split, self first
(the `knn` stage, `stego_steps.stages.knn`, writes it).

Exact search with a FAISS inner-product index on L2-normalised float32 vectors: with `--device cpu` on the
CPU, otherwise on the GPU when there is one and the FAISS build supports it. Row i of the table is
`[i, n1, ..., nk]`: the sample itself, then its k most similar other samples in descending cosine
similarity. Training draws the positive uniformly from columns 1..k.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stego_steps.cli import progress
from stego_steps.errors import UserError

log = logging.getLogger(__name__)

QUERY_CHUNK = 16384  # rows searched per FAISS call (bounds the distance buffers, drives the progress bar)


def _normalised(pooled: Any) -> np.ndarray:
    if hasattr(pooled, "detach"):  # torch tensor
        pooled = pooled.detach().cpu().numpy()
    x = np.asarray(pooled, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"pooled features must be [N, C], got shape {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise UserError(f"pooled features of row {bad[0]} (and {bad.size - 1} more) contain NaN or inf")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        bad = np.flatnonzero(norms == 0)
        raise UserError(f"pooled features of row {bad[0]} (and {bad.size - 1} more) are all zero")
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def _want_gpu(use_gpu: bool | None) -> bool:
    import faiss

    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is None:
        return n_gpus > 0 and hasattr(faiss, "StandardGpuResources")
    if use_gpu and (n_gpus == 0 or not hasattr(faiss, "StandardGpuResources")):
        raise UserError("use_gpu=True but this FAISS build sees no GPU (faiss-cpu?); use the CPU instead")
    return bool(use_gpu)


def _self_first(table: np.ndarray) -> np.ndarray:
    """Put row i's own index in column 0, keeping the others' order; if it is missing, drop the last one.

    Needed when an identical duplicate (same similarity, 1) is ranked before the sample itself.
    """
    n, width = table.shape
    rows = np.flatnonzero(table[:, 0] != np.arange(n))
    for i in rows:
        others = table[i][table[i] != i][: width - 1]
        table[i, 0] = i
        table[i, 1:] = others
    if rows.size:
        log.debug("moved self to column 0 in %d rows (duplicates or ties)", rows.size)
    return table


def knn_table(pooled: Any, k: int, *, use_gpu: bool | None = None, gpu: int = 0) -> np.ndarray:
    """Indices `[N, 1 + k]` int64 of the cosine nearest neighbours of each row of `pooled` `[N, C]`.

    Column 0 is always the row itself, columns 1..k its k most similar other rows (descending similarity).
    `use_gpu=None` uses a FAISS GPU (number `gpu`) when there is one.
    """
    import faiss

    x = _normalised(pooled)
    n, dim = x.shape
    if n < 2:
        raise UserError(f"need at least 2 samples for a nearest-neighbour table, got {n}")
    if not 1 <= k <= n - 1:
        raise UserError(f"k={k} neighbours requested but there are {n} samples: use 1 <= k <= {n - 1} (lower "
                         "knn_k in the preset, or add training images)")

    index: Any = faiss.IndexFlatIP(dim)
    if _want_gpu(use_gpu):
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, gpu, index)
        log.info("FAISS search on the GPU")
    index.add(x)
    table = np.empty((n, k + 1), dtype=np.int64)
    for start in progress(range(0, n, QUERY_CHUNK), desc="knn", unit="chunk"):
        stop = min(start + QUERY_CHUNK, n)
        _, idx = index.search(x[start:stop], k + 1)
        table[start:stop] = idx
    if (table < 0).any():
        raise RuntimeError("FAISS returned missing neighbours (-1); the index is incomplete")
    return _self_first(table)
