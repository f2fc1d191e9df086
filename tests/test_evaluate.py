"""The evaluation table from shards of predictions, and segmentation log-probabilities."""

import h5py
import numpy as np
import pytest
import torch

from stego_steps import evaluation, head, label_maps, store


def test_evaluate_rows_for_a_permuted_perfect_clustering():
    labels = np.random.default_rng(0).integers(-1, 3, (4, 10, 10))
    perm = np.array([2, 0, 1])
    perfect = perm[np.clip(labels, 0, None)].astype(np.uint8)
    preds = {"cluster": {False: perfect, True: perfect},
             "linear": {False: np.clip(labels, 0, None), True: np.zeros_like(perfect)},
             "backbone_kmeans": {False: perfect, True: perfect},
             "backbone_linear": {False: perfect, True: np.clip(labels, 0, None)}}
    rows, conf = evaluation.evaluate(labels, preds, {probe: 3 for probe in preds}, 3)
    assert [(r["probe"], r["crf"]) for r in rows] == list(evaluation.ROWS)
    by = {(r["probe"], r["crf"]): r for r in rows}
    assert by["cluster", True]["miou"] == pytest.approx(100.0)
    assert by["linear", False]["miou"] == pytest.approx(100.0)  # identity mapping, no Hungarian
    valid = labels >= 0
    assert by["linear", True]["pixel_accuracy"] == pytest.approx(100.0 * (labels[valid] == 0).mean())
    # Linear probes (also on the raw features) are not matched: a permuted map scores below 100.
    assert by["backbone_linear", False]["miou"] < 100.0 and by["backbone_linear", True]["miou"] == pytest.approx(100.0)
    assert conf["cluster_crf"].sum() == valid.sum()


def test_shards_are_stitched_and_gaps_detected(tmp_path):
    paths = []
    for shard, (start, stop) in enumerate([(0, 2), (2, 5)]):
        path = tmp_path / f"cluster.{shard}.h5"
        with h5py.File(path, "w") as f:
            f["raw"] = np.full((stop - start, 3, 3), shard, np.uint8)
            f["crf"] = np.full((stop - start, 3, 3), shard + 5, np.uint8)
            f.attrs.update(start=start, stop=stop, probe="cluster", n_clusters=3)
        paths.append(path)
    out = label_maps.read_predictions(paths[::-1], "cluster", 5)
    assert out[False][:, 0, 0].tolist() == [0, 0, 1, 1, 1] and out[True][:, 0, 0].tolist() == [5, 5, 6, 6, 6]
    with pytest.raises(ValueError, match="do not cover"):
        label_maps.read_predictions(paths[:1], "cluster", 5)


def test_shard_ranges_partition_the_images():
    covered = [i for s in range(4) for i in store.shard_range(10, s, 4)]
    assert covered == list(range(10))
    with pytest.raises(ValueError):
        store.shard_range(10, 4, 4)


def test_cluster_log_probs_are_the_official_tempered_cosine():
    centroids = np.array([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[3.0, 0.0]])[:, :, None, None]  # cos = (1, 0)
    lp = head.cluster_log_probs(centroids)(x)[:, :, 0, 0]
    torch.testing.assert_close(lp, torch.log_softmax(torch.tensor([[2.0, 0.0]]), dim=1))
    up = head.log_probs_at(torch.randn(1, 2, 4, 4), 16, head.cluster_log_probs(centroids))
    assert up.shape == (2, 16, 16)
    np.testing.assert_allclose(np.exp(up).sum(0), 1.0, rtol=1e-5)


def test_cluster_counts_come_from_the_segment_shards(tmp_path):
    paths = []
    for name, probe, k in (("a", "cluster", 7), ("b", "cluster", 7), ("c", "linear", 3)):
        paths.append(tmp_path / f"{name}.h5")
        with h5py.File(paths[-1], "w") as f:
            f.attrs.update(probe=probe, n_clusters=k)
    assert evaluation.segment_clusters(paths) == {"cluster": 7, "linear": 3}
    with h5py.File(paths[1], "a") as f:
        f.attrs["n_clusters"] = 8
    with pytest.raises(ValueError, match="disagree on the number of clusters"):
        evaluation.segment_clusters(paths)


def test_rows_follow_the_declared_probes():
    assert [probe for probe, crf in evaluation.ROWS if crf] == list(head.PROBES)
    assert set(head.UNSUPERVISED_PROBES) | set(head.SUPERVISED_PROBES) == set(head.PROBES)


