"""What each rule's jobs use (Snakemake `threads:` and `resources:`): whether the rule runs its model on the
device, the threads it computes with and what extra threads are for, its memory as a function of its inputs and
workers, and its run time. The rules (workflow/rules/*.smk, through stego_steps.job_sizes), the profiles and
the docs' table read this one table; tests/test_resources.py checks the profiles and docs against it.

Threads. Model rules compute with the config's `torch_threads` (fixed, so that a result does not depend on the
node): that is their `threads`, and a profile must not hand them more CPUs, which they would leave idle. Extra
threads are for workers only: `extract`'s image-loading processes (beside the compute threads), the dense-CRF
worker processes of `segment` and of `calibrate`'s candidate selection (one per thread), `prepare`'s file-checking
threads. Raise those with `--set-threads` (the SLURM profile does).

Memory. Each CRF worker is a spawned process; it imported torch until 2026-12-07 (1.02 GB peak RSS for the
imports and one 320×320 image of 27 classes, `/usr/bin/time -v`, torch 2.14 CPU/CUDA build; about 0.45 GB of it
shared library pages) and no longer does, so `WORKER_MB["crf"]` per worker is an upper bound. Rules that hold
the training store in memory ask for 1.2 × the store (up to the memory budget, beyond which they stream).
Every amount grows with each retry (`attempt`).

Pure data and pure functions: no Snakemake, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a worker of each kind costs in MB. `crf`: measured, see above (rounded up). `loader`: a forked DataLoader
#: process (shares its parent's pages; decoding buffers and two prefetched batches), an estimate. `io`: a thread.
#: `render`: a spawned process drawing demo scenes (numpy, SciPy, PIL; the whole serial job peaked at 103 MB).
WORKER_MB: dict[str, int] = {"crf": 1000, "loader": 500, "io": 0, "render": 300}
#: Memory beyond 1.2 × the training store for the rules that hold it in memory.
STORE_FACTOR = 1.2
#: knn holds the pooled descriptors about four times (the float32 read, a float64 copy while normalising, the
#: normalised float32 array, FAISS's own copy).
POOLED_FACTOR = 4


@dataclass(frozen=True)
class Rule:
    """One rule's needs.

    `device`: the rule puts its model's tensors on the config's device (`--device`), so it asks for a GPU when
    that is one. `compute`: its compute threads, "torch" for the config's `torch_threads`, else a number.
    `workers`: what threads beyond `compute` are for ("loader", "crf", "io"), or None; `alongside`: the workers
    run beside the compute threads (threads = compute + workers) rather than after them or instead of them
    (threads = max(compute, workers), one worker per thread); `default_workers`: the workers of the rule's own
    `threads`. `mem_mb`: base memory; `holds_store`: plus `STORE_FACTOR` × the training store (up to the budget);
    `holds_pooled`: plus `POOLED_FACTOR` × the pooled descriptors. `runtime_min`: minutes (extract and segment
    scale with their shard, see `extract_runtime`, `segment_runtime`). `note`: for the README's table."""

    device: bool = False
    compute: str | int = 1
    workers: str | None = None
    alongside: bool = False
    default_workers: int = 0
    mem_mb: int = 1000
    holds_store: bool = False
    holds_pooled: bool = False
    runtime_min: int = 10
    note: str = ""


def _model(mem_mb: int, runtime_min: int, **kwargs: object) -> Rule:
    return Rule(device=True, compute="torch", mem_mb=mem_mb, runtime_min=runtime_min, **kwargs)  # type: ignore[arg-type]


PROBE_NOTE = "beyond the store, holds the codes in float32 and the labels of the training set, up to 2 GB each"

