"""Label-free calibration of the loss shifts: the quantile rule, the choice among candidates by the CRF
agreement, determinism, and that labels are never read."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stego_steps import calibration, knn, plots
from stego_steps.errors import UserError
from stego_steps.loss import correlation_term, feature_correlation
from stego_steps.stages import calibrate
from stego_steps.store import FeatureStore

SETTINGS = {
    "code_dim": 6, "dropout": 0.1, "batch_size": 4, "steps": 12, "lr": 5e-4, "checkpoint_every": 5,
    "samples": 5, "negatives": 3, "spatial_centering": True, "zero_clamp": True,
    "weights": {"self": 0.67, "knn": 0.25, "random": 0.63}, "shifts": {"self": 0.08, "knn": 0.02, "random": 0.76},
    "neighbours": 3, "seed": 0, "calibrate": "auto", "kind": "directory", "backbone": "synthetic",
    "calibration": {"candidates": [{"self": 0.5, "knn": 0.5, "random": 0.9}], "batches": 3,
                    "values_per_batch": 500, "selection": {"steps": 6, "images": 4, "ratio": 0.8}},
    "cluster": {"extra_clusters": 0, "iterations": 5, "batch_images": 4, "init_images": 8, "n_init": 1},
}
# Two candidates: the stage trains a short head for each and chooses by the CRF agreement.
SELECTING = {**SETTINGS, "calibration": {**SETTINGS["calibration"], "candidates": [
    {"self": 0.7, "knn": 0.7, "random": 0.95}, {"self": 0.2, "knn": 0.1, "random": 1.0}]}}
COLOURS = np.array([[200, 30, 30], [30, 30, 200], [30, 200, 30]], np.uint8)


def with_images(store_path, tmp_path):
    """Give the synthetic store sample ids and the training images behind it (each half coloured by its
    class), listed in an index CSV as `prepare` writes it. Returns the index path."""
    rows = []
    with h5py.File(store_path, "a") as f:
        labels = f["label"][...]
        f["ids"] = np.array([f"s{i:03d}".encode() for i in range(len(labels))])
    for i, label in enumerate(labels):
        path = tmp_path / f"s{i:03d}.png"
        Image.fromarray(COLOURS[label]).save(path)
        rows.append({"id": f"s{i:03d}", "image": str(path), "label": "", "x0": None, "y0": None, "x1": None,
                     "y1": None})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path / "train.csv"


def test_quantile_shifts_on_known_distributions():
    # Values 0, 1/1000, ..., 1: the q-quantile (linear interpolation) is exactly q.
    uniform = np.arange(1001) / 1000
    shifts = calibration.quantile_shifts({"self": uniform, "knn": uniform * 2, "random": uniform - 1},
                                       {"self": 0.5, "knn": 0.25, "random": 0.9})
    assert shifts == pytest.approx({"self": 0.5, "knn": 0.5, "random": -0.1}, abs=1e-12)
    stats = calibration.term_statistics(uniform, preset_shift=0.3)
    # 300 of the 1001 values lie below 0.3: the fraction of pairs a shift of 0.3 makes repel.
    assert stats["preset_shift_quantile"] == 300 / 1001
    assert stats["quantiles"]["0.50"] == 0.5 and stats["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must lie in"):
        calibration.quantile_shifts({"self": uniform, "knn": uniform, "random": uniform},
                                  {"self": 1.5, "knn": 0.5, "random": 0.5})


def test_shifted_distribution_gives_a_shifted_shift():
    # A backbone whose correlations are all higher by 0.3 gets shifts higher by 0.3: the same balance.
    rng = np.random.default_rng(0)
    values = {t: rng.normal(0.1 * i, 0.2, 5000) for i, t in enumerate(("self", "knn", "random"))}
    targets = {"self": 0.3, "knn": 0.6, "random": 0.95}
    base = calibration.quantile_shifts(values, targets)
    moved = calibration.quantile_shifts({t: v + 0.3 for t, v in values.items()}, targets)
    assert moved == pytest.approx({t: b + 0.3 for t, b in base.items()}, abs=1e-9)


def test_feature_correlation_is_what_the_loss_compares_with_the_shift():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    c1, c2 = torch.rand(2, 5, 4, 4, generator=g), torch.rand(2, 5, 4, 4, generator=g)
    for centering in (True, False):
        fd = feature_correlation(f1, f2, spatial_centering=centering)
        loss, cd = correlation_term(f1, f2, c1, c2, 0.1, spatial_centering=centering)
        assert torch.equal(loss, -cd.clamp(min=0) * (fd - 0.1))
    # Spatial centering: every anchor point's mean over the partner's points is the batch-wide mean.
    fd = feature_correlation(f1, f2)
    torch.testing.assert_close(fd.mean(dim=(3, 4)), torch.full((2, 4, 4), fd.mean().item()), atol=1e-6, rtol=0)


def test_auto_mode():
    assert calibration.calibration_enabled("auto", "directory", "dino_vitb8")[0]
    assert not calibration.calibration_enabled("auto", "demo", "efficientnet_lite0")[0]
    assert calibration.calibration_enabled("auto", "cocostuff", "efficientnet_lite0")[0]
    assert not calibration.calibration_enabled("auto", "cocostuff", "dino_vitb8", ["dino_vitb8"])[0]
    assert calibration.calibration_enabled(True, "potsdam", "dino_vits8", ["dino_vits8"])[0]
    assert not calibration.calibration_enabled(False, "directory", "dinov2_vits14")[0]


def test_auto_mode_keeps_released_shifts_for_that_very_backbone_only():
    """A name that merely starts like the released backbone's (or another DINO ViT) is calibrated."""
    released = ["dino_vitb8"]
    assert not calibration.calibration_enabled("auto", "cocostuff", "dino_vitb8", released)[0]
    for other in ("dino_vitb8_random", "dino_vits16", "dinov3_vitb16", "dino_vitb8x"):
        on, why = calibration.calibration_enabled("auto", "cocostuff", other, released)
        assert on and other in why, other
    # Without released shifts in the preset nothing is kept, whatever the dataset kind.
    assert calibration.calibration_enabled("auto", "cocostuff", "dino_vitb8")[0]


