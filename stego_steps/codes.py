"""The head's codes of an evaluation split, with flip test-time augmentation, written to `codes.h5`.

The code of each image is averaged with the (re-flipped) code of its mirror image, as in the official
evaluation; it stays at feature resolution ([N,D,h,w] float32 in `codes.h5`) — upsampling and the probes
come in `segment`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from stego_steps.artifacts import atomic_path
from stego_steps.cli import progress
from stego_steps.head import flip_tta_code
from stego_steps.store import FeatureStore


@torch.no_grad()
def predict_codes(store: FeatureStore, head: torch.nn.Module, out: Path, *, batch_size: int = 32,
                  device: str = "cpu") -> None:
    """Write `out` (atomically): the flip-averaged codes of every sample of an evaluation store (one with
    `feats_flip`), and the attributes that segmenting new images with this run needs."""
    flips = FeatureStore(store.path, key="feats_flip", max_memory_gb=0)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        codes = f.create_dataset("codes", (store.n, head.code_dim, store.h, store.w), np.float32,
                                 chunks=(1, head.code_dim, store.h, store.w))
        for start in progress(range(0, store.n, batch_size), desc="predict"):
            idx = np.arange(start, min(start + batch_size, store.n))
            code = flip_tta_code(head, store.batch(idx).to(device), flips.batch(idx).to(device))
            codes[start:start + len(idx)] = code.cpu().numpy()
        # What segmenting new images with this run needs besides the run's own files: the network
        # (`backbone_id`) and how its features were computed and stored (`producer`: weights, seed, precision,
        # store dtype, batch size).
        f.attrs.update(n=store.n, source=str(store.path),
                       **{k: store.attrs[k] for k in ("backbone", "res", "stride", "class_names", "backbone_id",
                                                      "producer") if k in store.attrs})
    flips.close()
