"""The supervised linear probe, a diagnostic: its loss and its training on a split's feature store.

A 1×1 convolution from the (frozen, eval-mode) head's codes to class logits, trained with cross-entropy on
the training labels, logits upsampled bilinearly to the label resolution, unlabeled pixels masked. Unlike the
official code, it trains after the head on its final codes instead of alongside it (one of the deliberate
differences listed in docs/algorithm.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stego_steps.cli import progress
from stego_steps.errors import UserError
from stego_steps.store import FeatureStore


def probe_loss(probe: nn.Module, code: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels of logits upsampled to the label size."""
    logits = F.interpolate(probe(code), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    target = torch.where((labels >= 0) & (labels < logits.shape[1]), labels.long(), -1)
    if not bool((target >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=-1)


def train_probe(store: FeatureStore, head: nn.Module, n_classes: int, *, steps: int, batch_size: int,
                lr: float, seed: int, device: str = "cpu") -> tuple[nn.Conv2d, list[float]]:
    """The probe of `n_classes` classes on `head`'s codes of the labelled split in `store` (eval mode), and its
    loss at every step: `steps` Adam steps on random batches, seeded by `seed`."""
    if not store.has("label"):
        raise UserError(f"{store.path} has no labels: the linear probe needs a labelled training split")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = nn.Conv2d(head.code_dim, n_classes, 1).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    codes = _all_codes(store, head, device) if _codes_fit(store, head) else None
    label_bytes = store.n * int(np.prod(store.dataset("label").shape[1:])) * 2
    all_labels = torch.from_numpy(store.read("label")).to(device) if label_bytes <= 2 * 2**30 else None
    losses = []
    for _ in progress(range(steps), desc="linear probe"):
        idx = torch.randperm(store.n, generator=g)[: min(batch_size, store.n)].numpy()
        if codes is not None:
            code = codes[torch.from_numpy(idx).to(device)]
        else:
            with torch.no_grad():
                code = head(store.batch(idx).to(device))
        labels = (all_labels[torch.from_numpy(idx).to(device)] if all_labels is not None
                  else torch.from_numpy(store.read("label", idx)).to(device))
        loss = probe_loss(probe, code, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return probe.eval(), losses


def _codes_fit(store: FeatureStore, head: nn.Module, max_gb: float = 2.0) -> bool:
    return store.n * head.code_dim * store.h * store.w * 4 <= max_gb * 2**30


@torch.no_grad()
def _all_codes(store: FeatureStore, head: nn.Module, device: str, batch_size: int = 64) -> torch.Tensor:
    """The frozen head's codes of the whole split, computed once (the head does not change here)."""
    return torch.cat([head(store.batch(np.arange(i, min(i + batch_size, store.n))).to(device))
                      for i in range(0, store.n, batch_size)])
