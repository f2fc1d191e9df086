"""The compact store (int8 codes with a per-token scale) and bfloat16 extraction against float16 / float32
features: a seeded random ViT-S/8 on rendered demo scenes, compared through the features, their
correlations and the STEGO loss."""

import json

import numpy as np
import pytest
import torch

from stego_steps import disk_space, feature_extraction, images, loss, store, validate
from stego_steps.backbones import build_backbone
from stego_steps.head import SegmentationHead
from stego_steps.index import read_index

BACKBONE = "dino_vits8_random"
RES = 48  # a 6×6 grid of patches: small enough for CPU tests, every block of the ViT still runs
WEIGHTS = {"self": 0.67, "knn": 0.25, "random": 0.63}
SHIFTS = {"self": 0.08, "knn": 0.02, "random": 0.76}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scenes")
    settings = {"root": str(tmp / "data"), "five_crop": False, "crop_ratio": 0.5,
                "generator": {"n_train": 8, "n_val": 2, "height": 48, "width": 64, "seed": 0}}
    validate.write_index("demo", settings, tmp / "index")
    return tmp, read_index(tmp / "index" / "train.csv"), json.loads((tmp / "index" / "classes.json").read_text())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def loss_terms(feats: torch.Tensor) -> dict[str, float]:
    """The STEGO loss of a fixed random head with the first half of the batch as anchors, the second half as
    their positives; the same points and negatives for every input."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    head = SegmentationHead(feats.shape[1], 16, 0.0).eval()
    n = len(feats) // 2
    a, p = feats[:n], feats[n:]
    with torch.no_grad():
        out = loss.stego_loss(a, head(a), p, head(p), coords1=loss.random_coords(n, 5, g),
                              coords2=loss.random_coords(n, 5, g), perms=[loss.negative_perm(n, g) for _ in range(3)],
                              weights=WEIGHTS, shifts=SHIFTS)
    return {k: float(v) for k, v in out.items() if k in ("self", "knn", "random", "total")}


def correlations(feats: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    n = len(feats) // 2
    return loss.feature_correlation(loss.sample(feats[:n], loss.random_coords(n, 5, g)),
                                    loss.sample(feats[n:], loss.random_coords(n, 5, g)))


def assert_close_to_reference(feats: torch.Tensor, ref: torch.Tensor, feature_tol: float) -> None:
    assert rel(feats, ref) < feature_tol
    # Correlations are cosines in [-1, 1]; the loss compares them with shifts set to 0.01 precision at best,
    # so 0.01 of absolute error is below anything the loss can tell apart (measured: ~0.001).
    assert float((correlations(feats) - correlations(ref)).abs().max()) < 0.01
    # Each loss term within 1% of the reference (measured: at most 0.2% for int8 and for bfloat16).
    got, want = loss_terms(feats), loss_terms(ref)
    for term, value in want.items():
        assert abs(got[term] - value) <= 0.01 * abs(value), term


def test_int8_store_is_half_the_size_and_close_to_float16(scenes, tmp_path):
    _, index, classes = scenes
    kw = dict(backbone=BACKBONE, weights=None, res=RES, evaluation=True, batch_size=4, device="cpu")
    feature_extraction.extract(index, classes, tmp_path / "f16.h5", **kw)
    feature_extraction.extract(index, classes, tmp_path / "int8.h5", store_dtype="int8", **kw)
    rows = np.arange(len(index))
    with store.FeatureStore(tmp_path / "f16.h5") as f16, store.FeatureStore(tmp_path / "int8.h5") as q, \
            store.FeatureStore(tmp_path / "int8.h5", max_memory_gb=0) as q_disk, \
            store.FeatureStore(tmp_path / "int8.h5", key="feats_flip", max_memory_gb=0) as q_flip:
        assert q.dataset("feats").dtype == np.int8 and q.has("feats_scale") and q.has("feats_flip_scale")
        # Codes plus one float16 scale per token: (C + 2) / (2 C) of the float16 bytes.
        assert q.nbytes == pytest.approx(f16.nbytes * (q.dim + 2) / (2 * q.dim))
        ref, got = f16.batch(rows), q.batch(rows)
        assert torch.equal(got, q_disk.batch(rows))  # dequantised alike from memory and from disk
        assert q_flip.batch(rows).shape == got.shape
        # Rounding to 127 levels of each token's largest channel: at most 0.4% of that channel per value;
        # relative to the features' norm about 1% (measured 0.7%), 2% allowed.
        assert_close_to_reference(got, ref, feature_tol=0.02)
        np.testing.assert_array_equal(q.read("pooled"), f16.read("pooled"))  # computed before rounding


def test_bfloat16_features_stay_close_to_float32(scenes):
    _, index, _ = scenes
    net = build_backbone(BACKBONE, seed=0)
    x = feature_extraction.to_float(torch.stack([torch.from_numpy(images.transform_image(images.read_image(p), RES))
                                                 for p in index["image"]]))
    f32 = feature_extraction.features_of(net, x, "cpu")
    bf16 = feature_extraction.features_of(net, x, "cpu", "bfloat16")
    assert bf16.dtype == torch.float32 and bf16.shape == f32.shape
    # bfloat16 keeps 8 bits of mantissa (0.4% per rounding); over 12 blocks with float32 norms and softmax the
    # features stay within about 0.5% of their norm (measured 0.53%); 2% allowed.
    assert_close_to_reference(bf16, f32, feature_tol=0.02)


def test_the_plan_counts_the_compact_store():
    f16 = disk_space.split_plan("train", 1000, True, {"backbone": BACKBONE, "res": 224, "evaluation": False})
    q = disk_space.split_plan("train", 1000, True, {"backbone": BACKBONE, "res": 224, "evaluation": False,
                                              "store_dtype": "int8"})
    assert q.parts["feats"] * 2 == f16.parts["feats"]
    assert q.parts["feats_scale"] == f16.parts["feats"] / 384  # one float16 per token of 384 channels
    assert q.bytes == f16.bytes - f16.parts["feats"] / 2 + q.parts["feats_scale"]


def test_vit_attention_runs_in_the_fused_kernel():
    # timm's Attention calls F.scaled_dot_product_attention when `fused_attn` is set (its default).
    net = build_backbone(BACKBONE, seed=0)
    assert all(block.attn.fused_attn for block in net.model.blocks)