def test_the_paper_presets_name_their_released_backbone():
    from workflow_config import workflow_config

    from stego_steps import config as C

    cfg = workflow_config()
    for ds, backbone in (("cocostuff", "dino_vitb8"), ("cityscapes", "dino_vitb8"), ("potsdam", "dino_vits8")):
        s = C.stage_settings(cfg, ds, "calibrate")
        assert s["backbone"] == backbone and s["released_shifts"] == [backbone]
        assert not calibration.calibration_enabled(s["calibrate"], s["kind"], s["backbone"], s["released_shifts"])[0]
        v3 = C.stage_settings(cfg, ds, "calibrate", variant="dinov3")
        assert v3["backbone"].startswith("dinov3_")
        assert calibration.calibration_enabled(v3["calibrate"], v3["kind"], v3["backbone"], v3["released_shifts"])[0]


def _run(store, table, tmp_path, name, settings=SETTINGS):
    np.save(tmp_path / "knn.npy", table)
    out = tmp_path / f"{name}.json"
    calibrate.main(["--features", str(store), "--knn", str(tmp_path / "knn.npy"), "--index",
                    str(tmp_path / "train.csv"), "--settings", json.dumps(settings), "--out", str(out)])
    return json.loads(out.read_text())


def test_one_candidate_is_its_quantiles(store_path, tmp_path):
    with_images(store_path, tmp_path)
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
    out = _run(store_path, table, tmp_path, "one")
    assert out["calibrated"] and out["chosen"] == 0 and out["selection"] is None
    assert "crf_agreement" not in out["candidates"][0]
    assert out["shifts"]["self"] == pytest.approx(out["statistics"]["self"]["quantiles"]["0.50"], abs=1e-6)
    assert out["quantiles"] == SETTINGS["calibration"]["candidates"][0]


def test_deterministic_and_blind_to_labels(store_path, tmp_path):
    with_images(store_path, tmp_path)
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
    first = _run(store_path, table, tmp_path, "a", SELECTING)
    assert first == _run(store_path, table, tmp_path, "b", SELECTING)
    assert first["calibrated"] and first["shifts"] != first["preset"]["shifts"]
    # The candidate the rule picks from the CRF agreements is the one used.
    scores = [c["crf_agreement"] for c in first["candidates"]]
    assert all(0.0 <= v <= 1.0 for v in scores) and first["chosen"] == calibration.choose(scores, 0.8)
    assert first["shifts"] == first["candidates"][first["chosen"]]["shifts"]
    assert first["selection"] == SELECTING["calibration"]["selection"]
    assert first["decision"] == calibration.decision(scores, 0.8) and first["decision"]["chosen"] == first["chosen"]
    # The same features without labels, and with other labels: the same artifact, to the bit.
    unlabelled, scrambled = tmp_path / "unlabelled.h5", tmp_path / "scrambled.h5"
    for path in (unlabelled, scrambled):
        with h5py.File(store_path, "r") as src, h5py.File(path, "w") as dst:
            for key in src:
                if key != "label":
                    src.copy(key, dst)
            dst.attrs.update(src.attrs)
            if path == scrambled:
                dst["label"] = np.random.default_rng(1).integers(0, 3, src["label"].shape).astype(np.int16)
    assert _run(unlabelled, table, tmp_path, "c", SELECTING) == first
    assert _run(scrambled, table, tmp_path, "d", SELECTING) == first
    # Another seed samples other points: other statistics.
    assert _run(store_path, table, tmp_path, "e", {**SETTINGS, "seed": 1})["shifts"] != \
        _run(store_path, table, tmp_path, "f")["shifts"]


