import numpy as np
import pytest
import torch

from stego_steps.metrics import confusion, scores


def test_confusion_matches_naive_loop():
    rng = np.random.default_rng(1)
    target = rng.integers(-2, 7, size=(4, 17, 23))
    target[0, 0, :5] = 255
    pred = rng.integers(0, 9, size=target.shape)
    want = np.zeros((9, 6), np.int64)
    for p, t in zip(pred.ravel(), target.ravel(), strict=True):
        if 0 <= t < 6:
            want[p, t] += 1
    got = confusion(pred, target, 9, 6)
    assert got.dtype == np.int64 and got.shape == (9, 6)
    np.testing.assert_array_equal(got, want)
    # torch tensors of other integer types give the same counts
    np.testing.assert_array_equal(
        confusion(torch.as_tensor(pred, dtype=torch.uint8), torch.as_tensor(target), 9, 6), want
    )


def test_confusion_ignores_labels_outside_range():
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    target = np.array([[0, -1, 1], [255, 3, 2]])
    want = np.zeros((3, 3), np.int64)
    want[0, 0] = want[1, 1] = want[2, 2] = 1
    np.testing.assert_array_equal(confusion(pred, target, 3, 3), want)


def test_confusion_rejects_bad_predictions():
    target = np.array([0, 1, -1])
    # an out-of-range prediction on an ignored pixel is harmless
    assert confusion(np.array([0, 1, 7]), target, 2, 2).sum() == 2
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([0, 2, 0]), target, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([-1, 0, 0]), target, 2, 2)
    with pytest.raises(ValueError, match="pixels"):
        confusion(np.array([0, 1]), target, 2, 2)
    with pytest.raises(ValueError, match="integer"):
        confusion(np.array([0.0, 1.0, 0.0]), target, 2, 2)


def test_scores_hand_example_identity():
    s = scores(np.array([[5, 1], [2, 4]]))
    # per-class IoU is a fraction, accuracy and mIoU are percentages
    # tp = 5, 4; union_0 = 7 + 6 - 5 = 8; union_1 = 5 + 6 - 4 = 7
    np.testing.assert_allclose(100 * s["iou"], [62.5, 400 / 7])
    assert s["miou"] == pytest.approx((62.5 + 400 / 7) / 2)
    assert s["pixel_accuracy"] == pytest.approx(75.0)
    np.testing.assert_array_equal(s["assignment"], [0, 1])


def test_scores_hand_example_swapped():
    conf = np.array([[1, 5], [4, 2]])
    s = scores(conf)
    np.testing.assert_array_equal(s["assignment"], [1, 0])
    # class 0 <- cluster 1: tp 4, union 5 + 6 - 4 = 7; class 1 <- cluster 0: tp 5, union 7 + 6 - 5 = 8
    np.testing.assert_allclose(100 * s["iou"], [400 / 7, 62.5])
    assert s["pixel_accuracy"] == pytest.approx(75.0)
    # identity mapping (linear probe): tp 1, 2; unions 5 + 6 - 1 = 10, 7 + 6 - 2 = 11
    s = scores(conf, hungarian=False)
    np.testing.assert_allclose(100 * s["iou"], [10.0, 200 / 11])
    assert s["pixel_accuracy"] == pytest.approx(25.0)
    np.testing.assert_array_equal(s["assignment"], [0, 1])


def test_extra_clusters_count_as_errors():
    conf = np.array([[6, 0], [0, 4], [2, 3]])
    s = scores(conf)
    np.testing.assert_array_equal(s["assignment"], [0, 1, -1])
    # the official metric would drop cluster 2 and report 100 / 100
    assert s["pixel_accuracy"] == pytest.approx(100 * 10 / 15)
    # union_0 = 8 + 6 - 6 = 8, union_1 = 7 + 4 - 4 = 7
    np.testing.assert_allclose(100 * s["iou"], [75.0, 400 / 7])
    assert s["n_pixels"] == 15


def test_empty_union_class_is_excluded():
    s = scores(np.array([[4, 1, 0], [1, 3, 0], [0, 0, 0]]))
    assert np.isnan(s["iou"][2])
    # class 0: 4 / (5 + 5 - 4); class 1: 3 / (4 + 4 - 3)
    assert s["miou"] == pytest.approx((400 / 6 + 60) / 2)
    assert s["pixel_accuracy"] == pytest.approx(700 / 9)
    # a class absent from the labels whose cluster still predicts pixels scores 0 and is averaged in
    s = scores(np.array([[4, 1, 0], [1, 3, 0], [2, 0, 0]]))
    np.testing.assert_allclose(100 * s["iou"], [50.0, 60.0, 0.0])
    assert s["miou"] == pytest.approx(110 / 3)
    assert s["pixel_accuracy"] == pytest.approx(700 / 11)


def test_fewer_clusters_than_classes():
    conf = np.array([[3, 0, 1], [0, 2, 1]])
    for hungarian in (True, False):
        s = scores(conf, hungarian=hungarian)
        np.testing.assert_allclose(100 * s["iou"], [75.0, 200 / 3, 0.0])
        assert s["pixel_accuracy"] == pytest.approx(500 / 7)


def test_permuted_perfect_clustering_scores_100():
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 5, size=(3, 20, 20))
    perm = np.array([3, 0, 4, 1, 2])
    pred = np.where(target >= 0, perm[np.clip(target, 0, None)], 0)
    s = scores(confusion(pred, target, 5, 5))
    assert s["pixel_accuracy"] == pytest.approx(100.0)
    assert s["miou"] == pytest.approx(100.0)
    np.testing.assert_array_equal(s["assignment"][perm], np.arange(5))


def test_scores_rejects_empty_and_bad_shape():
    with pytest.raises(ValueError, match="empty"):
        scores(np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        scores(np.zeros(3, np.int64))
