"""How each stage's time grows with the number of images: the demo's workflow on 100, 400 and 1,600 rendered
training scenes (and a fifth as many val scenes, as in the demo's 300 / 60), one fresh run per size.

    python bench/growth.py                       # 100 400 1600, in results/bench/growth/<n>/
    python bench/growth.py --images 100 400      # other sizes
    python bench/growth.py --steps 100           # shorter training (its time does not depend on the images)

Prints the wall seconds of each stage per size (sum over the stage's jobs, from Snakemake's benchmark files,
Python start-up included) and the growth from the smallest to the largest size beside the growth in images;
writes results/bench/growth.csv. A finished size is not rerun (delete its folder to measure again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stages import ORDER, run_demo, stage_table  # noqa: E402


def size_config(n_train: int, steps: int | None) -> dict:
    """Config overrides for a demo of `n_train` training scenes and n_train / 5 val scenes."""
    demo = {"generator": {"n_train": n_train, "n_val": max(n_train // 5, 10)}}
    if steps:
        demo["overrides"] = {"train": {"steps": steps}}
    return {"run": ["demo"], "datasets": {"demo": demo}}


def growth_table(walls: dict[int, pd.Series]) -> pd.DataFrame:
    """Stages × sizes of wall seconds, with the largest size's time over the smallest's."""
    table = pd.DataFrame(walls)
    table = table.reindex([s for s in ORDER if s in table.index] + [s for s in table.index if s not in ORDER])
    table.loc["total"] = table.sum()
    small, large = min(walls), max(walls)
    table[f"×{large}/{small}"] = table[large] / table[small]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--steps", type=int, help="training steps (default: the demo preset's)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/growth"))
    args = parser.parse_args()
    walls = {}
    for n in sorted(args.images):
        workdir = (args.out / str(n)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        configfile = workdir / "size.yaml"
        configfile.write_text(yaml.safe_dump(size_config(n, args.steps)))
        elapsed = run_demo(workdir, configfile, args.cores, ("results/demo/miou.csv",))
        walls[n] = stage_table(workdir).groupby("stage")["wall_s"].sum()
        print(f"{n} images: {walls[n].sum():.1f} s in jobs, {elapsed:.1f} s this call ({workdir})", flush=True)
    table = growth_table(walls)
    small, large = min(walls), max(walls)
    print(f"\nwall seconds per stage (images growth ×{large / small:g}):")
    print(table.to_string(float_format=lambda v: f"{v:.1f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out.with_suffix(".csv"))
    print(f"wrote {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
