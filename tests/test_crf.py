import os
import time

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
from pydensecrf.utils import unary_from_softmax

from stego_steps.crf import crf_labels, dense_crf, refine_labels

# Hooks for the worker tests: module-level so that spawned workers can unpickle them.


def _crash_if_dark(image, log_probs, crf_kwargs):
    if image.max() == 0:
        os._exit(3)
    return crf_labels(image, log_probs, crf_kwargs)


def _hang(image, log_probs, crf_kwargs):
    time.sleep(600)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=0, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=0, keepdims=True))).astype(np.float32)


def _scene(seed: int, h: int = 64, w: int = 80, flip: float = 0.25):
    """Three flat-colour regions with mild noise, and softened one-hot log-probs with `flip` wrong pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros((h, w), np.int64)
    truth[xx > w // 2] = 1
    truth[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2] = 2
    colours = np.array([[200, 40, 40], [40, 180, 60], [30, 60, 210]], np.float64)
    image = np.clip(colours[truth] + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)
    noisy = truth.copy()
    flipped = rng.random((h, w)) < flip
    noisy[flipped] = (truth[flipped] + rng.integers(1, 3, flipped.sum())) % 3
    log_probs = _log_softmax(2.0 * np.eye(3)[noisy].transpose(2, 0, 1))
    return image, log_probs, truth


def test_dense_crf_matches_direct_pydensecrf_call():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    log_probs = _log_softmax(rng.normal(0, 2, (4, 30, 40)))
    got = dense_crf(image, log_probs)
    probs = torch.softmax(torch.from_numpy(log_probs), 0).numpy()
    d = dcrf.DenseCRF2D(40, 30, 4)
    d.setUnaryEnergy(unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=image, compat=4)
    want = np.array(d.inference(10)).reshape(4, 30, 40)
    assert got.dtype == np.float32 and got.shape == (4, 30, 40)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-4)


def test_dense_crf_accepts_non_contiguous_inputs():
    image, log_probs, _ = _scene(1, 24, 32)
    want = dense_crf(image, log_probs)
    got = dense_crf(image[:, ::-1][:, ::-1], np.asfortranarray(log_probs))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_dense_crf_validates_inputs():
    image, log_probs, _ = _scene(1, 24, 32)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), log_probs)
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        dense_crf(image[..., :2], log_probs)
    with pytest.raises(ValueError, match="24x32"):
        dense_crf(image, log_probs[:, :20])
    with pytest.raises(ValueError, match=r"\[C,H,W\]"):
        dense_crf(image, log_probs[0])


def test_crf_cleans_noisy_labels():
    image, log_probs, truth = _scene(2)
    before = (log_probs.argmax(0) == truth).mean()
    after = (dense_crf(image, log_probs).argmax(0) == truth).mean()
    assert before < 0.8
    assert after > 0.98 and after > before


def test_parallel_matches_serial_in_order():
    items = [_scene(seed, 40, 48) for seed in range(5)]
    pairs = [(im, lp) for im, lp, _ in items]
    serial = list(refine_labels(iter(pairs), workers=1))
    parallel = list(refine_labels(iter(pairs), workers=2, timeout_s=60))
    assert len(parallel) == 5
    for s, p, (image, log_probs, _) in zip(serial, parallel, items, strict=True):
        assert p.dtype == np.uint8 and p.shape == (40, 48)
        np.testing.assert_array_equal(s, p)
        np.testing.assert_array_equal(s, dense_crf(image, log_probs).argmax(0))
    # extra CRF parameters reach the workers; the test hook works in spawned workers
    few = list(refine_labels(pairs[:2], workers=2, timeout_s=60, iterations=1, _fn=_crash_if_dark))
    np.testing.assert_array_equal(few[0], dense_crf(*pairs[0], iterations=1).argmax(0))
    with pytest.raises(TypeError, match="unknown CRF"):
        list(refine_labels(pairs, workers=1, sxy=3))


def test_worker_crash_raises_instead_of_hanging():
    image, log_probs, _ = _scene(3, 16, 16)
    # _crash_if_dark works in workers (test_parallel_matches_serial_in_order); here it kills one
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="item 0.*fewer CRF workers"):
        list(
            refine_labels(
                [(np.zeros_like(image), log_probs)] * 4, workers=2, timeout_s=60, _fn=_crash_if_dark
            )
        )
    assert time.monotonic() - start < 30


def test_stuck_worker_times_out():
    image, log_probs, _ = _scene(3, 16, 16)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="item 0 did not finish within 2 s"):
        list(refine_labels([(image, log_probs)] * 3, workers=2, timeout_s=2, _fn=_hang))
    assert time.monotonic() - start < 15
