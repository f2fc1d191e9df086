"""Stage `knn`: the nearest-neighbour table of a feature store's pooled descriptors (`stego_steps.knn`).

    python -m stego_steps.stages.knn --features results/demo/features/bb/train.h5 --k 7 --out train.npy
    python -m stego_steps.stages.knn ... --search '{"method": "auto", "exact_below": 100000, "ivf": {...}}'
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from stego_steps.artifacts import open_h5, write_npy
from stego_steps.cli import base_parser, parse_stage_args
from stego_steps.errors import UserError, cli
from stego_steps.knn import chosen_method, neighbour_table

log = logging.getLogger(__name__)

def main(argv: list[str] | None = None) -> None:
    parser = base_parser("Cosine nearest-neighbour table of the pooled features (self in column 0).", device=True)
    parser.add_argument(
        "--features", required=True, type=Path, help="HDF5 feature store with dataset 'pooled'"
    )
    parser.add_argument("--k", type=int, default=7, help="neighbours per sample besides itself")
    parser.add_argument("--out", required=True, type=Path, help="output .npy, int64 [N, 1+k]")
    parser.add_argument("--search", type=json.loads, default={"method": "exact"},
                        help="the config's knn: settings as JSON (default: the exact search)")
    args = parse_stage_args(parser, argv)

    import faiss

    faiss.omp_set_num_threads(max(1, args.torch_threads))
    with open_h5(args.features, "feature store") as f:
        if "pooled" not in f:
            raise UserError(f"{args.features} has no dataset 'pooled' (found: {sorted(f.keys())}); it is not a "
                            f"feature store of this workflow: delete it and rerun (extract re-makes it)")
        pooled = np.asarray(f["pooled"][...], dtype=np.float32)
    # The device as resolved for torch: on a GPU, FAISS searches on the same GPU when its build has GPU support.
    use_gpu = None if args.device.startswith("cuda") else False
    gpu = int(args.device.partition(":")[2] or 0)
    log.info(
        "knn: pooled features %s from %s, k=%d, %d threads, %s search", pooled.shape, args.features, args.k,
        args.torch_threads, chosen_method(args.search, len(pooled)),
    )
    start = time.perf_counter()
    table = neighbour_table(pooled, args.k, args.search, use_gpu=use_gpu, gpu=gpu)
    log.info("knn: table %s in %.2f s", table.shape, time.perf_counter() - start)
    write_npy(args.out, table)
    log.info("knn: wrote %s", args.out)


if __name__ == "__main__":
    cli(main)
