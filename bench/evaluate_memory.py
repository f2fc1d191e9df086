"""Peak memory of the evaluation: whole arrays in memory against block by block, on COCO-Stuff-sized maps.

    python bench/evaluate_memory.py                     # 128, 512 and 1,024 images of 320², 27 classes
    python bench/evaluate_memory.py --images 128 2175   # COCO-Stuff's 2,175 validation images

Writes one probe's segment shard (random raw and CRF maps, 27 clusters) and int16 labels for each number of
images, then scores them in a fresh process per (path, images): `whole` reads every map and label into memory
and counts one confusion matrix per map (what `evaluate` did), `blocks` reads 64 images at a time and adds the
counts (what it does now). Prints each process's peak RSS and checks that both give the same confusion matrices;
writes bench/evaluate_memory.csv.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

N_CLASSES = 27
SIZE = 320


def write_inputs(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """A segment shard of the cluster probe and a labels file for `n` images, written 64 images at a time."""
    rng = np.random.default_rng(seed)
    shard, labels = folder / f"cluster.{n}.h5", folder / f"labels.{n}.h5"
    with h5py.File(shard, "w") as s, h5py.File(labels, "w") as lab:
        s.attrs.update(start=0, stop=n, probe="cluster", n_clusters=N_CLASSES)
        maps = [s.create_dataset(k, (n, SIZE, SIZE), np.uint8, chunks=(1, SIZE, SIZE)) for k in ("raw", "crf")]
        target = lab.create_dataset("label", (n, SIZE, SIZE), np.int16, chunks=(1, SIZE, SIZE), compression="gzip")
        for a in range(0, n, 64):
            b = min(a + 64, n)
            for m in maps:
                m[a:b] = rng.integers(0, N_CLASSES, (b - a, SIZE, SIZE), dtype=np.uint8)
            target[a:b] = rng.integers(-1, N_CLASSES, (b - a, SIZE, SIZE), dtype=np.int16)
    return shard, labels


def score(mode: str, shard: Path, labels: Path, n: int) -> None:
    """One measurement (run in its own process): prints the peak RSS in MB and a checksum of the counts."""
    from stego_steps import evaluation, label_maps

    k = {"cluster": N_CLASSES}
    with h5py.File(labels, "r") as f:
        if mode == "whole":
            maps = {"cluster": label_maps.read_predictions([shard], "cluster", n)}
            _, conf = evaluation.evaluate(f["label"][...], maps, k, N_CLASSES)
        else:
            blocks = {"cluster": label_maps.iter_predictions([shard], "cluster", n)}
            _, conf = evaluation.evaluate_blocks(f["label"], blocks, k, N_CLASSES)
    checksum = sum(int((c * np.arange(1, c.size + 1).reshape(c.shape)).sum()) for c in conf.values())
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, checksum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--csv", type=Path, default=Path(__file__).resolve().parent / "evaluate_memory.csv")
    parser.add_argument("--score", nargs=4, metavar=("MODE", "SHARD", "LABELS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        mode, shard, labels, n = args.score
        score(mode, Path(shard), Path(labels), int(n))
        return
    print(f"images of {SIZE}², {N_CLASSES} classes; peak RSS of one process scoring one probe (raw and CRF)")
    print(f"{'images':>7} {'whole (MB)':>11} {'blocks (MB)':>12} same counts")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.images:
            shard, labels = write_inputs(Path(tmp), n)
            out = {}
            for mode in ("whole", "blocks"):
                run = subprocess.run([sys.executable, __file__, "--score", mode, str(shard), str(labels), str(n)],
                                     check=True, capture_output=True, text=True)
                rss, checksum = run.stdout.split()
                out[mode] = (float(rss), checksum)
            same = out["whole"][1] == out["blocks"][1]
            print(f"{n:>7} {out['whole'][0]:>11.0f} {out['blocks'][0]:>12.0f} {same}")
            rows.append({"images": n, "size": SIZE, "whole_mb": out["whole"][0], "blocks_mb": out["blocks"][0],
                         "same_counts": same})
    pd.DataFrame(rows).to_csv(args.csv, index=False, float_format="%.0f")
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