#: Every rule of the workflow that runs as a job (target-only rules such as `all`, `tables`, `figures` run nothing).
RULES: dict[str, Rule] = {
    # data
    "download": Rule(mem_mb=500, runtime_min=24 * 60),
    "unpack_resource": Rule(mem_mb=1000, runtime_min=6 * 60),
    "resource_by_hand": Rule(mem_mb=500),
    "render_demo": Rule(compute=0, workers="render", default_workers=2, mem_mb=2000, runtime_min=60,
                        note="draws the scenes in one process per thread"),
    "curated_list": Rule(mem_mb=500),
    "prepare": Rule(compute=0, workers="io", default_workers=4, mem_mb=2000, runtime_min=60,
                    note="reads every image and label once, one file per thread"),
    "plan": Rule(mem_mb=1000),
    # features
    "extract": _model(8000, 30, workers="loader", alongside=True,
                      note="loader processes decode and resize images beside the model"),
    "gather_features": Rule(mem_mb=1000),
    "knn": _model(4000, 60, holds_pooled=True,
                  note="FAISS searches on the GPU when its build supports it (environment.yml's faiss-gpu)"),
    # training and probes
    "calibrate": _model(4000, 180, workers="crf", holds_store=True,
                        note="trains short heads, then runs the CRF of its candidate selection in one process per "
                             "thread"),
    "train": _model(4000, 720, holds_store=True),
    "cluster": _model(4000, 240, holds_store=True),
    "linear_probe": _model(8000, 240, holds_store=True, note=PROBE_NOTE),
    "backbone_kmeans": _model(4000, 240, holds_store=True),
    "backbone_linear": _model(8000, 240, holds_store=True, note=PROBE_NOTE),
    "import_checkpoint": Rule(mem_mb=4000, runtime_min=30, note="converts a checkpoint on the CPU"),
    # evaluation
    "predict": _model(8000, 120),
    "segment": Rule(compute=0, workers="crf", default_workers=2, mem_mb=3000, runtime_min=30,
                    note="one CRF process per thread; the main process only feeds them"),
    # evaluate streams the label maps 64 images at a time: 322 MB peak at 320² whatever the split's size
    # (bench/evaluate_memory.py); a 640² evaluation has four times the per-block arrays.
    "evaluate": Rule(mem_mb=2000, runtime_min=60),
    "evaluate_unlabelled": Rule(mem_mb=4000, runtime_min=30),
    "dataset_table": Rule(mem_mb=100, runtime_min=5),
    "table_main": Rule(mem_mb=1000),
    "table_ablation": Rule(mem_mb=1000),
    # pictures and new images
    "figure_panels": Rule(mem_mb=2000, runtime_min=15),
    "figure_metrics": Rule(mem_mb=2000, runtime_min=15),
    "figure_training": Rule(mem_mb=1000),
    "figure_correlations": Rule(mem_mb=4000, runtime_min=30, holds_store=True),
    "segment_images": _model(8000, 240, note="its CRF runs in the job's own process"),
}

#: Rules that run their model on the device: with a GPU device each asks for `gpu: 1` (and under the SLURM
#: profile goes to the GPU partition).
DEVICE_RULES: tuple[str, ...] = tuple(name for name, rule in RULES.items() if rule.device)
#: Rules with workers: the only ones whose `threads` a profile may raise.
WORKER_RULES: tuple[str, ...] = tuple(name for name, rule in RULES.items() if rule.workers)


def _rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"rule '{name}' is not in stego_steps.resources.RULES; add its needs there") from None


def compute_threads(name: str, torch_threads: int) -> int:
    """The threads a rule's job computes with."""
    compute = _rule(name).compute
    return torch_threads if compute == "torch" else int(compute)


def threads(name: str, torch_threads: int, workers: int | None = None) -> int:
    """The `threads` a rule's job asks for: its compute threads plus its workers (`workers`, or the rule's
    default), or one worker per thread where workers and compute do not overlap."""
    rule = _rule(name)
    w = rule.default_workers if workers is None else workers
    if not rule.workers:
        w = 0
    c = compute_threads(name, torch_threads)
    return max(c + w if rule.alongside else max(c, w), 1)


def workers(name: str, job_threads: int, torch_threads: int) -> int:
    """The workers a job with `job_threads` threads runs (what `--threads` means to the stage): the threads left
    beside the compute threads, or all of them."""
    rule = _rule(name)
    if not rule.workers:
        return 0
    if rule.alongside:
        return max(job_threads - compute_threads(name, torch_threads), 0)
    return job_threads


def uses_gpu(device: str, gpu_visible: bool) -> bool:
    """Whether the device rules run on a GPU: `cuda`, or `auto` where a GPU is visible (decided where the
    workflow starts, e.g. nvidia-smi on this machine)."""
    return device.startswith("cuda") or (device == "auto" and gpu_visible)


