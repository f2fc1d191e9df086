"""The STEGO loss on tiny tensors, against values derived by hand from the formulas."""

import pytest
import torch

from stego_steps import loss as L


def points(*vectors):
    """Unit-free 2-d vectors → a [1, 2, 1, n] map (one row of n sampled points)."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 2, 1, len(vectors))


def test_sample_reads_corners_and_swaps_axes():
    t = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    coords = torch.tensor([[[[-1.0, -1.0], [1.0, -1.0]], [[-1.0, 1.0], [1.0, 1.0]]]])  # [1,2,2,2] (x, y)
    out = L.sample(t, coords)[0, 0]
    # align_corners=True: ±1 are the centres of the edge pixels. Output [i, j] reads coords[:, j, i].
    assert out.tolist() == [[0.0, 8.0], [3.0, 11.0]]


def test_spatial_centering_and_clamp_by_hand():
    f1 = points((1, 0), (0, 1))
    f2 = points((1, 0), (1, 0))
    c1 = points((1, 0), (0, 1))
    c2 = points((1, 0), (-1, 0))
    # F = [[1, 1], [0, 0]]; S = [[1, -1], [0, 0]]; shift 0.2.
    # Centering: anchor means [1, 0] → F − mean = 0, plus the global mean 0.5 → every entry 0.5.
    got, cd = L.correlation_term(f1, f2, c1, c2, 0.2)
    assert cd.flatten().tolist() == [1.0, -1.0, 0.0, 0.0]
    assert got.flatten().tolist() == pytest.approx([-0.3, 0.0, 0.0, 0.0])
    # Without centering: F − b = [[0.8, 0.8], [-0.2, -0.2]]; the clamp zeroes the negative code correlation.
    got, _ = L.correlation_term(f1, f2, c1, c2, 0.2, spatial_centering=False)
    assert got.flatten().tolist() == pytest.approx([-0.8, 0.0, 0.0, 0.0])
    # Without the clamp the negative code correlation is pushed further down (a positive loss).
    got, _ = L.correlation_term(f1, f2, c1, c2, 0.2, spatial_centering=False, zero_clamp=False)
    assert got.flatten().tolist() == pytest.approx([-0.8, 0.8, 0.0, 0.0])


def test_gradients_by_hand_reach_codes_not_features():
    # One point each: F = cos(f, f) = 1, S = cos(a, b) with a = (1, 0), b = (0, 1); L = −S·(F − 0.3).
    # dS/da = b/(|a||b|) − S·a/|a|² = (0, 1) and dS/db = (1, 0), so dL/da = (0, −0.7), dL/db = (−0.7, 0).
    f = points((2, 1)).requires_grad_(True)
    a = points((1, 0)).requires_grad_(True)
    b = points((0, 1)).requires_grad_(True)
    out, _ = L.correlation_term(f, f, a, b, 0.3, spatial_centering=False, zero_clamp=False)
    out.sum().backward()
    assert a.grad.flatten().tolist() == pytest.approx([0.0, -0.7])
    assert b.grad.flatten().tolist() == pytest.approx([-0.7, 0.0])
    assert f.grad is None


def constant_maps(vectors, size=3):
    """[B, 2, size, size] maps whose every pixel holds the batch element's vector."""
    v = torch.tensor(vectors, dtype=torch.float32)
    return v[:, :, None, None].expand(-1, -1, size, size).contiguous()


def test_three_terms_and_total_by_hand():
    feats = constant_maps([(1, 0), (0, 1)])  # the two images' features are orthogonal
    code = constant_maps([(1, 0), (1, 0)]).requires_grad_(True)  # but their codes agree
    feats_pos = feats.flip(0)  # each image's "neighbour" is the other one
    code_pos = code.detach().clone().requires_grad_(True)
    coords = L.random_coords(2, 4, torch.Generator().manual_seed(0))
    w = {"self": 0.5, "knn": 2.0, "random": 3.0}
    b = {"self": 0.1, "knn": 0.2, "random": 0.4}
    out = L.stego_loss(feats, code, feats_pos, code_pos, coords1=coords, coords2=coords,
                       perms=[torch.tensor([1, 0]), torch.tensor([0, 1])], weights=w, shifts=b)
    # self: F = 1, S = 1 → −(1 − 0.1). knn: F = 0, S = 1 → −(0 − 0.2).
    # random: the swap gives F = 0 → 0.4; the identity (allowed when given explicitly) gives F = 1 → −0.6.
    assert out["self"].item() == pytest.approx(-0.9)
    assert out["knn"].item() == pytest.approx(0.2)
    assert out["random"].item() == pytest.approx((0.4 - 0.6) / 2)
    assert out["total"].item() == pytest.approx(0.5 * -0.9 + 2.0 * 0.2 + 3.0 * -0.1)
    out["total"].backward()
    assert code.grad is not None and code_pos.grad is not None


def test_loss_gives_no_gradient_to_features():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 5, 6, 6, generator=g, requires_grad=True)
    pos = torch.randn(3, 5, 6, 6, generator=g, requires_grad=True)
    code = torch.randn(3, 4, 6, 6, generator=g, requires_grad=True)
    code_pos = torch.randn(3, 4, 6, 6, generator=g, requires_grad=True)
    terms = {"self": 1.0, "knn": 1.0, "random": 1.0}
    out = L.stego_loss(feats, code, pos, code_pos, coords1=L.random_coords(3, 5, g),
                       coords2=L.random_coords(3, 5, g), perms=[L.negative_perm(3, g)], weights=terms,
                       shifts={"self": 0.1, "knn": 0.1, "random": 0.5})
    out["total"].backward()
    assert feats.grad is None and pos.grad is None
    assert code.grad.abs().sum() > 0 and code_pos.grad.abs().sum() > 0


@pytest.mark.parametrize("batch", [2, 3, 5, 16])
def test_negative_perm_never_pairs_an_image_with_itself(batch):
    g = torch.Generator().manual_seed(batch)
    for _ in range(200):
        perm = L.negative_perm(batch, g)
        assert perm.shape == (batch,)
        assert bool((perm != torch.arange(batch)).all())
        assert bool(((perm >= 0) & (perm < batch)).all())
