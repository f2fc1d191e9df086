"""The supervised linear probe: masked cross-entropy at label resolution, and that it learns."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stego_steps import linear_probe
from stego_steps.head import SegmentationHead
from stego_steps.store import FeatureStore


def test_loss_ignores_unlabeled_and_out_of_range_pixels():
    conv = torch.nn.Conv2d(2, 3, 1)
    code = torch.randn(1, 2, 2, 2)
    labels = torch.tensor([[[0, -1, 2, 7], [1, 1, -1, 0], [2, 2, 2, 2], [0, 0, 0, 0]]])
    logits = F.interpolate(conv(code), size=(4, 4), mode="bilinear", align_corners=False)
    keep = (labels >= 0) & (labels < 3)
    want = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert float(linear_probe.probe_loss(conv, code, labels)) == pytest.approx(float(want), rel=1e-6)
    assert float(linear_probe.probe_loss(conv, code, torch.full((1, 4, 4), -1))) == 0.0


def test_probe_learns_the_synthetic_classes(store_path):
    with FeatureStore(store_path) as store:
        head = SegmentationHead(store.dim, store.dim, dropout=0.0).eval()
        conv, losses = linear_probe.train_probe(store, head, 3, steps=60, batch_size=8, lr=5e-2, seed=0)
        with torch.no_grad():
            code = head(store.batch(np.arange(store.n)))
            logits = F.interpolate(conv(code), size=(32, 32), mode="bilinear", align_corners=False)
        accuracy = (logits.argmax(1).numpy() == store.read("label")).mean()
    assert losses[-1] < losses[0] and accuracy > 0.95
