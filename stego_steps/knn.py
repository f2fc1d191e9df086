"""The nearest-neighbour table of the pooled image descriptors, cosine top-k over the same split, self first
(the `knn` stage, `stego_steps.stages.knn`, writes it).

Exact search (`knn_table`) with a FAISS inner-product index on L2-normalised float32 vectors: with `--device
cpu` on the CPU, otherwise on the GPU when there is one and the FAISS build supports it. Row i of the table is
`[i, n1, ..., nk]`: the sample itself, then its k most similar other samples in descending cosine
similarity. Training draws the positive uniformly from columns 1..k.

The exact search's time grows with the square of the samples (COCO-Stuff's 488,510 crops: hours on 2 cores).
`neighbour_table` chooses by the config's `knn:` between it and an approximate inverted-file search
(`ivf_search`, on the CPU), whose table has the same form, order and self-first handling.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from stego_steps.cli import progress
from stego_steps.errors import UserError

log = logging.getLogger(__name__)

QUERY_CHUNK = 16384  # rows searched per FAISS call (bounds the distance buffers, drives the progress bar)


NORM_CHUNK = 65536  # rows normalised at a time in float64 (COCO's 488k × 768 would need 3 GB at once)


def _normalised(pooled: Any) -> np.ndarray:
    if hasattr(pooled, "detach"):  # torch tensor
        pooled = pooled.detach().cpu().numpy()
    pooled = np.asarray(pooled)
    if pooled.ndim != 2:
        raise ValueError(f"pooled features must be [N, C], got shape {pooled.shape}")
    out = np.empty(pooled.shape, dtype=np.float32)
    for start in range(0, len(pooled), NORM_CHUNK):
        x = np.asarray(pooled[start : start + NORM_CHUNK], dtype=np.float64)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~np.isfinite(np.asarray(pooled, dtype=np.float64)).all(axis=1))
            raise UserError(f"pooled features of row {bad[0]} (and {bad.size - 1} more) contain NaN or inf")
        norms = np.linalg.norm(x, axis=1)
        if (norms == 0).any():
            bad = np.flatnonzero(np.linalg.norm(np.asarray(pooled, dtype=np.float64), axis=1) == 0)
            raise UserError(f"pooled features of row {bad[0]} (and {bad.size - 1} more) are all zero")
        out[start : start + len(x)] = x / norms[:, None]
    return out


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


# ----- the approximate search (an inverted file of k-means lists), and the choice between the two

METHODS = ("auto", "exact", "ivf")
SIMS_BLOCK = 1 << 24  # entries of one query-by-list similarity block (64 MB of float32)
TOP_ROWS_PER_THREAD = 256  # below twice this, a block's top-k is not worth splitting between threads


def search_defaults() -> dict[str, Any]:
    """The config's `knn:` defaults (their one home is the config schema)."""
    from stego_steps.config import load_schema

    return load_schema()["properties"]["knn"]["default"]


def search_settings(search: dict[str, Any] | None) -> dict[str, Any]:
    """The settings that decide the table: nothing for the exact search (its key is the one before the
    approximate search existed), the IVF settings for `ivf`, and the threshold too for `auto`."""
    defaults = search_defaults()
    s = {**defaults, **(search or {})}
    s["ivf"] = {**defaults["ivf"], **(s.get("ivf") or {})}
    if s["method"] not in METHODS:
        raise UserError(f"knn.method: unknown method '{s['method']}'; known: {', '.join(METHODS)}")
    if s["method"] == "exact":
        return {}
    out = {"method": s["method"], "ivf": s["ivf"]}
    if s["method"] == "auto":
        out["exact_below"] = s["exact_below"]
    return out


def search_argument(search: dict[str, Any] | None) -> dict[str, Any]:
    """What the knn stage's `--search` gets: the deciding settings, `{"method": "exact"}` for the exact search."""
    return search_settings(search) or {"method": "exact"}


def chosen_method(search: dict[str, Any] | None, n: int) -> str:
    """`exact` or `ivf` for `n` samples."""
    s = search_settings(search)
    method = s.get("method", "exact")
    if method == "auto":
        return "exact" if n < s["exact_below"] else "ivf"
    return method


def default_lists(n: int) -> int:
    """K-means lists for `n` samples: about √n (a list holds about √n samples: few, large matrix products)."""
    return max(1, int(round(np.sqrt(n))))