def gpu(name: str, on_gpu: bool) -> int:
    """The `gpu` resource a rule's job asks for."""
    return int(_rule(name).device and on_gpu)


def mem_mb(name: str, *, job_threads: int, torch_threads: int, store_mb: float = 0.0, pooled_mb: float = 0.0,
           budget_mb: float = float("inf"), attempt: int = 1) -> int:
    """MB for a rule's job: the base, each worker's share, the training store held in memory (up to
    `budget_mb`) and the pooled descriptors, times the attempt."""
    rule = _rule(name)
    total = float(rule.mem_mb)
    if rule.workers:
        total += WORKER_MB[rule.workers] * workers(name, job_threads, torch_threads)
    if rule.holds_store:
        total += STORE_FACTOR * min(store_mb, budget_mb)
    if rule.holds_pooled:
        total += POOLED_FACTOR * pooled_mb
    return int(total) * attempt


def runtime(name: str, attempt: int = 1) -> int:
    """Minutes for a rule's job (for extract and segment, the start-up part: see below), times the attempt."""
    return _rule(name).runtime_min * attempt


def extract_runtime(samples_per_shard: float, passes: int, attempt: int = 1) -> int:
    """Minutes for one extraction shard: start-up plus a slow GPU's pace (20 images/s, flips counted as passes)."""
    return int(runtime("extract") + samples_per_shard * passes / 20 / 60) * attempt


def segment_runtime(images_per_shard: float, crf_workers: int, attempt: int = 1) -> int:
    """Minutes for one CRF shard: start-up plus about 3 s per 320² image on one core, spread over the workers."""
    return int(runtime("segment") + images_per_shard * 3 / max(crf_workers, 1) / 60) * attempt


# ---------------------------------------------------------------------------------------------------------
# The README's table

def _threads_text(name: str) -> str:
    rule = _rule(name)
    c = "`torch_threads`" if rule.compute == "torch" else str(rule.compute)
    if not rule.workers:
        return c
    kind = {"loader": "image loaders", "crf": "CRF processes", "io": "file-checking threads",
            "render": "render processes"}[rule.workers]
    default = f" (default {rule.default_workers})" if rule.default_workers else ""
    if rule.alongside:
        return f"{c} + {kind}{default}"
    if rule.compute in (0, "0"):
        return f"{kind}{default}"
    return f"{c}, later as many {kind}"


def _memory_text(name: str) -> str:
    rule = _rule(name)
    parts = [f"{rule.mem_mb:,}"]
    if rule.workers and WORKER_MB[rule.workers]:
        each = {"crf": "CRF process", "render": "render process"}.get(rule.workers, "loader")
        parts.append(f"{WORKER_MB[rule.workers]:,} per {each}")
    if rule.holds_store:
        parts.append(f"{STORE_FACTOR:g} × training store (up to the budget)")
    if rule.holds_pooled:
        parts.append(f"{POOLED_FACTOR} × pooled descriptors")
    return " + ".join(parts)


def _plain(rule: Rule) -> bool:
    return not (rule.device or rule.workers or rule.holds_store or rule.holds_pooled)


def markdown_table() -> str:
    """The README's table of what each rule's jobs ask for (checked by tests/test_resources.py): a row per rule
    with a GPU, workers or memory that grows with its inputs, and one row for the rest."""
    lines = ["| rule | GPU | threads | memory (MB) | time (min) | |", "|---|---|---|---|---|---|"]
    times = {"extract": "30 + the shard at 20 images/s", "segment": "30 + 3 s per image ÷ CRF processes"}
    for name, rule in RULES.items():
        if not _plain(rule):
            lines.append(f"| `{name}` | {'1' if rule.device else ''} | {_threads_text(name)} | {_memory_text(name)} "
                         f"| {times.get(name, f'{rule.runtime_min:,}')} | {rule.note} |")
    plain = [name for name, rule in RULES.items() if _plain(rule)]
    mems = sorted({RULES[name].mem_mb for name in plain})
    times_ = sorted({RULES[name].runtime_min for name in plain})
    lines.append(f"| {', '.join(f'`{name}`' for name in plain)} | | 1 | {mems[0]:,}–{mems[-1]:,} "
                 f"| {times_[0]:,}–{times_[-1]:,} | per rule in `stego_steps/resources.py` |")
    return "\n".join(lines)
