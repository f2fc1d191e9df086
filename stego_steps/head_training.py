"""The training loop of the segmentation head (STEGO loss on cached features), shared by the `train` stage and
the calibration's candidate heads.

One step = one batch of anchors (a global shuffle per epoch), each paired with a positive drawn uniformly
from its KNN ranks 1..k and with random negatives from the same batch. Adam without weight decay, no
schedule. A store that fits the memory budget is held in memory; a larger one is streamed
(`batches.StreamingBatches`) through the very same draws, so both give bitwise the same head. With a
checkpoint path, a checkpoint every `checkpoint_every` steps lets a killed run resume; how often is
bookkeeping, not a setting (it is not part of the checkpoint's key).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stego_steps import testhooks
from stego_steps.artifacts import atomic_path, fingerprint
from stego_steps.batches import StepDraws, StreamingBatches
from stego_steps.cli import progress
from stego_steps.devices import select_device
from stego_steps.errors import UserError
from stego_steps.head import SegmentationHead
from stego_steps.loss import TERMS, stego_loss
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def checkpoint_key(settings: dict, store: FeatureStore, knn: np.ndarray) -> str:
    """What a checkpoint was made from: the settings, the very features (the digest of their pooled
    descriptors) and the KNN table. A checkpoint resumes only when all three are the same."""
    knn_digest = hashlib.sha256(np.ascontiguousarray(knn).tobytes()).hexdigest()
    return fingerprint(settings, store.digest("pooled"), knn_digest)


def train(store: FeatureStore, knn: np.ndarray, settings: dict, *, device: str = "auto",
          checkpoint: Path | None = None, checkpoint_every: int | None = None) -> tuple[SegmentationHead, pd.DataFrame]:
    """Train the head; returns it (eval mode) and the per-step log. With `checkpoint`, a checkpoint is written
    every `checkpoint_every` steps (default: a tenth of the steps)."""
    s = settings
    device = select_device(device)
    if len(knn) != store.n:
        raise UserError(f"KNN table has {len(knn)} rows but {store.path} has {store.n} samples; "
                         "rerun the knn stage")
    batch = min(s["batch_size"], store.n)
    every = checkpoint_every or max(s["steps"] // 10, 1)
    torch.manual_seed(s["seed"])  # dropout masks
    # Batches, positives, coordinates, negatives: one sequence, whether the features come from memory or disk.
    draws = StepDraws(knn, batch, s["neighbours"], s["samples"], s["negatives"], s["seed"])
    head = SegmentationHead(store.dim, s["code_dim"], s["dropout"], s.get("nonlinear", True)).to(device)
    loss_dropout = nn.Dropout2d(s["dropout"])  # third, independent mask: the features the loss sees
    opt = torch.optim.Adam(head.parameters(), lr=s["lr"])
    rows: list[dict] = []
    start = 0
    key = checkpoint_key(s, store, knn)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        # Checkpoints of the former streaming order (flag `streaming`) hold another sequence of batches.
        if state["fingerprint"] == key and not state.get("streaming", False):
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            draws.set_state(state)
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and torch.device(device).type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], device)  # dropout masks on the GPU
            rows, start = state["rows"], state["step"]
            log.info("resuming training at step %d from %s", start, checkpoint)
        else:
            log.warning("ignoring %s: it was made from other settings, features or neighbours", checkpoint)
    stream = None
    if not store.in_memory:
        stream = StreamingBatches(store, draws, steps=s["steps"] - start, device=device)
        log.info("streaming %s (%.1f GB > budget %.1f GB), reading %d steps ahead", store.path,
                 store.nbytes / 2**30, store.budget_gb, stream.prefetch)
    head.train()
    try:
        for step in progress(range(start, s["steps"]), desc="train", initial=start, total=s["steps"]):
            t0 = time.perf_counter()
            if stream is None:
                d = draws.next()
                f, f_pos = store.batch(d.anchors).to(device), store.batch(d.positives).to(device)
                after = None  # the draws' own state, read when a checkpoint is written
            else:
                d, after, f, f_pos = stream.next()
            code, code_pos = head(f), head(f_pos)
            out = stego_loss(
                loss_dropout(f), code, loss_dropout(f_pos), code_pos,
                coords1=d.coords1.to(device), coords2=d.coords2.to(device),
                perms=[p.to(device) for p in d.perms],
                weights=s["weights"], shifts=s["shifts"],
                spatial_centering=s["spatial_centering"], zero_clamp=s["zero_clamp"],
            )
            opt.zero_grad(set_to_none=True)
            out["total"].backward()
            opt.step()
            rows.append({"step": step + 1, **{k: out[k].item() for k in (*TERMS, "total")},
                         "seconds": time.perf_counter() - t0})
            if (step + 1) % max(s["steps"] // 10, 1) == 0:
                log.info("step %d/%d loss %.4f (self %.4f knn %.4f random %.4f)", step + 1, s["steps"],
                         *(rows[-1][k] for k in ("total", *TERMS)))
            if checkpoint is not None and (step + 1) % every == 0 and step + 1 < s["steps"]:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"fingerprint": key, "head": head.state_dict(), "opt": opt.state_dict(),
                                **(after or draws.state()), "torch_rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state(device)
                                if torch.device(device).type == "cuda" else None,
                                "rows": rows, "step": step + 1}, tmp)
                testhooks.reached("train:checkpoint")
    finally:
        if stream is not None:
            stream.close()
    return head.eval(), pd.DataFrame(rows)
