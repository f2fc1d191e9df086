"""The STEGO correlation loss, on feature maps and code maps of a batch.

For each pair of maps the feature correlation F (cosine similarities of sampled, L2-normalised backbone
features, no gradient) tells which point pairs belong together; the code correlation S (same, on the head's
codes, with gradient) is pushed up where F exceeds a shift b and towards zero where it falls below:
`L = −mean(max(S, 0) · (F − b))`. Three pairs per step: the image with itself, with a KNN neighbour and with
random other images of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from stego_steps.protocol import TERMS  # noqa: F401 (re-exported: the terms of this loss)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=1, eps=1e-10)


def _pair_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] × [B,C,I,J] → [B,H,W,I,J] dot products between all points of the same batch element."""
    return torch.einsum("bchw,bcij->bhwij", a, b)


def sample(t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample `t` [B,C,H,W] at `coords` [B,S,S,2] (x, y in [-1, 1]) → [B,C,S,S].

    Like the official code, the two grid axes of `coords` are swapped before sampling, so output [i, j]
    reads coords[:, j, i]; this only matters for bit-exact comparisons.
    """
    return F.grid_sample(t, coords.permute(0, 2, 1, 3), mode="bilinear", padding_mode="border",
                         align_corners=True)


def random_coords(batch: int, samples: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform sampling coordinates [B,S,S,2] in [-1, 1]."""
    return torch.rand(batch, samples, samples, 2, generator=generator, device=device) * 2 - 1


def negative_perm(batch: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Official `super_perm`: a random permutation whose fixed points are moved to the next index.

    No image is paired with itself (for batch > 1); duplicates are possible, as in the official code.
    """
    perm = torch.randperm(batch, generator=generator, device=device)
    idx = torch.arange(batch, device=device)
    perm = torch.where(perm == idx, perm + 1, perm)
    return perm % batch


@torch.no_grad()
def feature_correlation(f1: torch.Tensor, f2: torch.Tensor, *, spatial_centering: bool = True) -> torch.Tensor:
    """The loss's feature correlation F [B,S,S,S,S] of two sampled maps [B,C,S,S] (no gradient).

    Cosine similarities of all point pairs; `spatial_centering` subtracts, per anchor point, the mean over the
    partner's points and restores the batch-wide mean. This is what the shift b is compared with.
    """
    fd = _pair_correlation(_unit(f1), _unit(f2))
    if spatial_centering:
        global_mean = fd.mean()
        fd = fd - fd.mean(dim=(3, 4), keepdim=True)
        fd = fd - fd.mean() + global_mean
    return fd


def correlation_term(f1: torch.Tensor, f2: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, shift: float,
                     *, spatial_centering: bool = True, zero_clamp: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise loss [B,S,S,S,S] and code correlation [B,S,S,S,S] of one pair of sampled maps.

    `spatial_centering` subtracts, per anchor point, the mean feature correlation over the partner's
    points and restores the batch-wide mean; `zero_clamp` clamps the code correlation at 0 (codes are pushed
    to orthogonality, not to anti-correlation).
    """
    fd = feature_correlation(f1, f2, spatial_centering=spatial_centering)
    cd = _pair_correlation(_unit(c1), _unit(c2))
    floor = 0.0 if zero_clamp else -9999.0  # the official "no clamp" bound
    return -cd.clamp(min=floor) * (fd - shift), cd


def stego_loss(feats: torch.Tensor, code: torch.Tensor, feats_pos: torch.Tensor, code_pos: torch.Tensor, *,
               coords1: torch.Tensor, coords2: torch.Tensor, perms: Sequence[torch.Tensor],
               weights: Mapping[str, float], shifts: Mapping[str, float],
               spatial_centering: bool = True, zero_clamp: bool = True) -> dict[str, torch.Tensor]:
    """The three STEGO terms (unweighted means) and their weighted sum `total`.

    `feats`/`code` are the anchor batch, `feats_pos`/`code_pos` its KNN positives; anchors are sampled at
    `coords1`, positives and negatives at `coords2`; each tensor in `perms` pairs the anchors with other
    images of the same batch (the random negatives).
    """
    detached = feats.detach()
    kw = dict(spatial_centering=spatial_centering, zero_clamp=zero_clamp)
    f, c = sample(detached, coords1), sample(code, coords1)
    f_pos, c_pos = sample(feats_pos.detach(), coords2), sample(code_pos, coords2)
    terms = {
        "self": correlation_term(f, f, c, c, shifts["self"], **kw)[0].mean(),
        "knn": correlation_term(f, f_pos, c, c_pos, shifts["knn"], **kw)[0].mean(),
    }
    negatives = [
        correlation_term(f, sample(detached[p], coords2), c, sample(code[p], coords2), shifts["random"], **kw)[0]
        for p in perms
    ]
    terms["random"] = torch.cat(negatives, dim=0).mean()
    terms["total"] = sum(weights[k] * terms[k] for k in TERMS)
    return terms
