"""The probes of the evaluation and the rows of its table (a module without torch, for the stages that only
read predictions)."""

from __future__ import annotations

# Every probe of the evaluation: the K-Means of the head's codes, the supervised linear probe (a diagnostic
# that needs labels), and the same two on the raw backbone features (the paper's baselines).
PROBES = ("cluster", "linear", "backbone_kmeans", "backbone_linear")
SUPERVISED_PROBES = ("linear", "backbone_linear")
# The probes of the raw backbone features (the baselines), computed once per feature store and seed and shared
# by every variant that uses them.
BASELINE_PROBES = ("backbone_kmeans", "backbone_linear")
UNSUPERVISED_PROBES = tuple(p for p in PROBES if p not in SUPERVISED_PROBES)
# The STEGO loss's three terms (stego_steps.loss): the columns of the training log and of the pictures of it.
TERMS = ("self", "knn", "random")
# (probe, crf) rows of the table, in the order of PROBES: every probe without and with the CRF (the CRF does
# not help every probe equally, so each comparison is shown both ways).
ROWS = tuple((probe, crf) for probe in PROBES for crf in (False, True))


def row_key(probe: str, crf: bool) -> str:
    """The name of an evaluated row's files (`cluster_crf`, `linear_raw`, ...): its confusion and mapping tables,
    its figures, the mapping that segment_images reads."""
    return f"{probe}_{'crf' if crf else 'raw'}"