def test_mapping_and_confusion_tables_name_the_classes():
    conf = np.array([[5, 1, 0], [0, 0, 7], [2, 9, 0], [1, 1, 1]])  # 4 clusters, 3 classes
    s = evaluation.metrics.scores(conf)
    names = ["sky", "tree", "road"]
    mapping = evaluation.mapping_table(conf, s["assignment"], names)
    assert mapping["class"].tolist() == ["sky", "road", "tree", ""]
    assert mapping["class_id"].tolist() == [0, 2, 1, -1]
    assert mapping["matched_pixels"].tolist() == [5, 7, 9, 0]
    assert mapping["cluster_pixels"].tolist() == [6, 7, 11, 3]
    table = evaluation.confusion_table(conf, mapping, names)
    assert table.columns.tolist() == ["cluster", "class", *names]
    np.testing.assert_array_equal(table[names].to_numpy(), conf)


def _segment_shards(tmp_path, maps, bounds):
    """Segment shard files of every probe in `maps` (probe → (raw, crf, k)), cut at `bounds`."""
    paths = []
    for probe, (raw, crf, k) in maps.items():
        for start, stop in zip(bounds, bounds[1:], strict=False):
            paths.append(tmp_path / f"{probe}.{start}.h5")
            with h5py.File(paths[-1], "w") as f:
                f["raw"], f["crf"] = raw[start:stop], crf[start:stop]
                f.attrs.update(start=start, stop=stop, probe=probe, n_clusters=k)
    return paths[::-1]  # out of order, as a glob may list them


def test_streamed_evaluation_equals_the_whole_array_one(tmp_path):
    rng = np.random.default_rng(3)
    n, size, n_classes = 11, 6, 4
    labels = rng.integers(-1, n_classes, (n, size, size)).astype(np.int16)
    ks = {"cluster": 6, "linear": 4, "backbone_kmeans": 5, "backbone_linear": 4}  # extra clusters unmatched
    maps = {p: (rng.integers(0, k, (n, size, size)).astype(np.uint8),
                rng.integers(0, k, (n, size, size)).astype(np.uint8), k) for p, k in ks.items()}
    paths = _segment_shards(tmp_path, maps, [0, 3, 4, 11])
    with h5py.File(tmp_path / "labels.h5", "w") as f:
        f.create_dataset("label", data=labels, chunks=(2, size, size), compression="gzip")
    whole = {p: label_maps.read_predictions(paths, p, n) for p in ks}
    rows, conf = evaluation.evaluate(labels, whole, ks, n_classes)
    with h5py.File(tmp_path / "labels.h5", "r") as f:  # read block by block: 2 images at a time
        blocks = {p: label_maps.iter_predictions(paths, p, n, images_per_read=2) for p in ks}
        streamed_rows, streamed_conf = evaluation.evaluate_blocks(f["label"], blocks, ks, n_classes)
    assert list(streamed_conf) == list(conf)
    for key in conf:
        assert streamed_conf[key].dtype == np.int64 and np.array_equal(streamed_conf[key], conf[key])
    names = [f"c{i}" for i in range(n_classes)]
    tables = [evaluation.score_tables(r, names, dataset="d", backbone="b", n_images=n) for r in (rows, streamed_rows)]
    for whole_table, streamed_table in zip(*tables, strict=True):
        assert whole_table.equals(streamed_table)  # bit-identical, not approximately equal
    for r, s in zip(rows, streamed_rows, strict=True):
        assert np.array_equal(r["assignment"], s["assignment"])
        assert np.array_equal(r["iou"], s["iou"], equal_nan=True)


def test_cluster_shares_are_counted_block_by_block(tmp_path):
    rng = np.random.default_rng(4)
    raw, crf = (rng.integers(0, 5, (7, 4, 4)).astype(np.uint8) for _ in range(2))
    raw = np.where(raw == 4, 3, raw).astype(np.uint8)  # cluster 4 never appears in the raw maps
    paths = _segment_shards(tmp_path, {"cluster": (raw, crf, 5)}, [0, 5, 7])
    rows = evaluation.cluster_shares({"cluster": label_maps.iter_predictions(paths, "cluster", 7, 3)},
                                     {"cluster": 5})
    for crf_row, maps in ((False, raw), (True, crf)):
        got = [r for r in rows if r["crf"] == crf_row]
        pixels = np.bincount(maps.ravel(), minlength=5)
        assert [r["pixels"] for r in got] == pixels.tolist()
        assert [r["images"] for r in got] == [int((maps == c).any(axis=(1, 2)).sum()) for c in range(5)]
        assert [r["share"] for r in got] == (100.0 * pixels / pixels.sum()).tolist()
