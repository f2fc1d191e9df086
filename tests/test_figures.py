"""Pictures of a run: colours, panels, metrics and training figures, loss-term correlations."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stego_steps import correlations, label_maps, loss, plots, protocol
from stego_steps.stages import figures
from stego_steps.store import FeatureStore


def test_palette_is_distinct_and_stable():
    for n in (3, 10, 27, 70):
        colours = label_maps.palette(n)
        assert colours.shape == (n, 3) and colours.dtype == np.uint8
        assert len({tuple(c) for c in colours}) == n
        np.testing.assert_array_equal(colours, label_maps.palette(n))


def test_colourize_goes_through_the_mapping():
    colours = label_maps.palette(3)
    lut = np.array([2, -1, 0])  # cluster 0 → class 2, cluster 1 unmatched, cluster 2 → class 0
    out = plots.colourize(np.array([[0, 1, 2]]), colours, lut)
    np.testing.assert_array_equal(out[0], [colours[2], plots.UNMATCHED, colours[0]])
    truth = plots.colourize(np.array([[-1, 1]]), colours)
    np.testing.assert_array_equal(truth[0], [plots.UNLABELLED, colours[1]])


def test_self_correlations_without_centering_hold_the_diagonal(store_path):
    knn = np.tile(np.arange(24)[:, None], (1, 8))
    knn[:, 1:] = (knn[:, 1:] + np.arange(1, 8)) % 24
    settings = {"batch_size": 8, "neighbours": 7, "spatial_centering": False, "samples": 5, "negatives": 2}
    with FeatureStore(store_path) as store:
        values = correlations.term_correlations(store, knn, settings, batches=3, seed=1, dropout=False)
        again = correlations.term_correlations(store, knn, settings, batches=3, seed=1, dropout=False)
    assert {k: len(v) for k, v in values.items()} == {"self": 3 * 8 * 5**4, "knn": 3 * 8 * 5**4,
                                                       "random": 3 * 2 * 8 * 5**4}
    for k in values:
        np.testing.assert_array_equal(values[k], again[k])  # seeded
    # every point meets itself in the self term: the cosine of a vector with itself (float32 rounding)
    diagonal = values["self"].reshape(3, 8, 25, 25)[:, :, np.arange(25), np.arange(25)]
    np.testing.assert_allclose(diagonal, 1.0, atol=1e-5)
    assert values["self"].max() <= 1 + 1e-5 and values["random"].min() >= -1 - 1e-5
    summary = plots.correlation_summary(values, {"self": 0.5, "knn": 0.2, "random": 0.9})
    assert summary["term"].tolist() == ["self", "knn", "random"]
    assert summary.loc[0, "share_above_shift"] == pytest.approx(100 * (values["self"] > 0.5).mean())


def test_feature_correlation_is_what_the_loss_compares_with_the_shift():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    c = torch.randn(2, 3, 4, 4, generator=g)
    elements, code_corr = loss.correlation_term(f1, f2, c, c, 0.3)
    expected = -code_corr.clamp(min=0) * (loss.feature_correlation(f1, f2) - 0.3)
    torch.testing.assert_close(elements, expected, rtol=0, atol=0)


def _png(path):
    with Image.open(path) as img:
        return img.size


def test_figure_commands_write_pictures(tmp_path):
    steps = pd.DataFrame({"step": np.arange(1, 21), "self": np.linspace(1, 0, 20), "knn": 0.5, "random": -0.1,
                          "total": np.linspace(2, 1, 20), "seconds": 0.1})
    steps.to_csv(tmp_path / "train_log.csv", index=False)
    figures.main(["training", "--log-csv", str(tmp_path / "train_log.csv"), "--out", str(tmp_path / "t.png")])
    assert min(_png(tmp_path / "t.png")) > 100
    names = ["sky", "tree", "road"]
    conf_dir = tmp_path / "confusion"
    conf_dir.mkdir()
    rows = []
    for probe, crf in protocol.ROWS:
        key = protocol.row_key(probe, crf)
        table = pd.DataFrame({"cluster": [0, 1, 2], "class": ["tree", "", "sky"], "sky": [1, 2, 30],
                              "tree": [20, 1, 0], "road": [3, 9, 1]})
        table.to_csv(conf_dir / f"{key}.csv", index=False)
        rows += [{"probe": probe, "crf": crf, "class": n, "iou": 10.0 * k} for k, n in enumerate(names)]
    pd.DataFrame(rows).to_csv(tmp_path / "per_class.csv", index=False)
    figures.main(["metrics", "--confusion", str(conf_dir), "--per-class", str(tmp_path / "per_class.csv"),
                  "--out-dir", str(tmp_path / "figs")])
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == sorted([f"confusion_{protocol.row_key(p, c)}.png" for p, c in protocol.ROWS]
                             + ["per_class_iou.png"])


def test_panels_colour_every_probe(tmp_path):
    from conftest import write_store

    path = write_store(tmp_path / "val.h5", n=5, res=16, grid=4, evaluation=True)
    segments = []
    for probe in ("cluster", "linear", "backbone_kmeans"):
        seg = tmp_path / f"{probe}.0.h5"
        import h5py

        with h5py.File(seg, "w") as f:
            f["raw"] = np.random.default_rng(0).integers(0, 3, (5, 16, 16)).astype(np.uint8)
            f["crf"] = np.random.default_rng(1).integers(0, 3, (5, 16, 16)).astype(np.uint8)
            f.attrs.update(start=0, stop=5, probe=probe)
        segments.append(str(seg))
    mapping = tmp_path / "mapping"
    mapping.mkdir()
    for probe, crf in protocol.ROWS:
        pd.DataFrame({"cluster": [0, 1, 2], "class_id": [1, 2, 0], "class": ["c1", "c2", "c0"],
                      "matched_pixels": 1, "cluster_pixels": 1}).to_csv(
            mapping / f"{protocol.row_key(probe, crf)}.csv", index=False)
    figures.main(["panels", "--features", str(path), "--segments", *segments, "--mapping", str(mapping),
                  "--count", "3", "--out", str(tmp_path / "panels.png")])
    figures.main(["panels", "--features", str(path), "--segments", *segments[::2], "--count", "2",
                  "--out", str(tmp_path / "unlabelled.png")])
    w, h = _png(tmp_path / "panels.png")
    w2, h2 = _png(tmp_path / "unlabelled.png")
    assert w > w2 and h > h2  # 6 columns × 3 rows against 4 columns × 2 rows
    assert json.loads(json.dumps(plots.panel_indices(60, 6).tolist())) == [0, 12, 24, 35, 47, 59]


def test_calibration_table_marks_the_shifts_used():
    preset = {"self": 0.08, "knn": 0.02, "random": 0.76}
    cands = [{"quantiles": {"self": 0.2, "knn": 0.1, "random": 1.0}, "shifts": {"self": 0.1, "knn": 0.0,
                                                                                 "random": 0.9},
              "crf_agreement": 0.8},
             {"quantiles": {"self": 0.7, "knn": 0.7, "random": 0.95}, "shifts": {"self": 0.3, "knn": 0.2,
                                                                                  "random": 0.4},
              "crf_agreement": 0.9}]
    chosen = plots.calibration_table({"calibrated": True, "chosen": 1, "preset": {"shifts": preset},
                                        "candidates": cands})
    assert chosen["setting"].tolist() == ["preset", "candidate 1", "candidate 2"]
    assert chosen["used"].tolist() == [False, False, True]
    assert chosen["shift_random"].tolist() == [0.76, 0.9, 0.4] and chosen["crf_agreement"].iloc[2] == 0.9
    assert chosen["quantile_self"].iloc[1] == 0.2 and np.isnan(chosen["quantile_self"].iloc[0])
    # Changes 0.1 against the default's 0.2; no decision recorded (an artifact of older code): no confidence.
    assert chosen["crf_changes_vs_default"].iloc[1:].tolist() == pytest.approx([1.0, 0.5])
    assert chosen["confidence"].isna().all()
    made = plots.calibration_table({"calibrated": True, "chosen": 1, "preset": {"shifts": preset},
                                    "candidates": cands, "decision": {"confidence": "clear"}})
    assert made["confidence"].isna().tolist() == [True, True, False] and made["confidence"].iloc[2] == "clear"
    off = plots.calibration_table({"calibrated": False, "chosen": None, "preset": {"shifts": preset},
                                     "candidates": cands})
    assert off["used"].tolist() == [True, False, False]
