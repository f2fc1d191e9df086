"""The training loop of the segmentation head (STEGO loss on cached features), shared by the `train` stage and
the calibration's candidate heads.

One step = one batch of anchors, each paired with a positive drawn uniformly from its KNN ranks 1..k and
with random negatives from the same batch. Adam without weight decay, no schedule. A store that fits the
memory budget is held in memory and its anchors drawn by a global shuffle; a larger one is streamed
(`batches.StreamingBatches`). With a checkpoint path, a checkpoint every `checkpoint_every` steps lets a
killed run resume.
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

from stego_steps.artifacts import atomic_path, fingerprint
from stego_steps.batches import BatchSampler, StreamingBatches
from stego_steps.cli import progress
from stego_steps.devices import select_device
from stego_steps.head import SegmentationHead
from stego_steps.loss import TERMS, negative_perm, random_coords, stego_loss
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def checkpoint_key(settings: dict, store: FeatureStore, knn: np.ndarray) -> str:
    """What a checkpoint was made from: the settings, the very features (the digest of their pooled
    descriptors) and the KNN table. A checkpoint resumes only when all three are the same."""
    knn_digest = hashlib.sha256(np.ascontiguousarray(knn).tobytes()).hexdigest()
    return fingerprint(settings, store.digest("pooled"), knn_digest)


def train(store: FeatureStore, knn: np.ndarray, settings: dict, *, device: str = "auto",
          checkpoint: Path | None = None) -> tuple[SegmentationHead, pd.DataFrame]:
    """Train the head; returns it (eval mode) and the per-step log."""
    s = settings
    device = select_device(device)
    if len(knn) != store.n:
        raise ValueError(f"KNN table has {len(knn)} rows but {store.path} has {store.n} samples; "
                         "rerun the knn stage")
    batch = min(s["batch_size"], store.n)
    torch.manual_seed(s["seed"])  # dropout masks
    g = torch.Generator().manual_seed(s["seed"])  # batches, positives, coordinates, negatives
    head = SegmentationHead(store.dim, s["code_dim"], s["dropout"], s.get("nonlinear", True)).to(device)
    loss_dropout = nn.Dropout2d(s["dropout"])  # third, independent mask: the features the loss sees
    opt = torch.optim.Adam(head.parameters(), lr=s["lr"])
    streaming = not store.in_memory
    sampler = BatchSampler(knn, batch, s["neighbours"], g)
    rows: list[dict] = []
    start = 0
    key = checkpoint_key(s, store, knn)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["fingerprint"] == key and state.get("streaming", False) == streaming:
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            g.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and torch.device(device).type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], device)  # dropout masks on the GPU
            sampler.order, rows, start = state["order"], state["rows"], state["step"]
            log.info("resuming training at step %d from %s", start, checkpoint)
        else:
            log.warning("ignoring %s: it was made from other settings, features or neighbours", checkpoint)
    stream = None
    if streaming:
        # The batch sequence of a stream depends on (seed, step) only: a resumed run continues it.
        stream = StreamingBatches(store, knn, batch, s["neighbours"], s["seed"], start_step=start, device=device)
        log.info("streaming %s (%.1f GB > budget %.1f GB): pools of %d samples in blocks of %d",
                 store.path, store.nbytes / 2**30, store.budget_gb, stream.pool_rows, stream.block_rows)
    head.train()
    try:
        for step in progress(range(start, s["steps"]), desc="train", initial=start, total=s["steps"]):
            t0 = time.perf_counter()
            if stream is None:
                anchors, positives = sampler.next()
                f, f_pos = store.batch(anchors).to(device), store.batch(positives).to(device)
            else:
                anchors, positives, f, f_pos = stream.next()
            code, code_pos = head(f), head(f_pos)
            n = len(anchors)
            out = stego_loss(
                loss_dropout(f), code, loss_dropout(f_pos), code_pos,
                coords1=random_coords(n, s["samples"], g).to(device),
                coords2=random_coords(n, s["samples"], g).to(device),
                perms=[negative_perm(n, g).to(device) for _ in range(s["negatives"])],
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
            if checkpoint is not None and (step + 1) % s["checkpoint_every"] == 0 and step + 1 < s["steps"]:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"fingerprint": key, "head": head.state_dict(), "opt": opt.state_dict(),
                                "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state(device)
                                if torch.device(device).type == "cuda" else None,
                                "order": sampler.order, "rows": rows, "step": step + 1, "streaming": streaming}, tmp)
    finally:
        if stream is not None:
            stream.close()
    return head.eval(), pd.DataFrame(rows)
