"""The STEGO segmentation head (reference §2) and the helpers that apply it to cached features."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SegmentationHead(nn.Module):
    """`code = conv1x1(drop(f)) + conv1x1(relu(conv1x1(drop(f))))`.

    Each branch gets its own Dropout2d mask, as in the official featurizer; dropout is active only in
    training mode.
    """

    def __init__(self, in_dim: int, code_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim, self.code_dim, self.dropout_p = in_dim, code_dim, dropout
        self.drop = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(in_dim, code_dim, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, code_dim, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(feats)) + self.nonlinear(self.drop(feats))


def flip_tta_code(head: nn.Module, feats: torch.Tensor, feats_flipped: torch.Tensor) -> torch.Tensor:
    """Official flip test-time augmentation: average the code of an image and of its mirror (flipped back)."""
    return 0.5 * (head(feats) + head(feats_flipped).flip(-1))


def save_head(path: str | Path, head: SegmentationHead, extra: dict) -> None:
    from stego_steps.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": head.state_dict(), "in_dim": head.in_dim, "code_dim": head.code_dim,
                    "dropout": head.dropout_p, **extra}, tmp)


def load_head(path: str | Path, device: str = "cpu", backbone_id: str | None = None) -> SegmentationHead:
    """Load a trained head in eval mode (dropout off). With `backbone_id` (of the features it will embed),
    refuse a head trained on another network's features."""
    blob = torch.load(path, map_location=device, weights_only=False)
    trained_on = blob.get("backbone_id")
    if backbone_id and trained_on and trained_on != backbone_id:
        raise ValueError(f"head {path} was trained on features of backbone {blob.get('backbone')} "
                         f"({trained_on}), not on the network ({backbone_id}) of the features it is given; "
                         f"delete {path} and rerun so that it is retrained on these features")
    head = SegmentationHead(blob["in_dim"], blob["code_dim"], blob["dropout"])
    head.load_state_dict(blob["state_dict"])
    return head.to(device).eval()
