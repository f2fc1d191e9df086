"""Predict (flip TTA codes) and segment (log-probabilities, argmax, CRF) on a synthetic evaluation store."""

import h5py
import numpy as np
import torch
from helpers import write_store

from stego_steps import head, label_maps
from stego_steps.codes import predict_codes
from stego_steps.head import SegmentationHead, flip_tta_code
from stego_steps.store import FeatureStore


def test_predict_writes_the_flip_averaged_codes(tmp_path):
    path = write_store(tmp_path / "val.h5", n=5, evaluation=True)
    torch.manual_seed(0)
    head = SegmentationHead(16, 4).eval()
    with FeatureStore(path, max_memory_gb=0) as store:
        predict_codes(store, head, tmp_path / "codes.h5", batch_size=2)
        feats = store.batch(np.arange(5))
        flips = torch.from_numpy(store.read("feats_flip").astype(np.float32))
    with h5py.File(tmp_path / "codes.h5") as f:
        codes = torch.from_numpy(f["codes"][...])
    torch.testing.assert_close(codes, flip_tta_code(head, feats, flips).detach())


def test_segment_gives_argmax_and_crf_maps(tmp_path):
    path = write_store(tmp_path / "val.h5", n=4, evaluation=True)
    with FeatureStore(path, max_memory_gb=0) as store:
        protos = np.stack([store.batch([0])[0, :, 0, 0].numpy(), store.batch([0])[0, :, 0, -1].numpy(),
                           np.random.default_rng(0).standard_normal(16)])
        raw, crf = label_maps.segment(lambda i: store.batch([i]), store.dataset("image"), range(1, 3),
                                   head.cluster_log_probs(protos), crf_workers=1)
    assert raw.shape == crf.shape == (2, 32, 32) and raw.dtype == crf.dtype == np.uint8
    assert raw.max() < 3 and crf.max() < 3


def test_a_partial_crf_shard_resumes_after_its_finished_images_and_only_for_its_inputs(tmp_path):
    path, partial = write_store(tmp_path / "val.h5", n=4, evaluation=True), tmp_path / "seg.h5.partial"
    with FeatureStore(path, max_memory_gb=0) as store:
        protos = np.random.default_rng(0).standard_normal((3, 16))

        def run(key: str) -> tuple[np.ndarray, np.ndarray]:
            return label_maps.segment(lambda i: store.batch([i]), store.dataset("image"), range(4),
                                   head.cluster_log_probs(protos), crf_workers=1, partial=partial, key=key)

        raw, crf = run("a")
        with h5py.File(partial, "a") as f:  # as if killed after two images, with a mark of what it wrote
            f.attrs["done"] = 2
            f["crf"][:2] = 7
        resumed_raw, resumed_crf = run("a")
        np.testing.assert_array_equal(resumed_crf[:2], 7)  # read back, not recomputed
        np.testing.assert_array_equal(resumed_crf[2:], crf[2:])
        np.testing.assert_array_equal(resumed_raw, raw)
        with h5py.File(partial, "a") as f:
            f.attrs["done"] = 2
        np.testing.assert_array_equal(run("other inputs")[1], crf)  # discarded and recomputed
