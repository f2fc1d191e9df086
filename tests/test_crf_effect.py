"""The per-class effect of the CRF, an output of the evaluate stage."""

import pandas as pd

from stego_steps.evaluation import crf_effect


def test_crf_effect_pairs_raw_and_crf_rows_per_class():
    rows = [("cluster", False, 0, "road", 80.0), ("cluster", True, 0, "road", 85.0),
            ("cluster", False, 1, "pole", 20.0), ("cluster", True, 1, "pole", 5.0),
            ("backbone_kmeans", True, 0, "road", 70.0), ("backbone_kmeans", True, 1, "pole", 1.0)]
    per_class = pd.DataFrame(rows, columns=["probe", "crf", "class_id", "class", "iou"])
    out = crf_effect(per_class)
    # Only probes with both rows; sorted so that the classes the CRF hurts most come first.
    assert out[["probe", "class", "iou_raw", "iou_crf", "crf_gain"]].values.tolist() == [
        ["cluster", "pole", 20.0, 5.0, -15.0], ["cluster", "road", 80.0, 85.0, 5.0]]
