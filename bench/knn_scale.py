"""The KNN table at COCO's scale on the CPU: the exact search against the approximate ones, time, peak memory and
recall of the top-7 sets, on synthetic descriptors shaped like real pooled ones and on real pooled descriptors.

    python bench/knn_scale.py                                   # 50k / 200k / 488,510 vectors of 768
    python bench/knn_scale.py --n 50000 --methods exact ivf:16  # a subset
    python bench/knn_scale.py --real results/demo/features/<key>/train.h5   # also real descriptors

Synthetic vectors: a mixture of `--directions` random directions on the sphere around a shared mean direction,
normalised, x = normalise(alpha * m + u_c + sigma * e), with u_c and e of unit expected norm. alpha sets the
cosine of two samples of different directions, alpha² / (alpha² + 1 + sigma²), sigma that of two samples of the
same direction, (alpha² + 1) / (alpha² + 1 + sigma²): the two are fitted to the mean cosine of random pairs and
the median cosine of the 7th neighbour of real pooled descriptors (`--real`, else `--spread`).

Every (size, method) runs in its own process under `timeout`; its peak RSS is that of the search with the
normalised data it holds (float32, 1.5 GB at 488,510 × 768), measured from just before the search. The
ground truth at every size is the exact search of a seeded sample of `--queries` rows against all rows; the
exact search's time above `--exact-full-below` rows is that sample's time scaled to all rows. Writes
bench/knn_scale.csv (committed) with the machine's load (`uptime`) per row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stego_steps.knn import _normalised, default_lists, ivf_search, knn_table  # noqa: E402

COCO_CROPS = 488_510
K = 7
#: The spread of the demo's pooled descriptors (10,000 five-crops of 2,000 scenes, EfficientNet-Lite0, measured
#: with --real on 2026-12-07): mean cosine of random pairs, median cosine of the 7th neighbour.
DEMO_SPREAD = {"pair_mean": 0.519, "nn7_median": 0.942}


def spread(x: np.ndarray, pairs: int = 200_000, queries: int = 2000, seed: int = 0) -> dict[str, float]:
    """Cosine spread of L2-normalised rows: random pairs (mean, 10/50/90 %) and the 1st and 7th neighbour (median)."""
    import faiss

    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(x), (2, pairs))
    cos = np.einsum("ij,ij->i", x[a[a != b]], x[b[a != b]])
    q = rng.choice(len(x), min(queries, len(x)), replace=False)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims = index.search(x[q], K + 1)[0]
    return {"pair_mean": float(cos.mean()), "pair_p10": float(np.quantile(cos, 0.1)),
            "pair_p50": float(np.median(cos)), "pair_p90": float(np.quantile(cos, 0.9)),
            "nn1_median": float(np.median(sims[:, 1])), "nn7_median": float(np.median(sims[:, K]))}


def mixture_parameters(pair_mean: float, nn7_median: float) -> tuple[float, float]:
    """alpha, sigma of the mixture whose between- and within-direction cosines are the two targets."""
    alpha2 = pair_mean / (nn7_median - pair_mean)
    sigma2 = (1 - nn7_median) / (nn7_median - pair_mean)
    return float(np.sqrt(alpha2)), float(np.sqrt(sigma2))


def synthetic(n: int, dim: int, directions: int, alpha: float, sigma: float, seed: int = 0) -> np.ndarray:
    """L2-normalised float32 `[n, dim]` drawn from the mixture (seeded, built in chunks)."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(dim).astype(np.float32)
    mean /= np.linalg.norm(mean)
    centres = rng.standard_normal((directions, dim)).astype(np.float32) / np.sqrt(dim)
    labels = rng.integers(0, directions, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        lab = labels[start : start + 65536]
        noise = rng.standard_normal((lab.size, dim), dtype=np.float32) / np.sqrt(dim)
        out[start : start + lab.size] = alpha * mean + centres[lab] + sigma * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def recall(table: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float:
    """Mean overlap of the top-k sets (columns 1.. of the table, the row itself excluded) with the truth."""
    k = truth.shape[1]
    hits = [len(set(table[q, 1:].tolist()) & set(t.tolist())) for q, t in zip(queries, truth, strict=True)]
    return float(np.mean(hits)) / k


def exact_truth(x: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact top-K of the sampled rows against all rows, self excluded as the table excludes it."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    idx = index.search(x[queries], K + 1)[1]
    return np.array([row[row != q][:K] for q, row in zip(queries, idx, strict=True)])


def hnsw_table(x: np.ndarray, m: int, ef_search: int, ef_construction: int = 40) -> np.ndarray:
    """FAISS HNSW-Flat (inner product) top-(K + 1) of every row (threads as set; the build is not deterministic
    with more than one thread)."""
    import faiss

    index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(x)
    index.hnsw.efSearch = ef_search
    return index.search(x, K + 1)[1]


def load(spec: dict) -> np.ndarray:
    if spec["data"] == "real":
        import h5py

        with h5py.File(spec["path"]) as f:
            return _normalised(np.asarray(f["pooled"][...], dtype=np.float32))
    return synthetic(spec["n"], spec["dim"], spec["directions"], spec["alpha"], spec["sigma"])


def reset_peak() -> None:
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs), so that VmHWM measures what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    """Peak RSS in MB since the last reset (VmHWM), else since the start (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(spec: dict) -> dict:
    """One (data, method) measurement in this process: time, peak RSS, recall against the saved truth."""
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    x = load(spec)
    n = len(x)
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(n, min(spec["queries"], n), replace=False))
    method, setting = spec["method"], spec.get("setting")
    reset_peak()  # the peak RSS from here on: the data held plus the search, not the drawing of the data
    # CPU seconds of all threads beside the wall time: on a loaded machine their ratio says how much of the
    # cores the measurement had (an idle 2-core machine would take about cpu_s / 2).
    start, start_cpu = time.perf_counter(), time.process_time()
    if method == "truth":
        truth = exact_truth(x, queries)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        np.save(spec["truth"], truth)
        scale = n / len(queries)
        return {"seconds": seconds * scale, "cpu_s": cpu * scale, "recall": 1.0, "estimated": len(queries) < n}
    if method == "exact":
        table = knn_table(x, K, use_gpu=False)
    elif method == "ivf":
        table = ivf_search(x, K + 1, probe=int(setting))
    elif method == "hnsw":
        m, ef = (int(v) for v in setting.split("/"))
        table = hnsw_table(x, m, ef)
    else:
        raise ValueError(method)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    truth = np.load(spec["truth"])
    if method != "exact":  # self first, as the library's table; ivf_search/hnsw return raw top-(K + 1)
        from stego_steps.knn import _self_first

        table = _self_first(table)
    return {"seconds": seconds, "cpu_s": cpu, "recall": recall(table, queries, truth), "estimated": False}


def child(spec: dict, timeout_s: int) -> dict:
    """Run `run_one` in a child process (nice, timeout): its result, with its own peak RSS in MB."""
    cmd = ["timeout", str(timeout_s), "nice", sys.executable, __file__, "--one", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"seconds": float("nan"), "recall": float("nan"), "estimated": False, "peak_mb": float("nan"),
                "cpu_s": float("nan"),
                "status": "timeout" if proc.returncode == 124 else f"failed: {proc.stderr.strip()[-300:]}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "status": "ok"}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[50_000, 200_000, COCO_CROPS])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--directions", type=int, default=3000)
    parser.add_argument("--methods", nargs="+", default=["exact", "ivf:8", "ivf:16", "hnsw:32/64"],
                        help="below --exact-full-below rows: exact, ivf:<probe>, hnsw:<M>/<efSearch>")
    parser.add_argument("--large-methods", nargs="+", default=["ivf:16"], help="the methods at larger sizes")
    parser.add_argument("--exact-full-below", type=int, default=60_000,
                        help="run the full exact search below this size; above, its time is the sample's, scaled")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--real", type=Path, nargs="*", default=[], help="feature stores (HDF5 with 'pooled')")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "knn_scale.csv")
    parser.add_argument("--reuse-truth", action="store_true",
                        help="keep the ground truth of an earlier run (same sizes and data) and skip its row")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(json.loads(args.one))
        print(json.dumps({**result, "peak_mb": peak_mb()}))
        return

    target = DEMO_SPREAD
    datasets = []
    for path in args.real:
        import h5py

        with h5py.File(path) as f:
            x = _normalised(np.asarray(f["pooled"][...], dtype=np.float32))
        s = spread(x)
        print(f"real {path}: {x.shape}, spread " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
        target = s
        datasets.append(({"data": "real", "path": str(path)}, f"real {path.parent.parent.parent.name}", len(x)))
    alpha, sigma = mixture_parameters(target["pair_mean"], target["nn7_median"])
    print(f"mixture: {args.directions} directions, alpha {alpha:.3f}, sigma {sigma:.3f} (targets pair mean "
          f"{target['pair_mean']:.3f}, 7th-neighbour median {target['nn7_median']:.3f})", flush=True)
    sample = synthetic(20_000, args.dim, args.directions, alpha, sigma)
    print("synthetic 20k spread: " + ", ".join(f"{k} {v:.3f}" for k, v in spread(sample).items()), flush=True)
    del sample
    for n in args.n:
        datasets.append(({"data": "synthetic", "n": n, "dim": args.dim, "directions": args.directions,
                          "alpha": alpha, "sigma": sigma}, "synthetic", n))

    rows = []
    truth_dir = ROOT / "results" / "bench" / "knn_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    for data, name, n in datasets:
        truth = str(truth_dir / f"{name.replace(' ', '_')}_{n}.npy")
        base = {**data, "threads": args.threads, "queries": args.queries, "truth": truth}
        full_exact = n < args.exact_full_below
        methods = args.methods if full_exact else args.large_methods
        for method, setting in [("truth", None)] + [tuple((m.split(":") + [None])[:2]) for m in methods]:
            if method == "truth" and args.reuse_truth and Path(truth).exists():
                continue
            spec = {**base, "method": method, "setting": setting}
            result = child(spec, args.timeout)
            label = "exact (sample)" if method == "truth" else method
            if method == "truth" and full_exact:
                label = "exact (2k-query sample)"
            row = {"data": name, "n": n, "method": label,
                   "setting": {"ivf": f"lists {default_lists(n)}, probe {setting}", "hnsw": f"M/efSearch {setting}"
                               }.get(method, ""), **result, "threads": args.threads, "uptime": uptime()}
            rows.append(row)
            print(f"{name} n={n} {label} {row['setting']}: {row['seconds']:.1f} s"
                  f"{' (estimated from the sample)' if row['estimated'] else ''}, peak {row['peak_mb']:.0f} MB, "
                  f"recall {row['recall']:.4f} [{row['status']}; {row['uptime']}]", flush=True)
            frame = pd.DataFrame(rows)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(args.out, index=False, float_format="%.4g")
    frame = pd.DataFrame(rows)
    print(f"\nKNN table, k={K}, {args.threads} threads, {os.cpu_count()} CPUs (recall of the top-{K} sets against "
          f"the exact search, {args.queries} sampled queries):")
    print(frame[["data", "n", "method", "setting", "seconds", "peak_mb", "recall", "cpu_s", "status"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
