"""The probes of the evaluation and the rows of its table (a module without torch, for the stages that only
read predictions)."""

from __future__ import annotations

# Every probe of the evaluation: the K-Means of the head's codes, the supervised linear probe (a diagnostic
# that needs labels) and the K-Means of the raw backbone features (the paper's baseline).
PROBES = ("cluster", "linear", "backbone_kmeans")
SUPERVISED_PROBES = ("linear",)
UNSUPERVISED_PROBES = tuple(p for p in PROBES if p not in SUPERVISED_PROBES)
# (probe, crf) rows of the table, in the order of PROBES; the backbone K-Means baseline is reported under the
# full protocol (with the CRF) only.
ROWS = tuple((probe, crf) for probe in PROBES for crf in (False, True) if crf or probe != "backbone_kmeans")