def test_another_candidate_replaces_the_default_only_when_the_crf_changes_clearly_less():
    # Changes 0.25 (default) against 0.15: 0.6 times as many, fewer than 0.8 times → the second.
    assert calibration.choose([0.75, 0.85], 0.8) == 1
    # 0.25 against 0.22: 0.88 times, not enough → the default; and a worse one never replaces it.
    assert calibration.choose([0.75, 0.78], 0.8) == 0 and calibration.choose([0.75, 0.6], 0.8) == 0
    # Exactly 0.8 times qualifies; among several that qualify, the one the CRF changes least.
    assert calibration.choose([0.5, 0.6], 0.8) == 1 and calibration.choose([0.5, 0.7, 0.9, 0.8], 0.8) == 2
    # ratio 1: plain "fewest changes", ties to the first.
    assert calibration.choose([0.8, 0.8, 0.7], 1.0) == 0


def test_decision_says_how_close_the_choice_was():
    # Changes 0.25 against 0.15: 0.6 of the default's, 0.2 below the threshold 0.8 → a clear replacement.
    made = calibration.decision([0.75, 0.85], 0.8)
    assert made["chosen"] == 1 and made["regime"] == "candidate 2" and made["confidence"] == "clear"
    assert made["change_ratio"] == pytest.approx(0.6) and made["margin"] == pytest.approx(0.2)
    # 0.25 against 0.22: 0.88, kept the default, but within 0.1 of the threshold → close.
    made = calibration.decision([0.75, 0.78], 0.8)
    assert made["chosen"] == 0 and made["regime"] == "default" and made["confidence"] == "close"
    # The best other is the one the CRF changes least, also when the default is kept.
    assert calibration.decision([0.5, 0.55, 0.58], 0.8)["best_other"] == 2


def test_crf_agreement_prefers_clusters_that_follow_the_image(store_path):
    # An image with a red left half and a blue right half; codes on an 8×8 grid (4 pixels a cell) in two
    # clusters split at the colour edge, one cell off it, or at the edge with four isolated wrong cells. The CRF
    # keeps the first and moves the wrong pixels of the others (a whole column of cells: 1/8; four cells: 4/64).
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[:, :16], picture[:, 16:] = COLOURS[0], COLOURS[1]
    centroids = np.eye(2, dtype=np.float32)

    def codes(split, wrong=()):
        code = torch.zeros(1, 2, 8, 8)
        code[:, 0, :, :split], code[:, 1, :, split:] = 1.0, 1.0
        for i, j in wrong:
            code[0, :, i, j] = code[0, :, i, j].flip(0)
        return lambda f: code

    def agreement(embed):
        with FeatureStore(store_path) as store:
            return calibration.crf_agreement(embed, store, np.array([0]), [picture], centroids, workers=1)

    aligned = agreement(codes(4))
    assert aligned > 0.99
    assert agreement(codes(3)) < aligned - 0.1
    assert agreement(codes(4, [(1, 1), (5, 2), (2, 6), (6, 5)])) < aligned - 0.03


def test_training_images_must_match_the_store(store_path, tmp_path):
    index = pd.read_csv(with_images(store_path, tmp_path), dtype={"id": str})
    with FeatureStore(store_path) as store:
        pictures = calibration.training_images(index, store, np.array([0, 5]))
        assert [p.shape for p in pictures] == [(32, 32, 3)] * 2
        with h5py.File(store_path, "r") as f:
            assert np.array_equal(pictures[1], COLOURS[f["label"][5]])
        with pytest.raises(UserError, match="does not list"):
            calibration.training_images(index.iloc[1:], store, np.array([0]))


def test_off_keeps_the_preset_and_still_reports(store_path, tmp_path):
    with_images(store_path, tmp_path)
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
    out = _run(store_path, table, tmp_path, "off", {**SELECTING, "calibrate": False})
    assert not out["calibrated"] and out["shifts"] == SETTINGS["shifts"] and out["chosen"] is None
    assert 0.0 <= out["statistics"]["random"]["preset_shift_quantile"] <= 1.0
    assert out["statistics"]["knn"]["n"] == 3 * 500
    # No candidate was computed, compared or used: none is recorded, and the artifact says whose shifts these are.
    assert out["candidates"] == [] and out["quantiles"] is None and out["selection"] is None
    assert out["shifts_from"] == "the preset's shifts" and out["reason"] == "calibrate: false in the configuration"
    released = _run(store_path, table, tmp_path, "released", {**SELECTING, "released_shifts": ["synthetic"]})
    assert not released["calibrated"] and released["candidates"] == [] and released["shifts"] == SETTINGS["shifts"]
    assert released["shifts_from"] == "the preset's shifts, the released ones tuned for synthetic"
    assert released["reason"] == "auto: the preset holds the released shifts for synthetic"
    shown = plots.calibration_table(released)
    assert shown["setting"].tolist() == ["preset"] and shown["used"].tolist() == [True]


def test_on_says_which_candidate_gave_the_shifts(store_path, tmp_path):
    with_images(store_path, tmp_path)
    with FeatureStore(store_path) as store:
        table = knn.knn_table(store.read("pooled"), 3)
    out = _run(store_path, table, tmp_path, "on")
    assert out["shifts_from"] == ("calibrated: candidate 1 of 1, each term's shift at the quantile of its feature "
                                  "correlation on the training features (self 0.5, knn 0.5, random 0.9)")
