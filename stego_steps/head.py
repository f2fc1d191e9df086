"""The STEGO segmentation head, and the probes that turn its codes into class log-probabilities.

The head maps frozen backbone features [B,C,h,w] to codes [B,D,h,w]. A probe maps an embedding (the head's
codes, or the backbone features for the K-Means baseline) to per-pixel log-probabilities over K clusters or
classes: the cluster probes through their centroids, the linear probe through a 1×1 convolution.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stego_steps.artifacts import atomic_path, read_torch
from stego_steps.errors import UserError
from stego_steps.protocol import (  # noqa: F401 (re-exported)
    BASELINE_PROBES,
    PROBES,
    ROWS,
    SUPERVISED_PROBES,
    UNSUPERVISED_PROBES,
)

LogProbs = Callable[[torch.Tensor], torch.Tensor]


class SegmentationHead(nn.Module):
    """`code = conv1x1(drop(f)) + conv1x1(relu(conv1x1(drop(f))))`; with `nonlinear=False` the linear path
    alone (the paper's head ablation).

    Each branch gets its own Dropout2d mask, as in the official featurizer; dropout is active only in
    training mode.
    """

    def __init__(self, in_dim: int, code_dim: int, dropout: float = 0.1, nonlinear: bool = True) -> None:
        super().__init__()
        self.in_dim, self.code_dim, self.dropout_p = in_dim, code_dim, dropout
        self.drop = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(in_dim, code_dim, 1)
        self.nonlinear = (nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, code_dim, 1))
                          if nonlinear else None)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        code = self.linear(self.drop(feats))
        return code if self.nonlinear is None else code + self.nonlinear(self.drop(feats))


class RawFeatures(nn.Identity):
    """No head: the backbone features themselves as the embedding (the linear-probe baseline)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.code_dim = dim


def flip_tta_code(head: nn.Module, feats: torch.Tensor, feats_flipped: torch.Tensor) -> torch.Tensor:
    """Official flip test-time augmentation: average the code of an image and of its mirror (flipped back)."""
    return 0.5 * (head(feats) + head(feats_flipped).flip(-1))


def save_head(path: str | Path, head: SegmentationHead, extra: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": head.state_dict(), "in_dim": head.in_dim, "code_dim": head.code_dim,
                    "dropout": head.dropout_p, "nonlinear": head.nonlinear is not None, **extra}, tmp)


def load_head(path: str | Path, device: str = "cpu", backbone_id: str | None = None) -> SegmentationHead:
    """Load a trained head in eval mode (dropout off). With `backbone_id` (of the features it will embed),
    refuse a head trained on another network's features."""
    blob = read_torch(path, "head", map_location=device, weights_only=False)
    trained_on = blob.get("backbone_id")
    if backbone_id and trained_on and trained_on != backbone_id:
        raise UserError(f"head {path} was trained on features of backbone {blob.get('backbone')} "
                         f"({trained_on}), not on the network ({backbone_id}) of the features it is given; "
                         f"delete {path} and rerun so that it is retrained on these features")
    head = SegmentationHead(blob["in_dim"], blob["code_dim"], blob["dropout"], blob.get("nonlinear", True))
    head.load_state_dict(blob["state_dict"])
    return head.to(device).eval()


def cluster_log_probs(centroids: np.ndarray | torch.Tensor, temperature: float = 2.0) -> LogProbs:
    """Official cluster probe at evaluation: log_softmax(2 · cosine(pixel, centroid)) over centroids [K,D]."""
    c = F.normalize(torch.as_tensor(centroids, dtype=torch.float32), dim=1)
    return lambda x: torch.log_softmax(temperature * torch.einsum("bdhw,kd->bkhw", F.normalize(x, dim=1), c),
                                       dim=1)


@torch.no_grad()
def log_probs_at(embedding: torch.Tensor, size: int, to_log_probs: LogProbs) -> np.ndarray:
    """[1,D,h,w] → log-probabilities [K,size,size] after bilinear upsampling of the embedding."""
    up = F.interpolate(embedding, size=(size, size), mode="bilinear", align_corners=False)
    return to_log_probs(up)[0].numpy()


def linear_log_probs(probe: nn.Module) -> LogProbs:
    """The linear probe at evaluation: log_softmax of its logits."""
    return lambda x: torch.log_softmax(probe(x), dim=1)


def save_probe(path: str | Path, probe: nn.Conv2d, extra: dict | None = None) -> None:
    """Write a linear probe (a 1×1 convolution code_dim → n_classes) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": probe.cpu().state_dict(), "code_dim": probe.in_channels,
                    "n_classes": probe.out_channels, **(extra or {})}, tmp)


def load_probe(path: str | Path, device: str = "cpu") -> nn.Conv2d:
    """A linear probe written by `save_probe`, in eval mode."""
    blob = read_torch(path, "linear probe", map_location=device, weights_only=True)
    probe = nn.Conv2d(blob["code_dim"], blob["n_classes"], 1)
    probe.load_state_dict(blob["state_dict"])
    return probe.to(device).eval()