def _kmeans_centroids(x: np.ndarray, lists: int, train_points: int, iterations: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids `[lists, C]` on a seeded sample of the rows (FAISS, fixed seed)."""
    import faiss

    rng = np.random.default_rng(seed)
    sample = x if len(x) <= train_points else x[np.sort(rng.choice(len(x), train_points, replace=False))]
    km = faiss.Kmeans(x.shape[1], lists, niter=iterations, seed=seed, spherical=True,
                      max_points_per_centroid=max(1, len(sample) // lists + 1), min_points_per_centroid=1)
    km.train(np.ascontiguousarray(sample))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _top(sims: np.ndarray, k: int, pool: ThreadPoolExecutor | None = None,
         threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row and their columns, in the order `_merge` keeps. With `pool`, the rows
    are split between `threads` of its threads (NumPy's partition releases the GIL; each row's result is the
    same however the rows are split)."""
    if pool is not None and threads > 1 and len(sims) >= 2 * TOP_ROWS_PER_THREAD:
        done = list(pool.map(lambda part: _top(part, k), np.array_split(sims, threads)))
        return np.concatenate([d for d, _ in done]), np.concatenate([c for _, c in done])
    m = sims.shape[1]
    if k < m:
        cols = np.argpartition(sims, m - k, axis=1)[:, m - k :]
    else:
        cols = np.broadcast_to(np.arange(m), sims.shape)
    d = np.take_along_axis(sims, cols, axis=1)
    order = np.lexsort((-cols, -d), axis=1)
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(cols, order, axis=1)


def _merge(best_d: np.ndarray, best_i: np.ndarray, d: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top `width` of two candidate sets per row: higher similarity first, equal similarities by higher index
    (the order of FAISS's exact search), so the result does not depend on the order lists are visited."""
    width = best_d.shape[1]
    cd, ci = np.concatenate([best_d, d], axis=1), np.concatenate([best_i, i], axis=1)
    order = np.lexsort((-ci, -cd), axis=1)[:, :width]
    return np.take_along_axis(cd, order, axis=1), np.take_along_axis(ci, order, axis=1)


def ivf_search(x: np.ndarray, k: int, *, lists: int | None = None, probe: int = 16, train_points: int = 65_536,
               iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Approximate top-k (self included) of L2-normalised rows `x`: indices `[N, k]`, descending similarity.

    An inverted file (IVF-Flat): spherical k-means splits the rows into `lists` lists (each row in the list of
    its nearest centroid), and each row is compared exactly with the rows of its `probe` nearest lists. The
    search goes list by list: all queries that probe one list against its rows in one matrix product, which keeps
    the list in cache and runs at the BLAS rate of the exact search. Deterministic for a fixed thread count
    (seeded sample and k-means). A row whose probed lists hold fewer than k rows is searched exactly.
    """
    import faiss

    n, _ = x.shape
    lists = min(lists or default_lists(n), n)
    probe = min(probe, lists)
    centroids = _kmeans_centroids(x, lists, train_points, iterations, seed)
    quantizer = faiss.IndexFlatIP(x.shape[1])
    quantizer.add(centroids)
    probes = np.empty((n, probe), dtype=np.int64)
    for start in range(0, n, QUERY_CHUNK):
        probes[start : start + QUERY_CHUNK] = quantizer.search(x[start : start + QUERY_CHUNK], probe)[1]
    members_of = np.argsort(probes[:, 0], kind="stable")  # rows by list, ascending index within a list
    member_bounds = np.searchsorted(probes[:, 0], np.arange(lists + 1), sorter=members_of)
    flat = probes.ravel()
    by_list = np.argsort(flat, kind="stable")
    queries_of = by_list // probe  # queries by the list they probe, ascending index within a list
    query_bounds = np.searchsorted(flat, np.arange(lists + 1), sorter=by_list)
    best_d = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    threads = max(1, faiss.omp_get_max_threads())  # the stage's thread count (it sets FAISS's)
    with ThreadPoolExecutor(threads) as pool:
        for lst in progress(range(lists), desc="knn ivf", unit="list"):
            members = members_of[member_bounds[lst] : member_bounds[lst + 1]]
            queries = queries_of[query_bounds[lst] : query_bounds[lst + 1]]
            if members.size == 0 or queries.size == 0:
                continue
            block = x[members].T
            step = max(1, SIMS_BLOCK // members.size)  # bounds the similarity block of a long list
            for start in range(0, queries.size, step):
                q = queries[start : start + step]
                d, i = _top(x[q] @ block, min(k, members.size), pool, threads)
                i = members[i]
                if i.shape[1] < k:  # a list shorter than k: pad so that the merge keeps k columns
                    pad = k - i.shape[1]
                    d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
                    i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
                best_d[q], best_i[q] = _merge(best_d[q], best_i[q], d, i)
    short = np.flatnonzero((best_i < 0).any(axis=1))
    if short.size:
        log.debug("%d rows had fewer than %d candidates in their lists: searched exactly", short.size, k)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        best_i[short] = index.search(x[short], k)[1]
    return best_i


def neighbour_table(pooled: Any, k: int, search: dict[str, Any] | None = None, *, use_gpu: bool | None = None,
                    gpu: int = 0) -> np.ndarray:
    """The KNN table `[N, 1 + k]` by the search that `search` (the config's `knn:`) chooses for N rows: the exact
    one (`knn_table`) or the IVF search, with the same checks, the same ordering and self in column 0."""
    n = len(pooled)
    method = chosen_method(search, n)
    if method == "exact":
        return knn_table(pooled, k, use_gpu=use_gpu, gpu=gpu)
    x = _normalised(pooled)
    if n < 2:
        raise UserError(f"need at least 2 samples for a nearest-neighbour table, got {n}")
    if not 1 <= k <= n - 1:
        raise UserError(f"k={k} neighbours requested but there are {n} samples: use 1 <= k <= {n - 1}")
    settings = search_settings(search)["ivf"]
    log.info("approximate search (ivf %s) of %d rows", settings, n)
    return _self_first(ivf_search(x, k + 1, **settings))
