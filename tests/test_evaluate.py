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
