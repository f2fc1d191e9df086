"""The segment stage's output files (per probe and shard: `raw` and `crf` label maps [n,H,W] uint8 with the
attributes probe, start, stop, n_clusters) and the colours that pictures give their labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from stego_steps.artifacts import open_h5
from stego_steps.errors import UserError


def read_predictions(paths: list[Path], probe: str, n: int) -> dict[bool, np.ndarray]:
    """Stitch the shards of one probe back into [N,H,W] maps for raw (False) and CRF (True)."""
    shards = []
    for path in paths:
        with open_h5(path, "segment shard") as f:
            if f.attrs["probe"] == probe:
                shards.append((int(f.attrs["start"]), int(f.attrs["stop"]), f["raw"][...], f["crf"][...]))
    shards.sort(key=lambda s: s[0])
    covered = [i for start, stop, *_ in shards for i in range(start, stop)]
    if covered != list(range(n)):
        raise UserError(f"segment shards of probe '{probe}' do not cover images 0..{n - 1} exactly: "
                         f"{[(s[0], s[1]) for s in shards]}; rerun the segment stage")
    return {False: np.concatenate([s[2] for s in shards]), True: np.concatenate([s[3] for s in shards])}


def palette(n: int) -> np.ndarray:
    """n distinct colours (uint8 [n,3]), the same for the same n: tab10 / tab20, then tab20b and tab20c."""
    names = ("tab10",) if n <= 10 else ("tab20", "tab20b", "tab20c")
    colours = np.concatenate([np.asarray(matplotlib.colormaps[c].colors)[:, :3] for c in names])
    if n > len(colours):
        colours = matplotlib.colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[:, :3]
    return (colours[:n] * 255).round().astype(np.uint8)
