"""Stage `calibrate`: label-free choice of the loss shifts from the statistics of the feature correlation.

The shift b of each loss term (self, KNN, random) decides which point pairs attract (F > b) and which repel.
The released shifts were tuned by hand for DINO on each dataset and do not transfer to other backbones or
data, whose correlations have other scales. This stage samples training batches exactly as the `train` stage
does (anchors, KNN positives drawn from ranks 1..k, random negatives, S×S random points, the loss's channel
dropout and spatial centering), collects the feature correlation F of every term and expresses each candidate
setting as quantiles of its term's distribution (the fraction of pairs that repel), so that a candidate means
the same whatever the backbone's scale.

Which fraction is right depends on the data: on scenes whose parts the features separate cleanly, most pairs
within an image and with a neighbour should attract; on street photos most should repel. With more than one
candidate the stage chooses by a label-free criterion: it trains a short head per candidate, clusters its
codes on the training set, and measures the share of pixels of some training images whose cluster the dense
CRF changes (segments that follow the images' own colour edges give it little to change). The first candidate
is the default; another replaces it only if the CRF changes at most `selection.ratio` times as many pixels of
its clusters, because a candidate that makes more pairs attract also coarsens the segments, which leaves the
CRF less to change whether or not they are right. It reads training features, the KNN table and training
images, never labels.

Writes a JSON artifact with the shifts and weights that `train` uses and where the shifts come from
(`shifts_from`), the preset's values, the statistics of F per term (mean, std, quantiles, and the quantile at
which the preset's shift sits), each candidate's shifts and criterion, and the sampling settings. With
calibration off it writes the preset's shifts unchanged, why, and the statistics (where those shifts sit in
F), and no candidates: none was computed or compared.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stego_steps.artifacts import read_npy, write_json
from stego_steps.calibration import calibrate
from stego_steps.cli import base_parser, parse_stage_args, settings_arg
from stego_steps.errors import UserError, cli
from stego_steps.store import FeatureStore

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--features", type=Path, required=True, help="train split feature store (.h5)")
    parser.add_argument("--knn", type=Path, required=True, help="KNN table of the train split (.npy)")
    parser.add_argument("--index", type=Path, required=True,
                        help="index of the train split (.csv): its images, for choosing among candidates")
    parser.add_argument("--settings", type=settings_arg, required=True,
                        help="JSON: the train stage's settings plus calibrate, calibration, cluster, kind, backbone")
    parser.add_argument("--out", type=Path, required=True, help="output: calibration artifact (JSON)")
    args = parse_stage_args(parser, argv)
    knn = read_npy(args.knn, "KNN table")
    index = pd.read_csv(args.index, dtype={"id": str})
    # Only the feature datasets and ids are read: labels stored beside them are never opened.
    with FeatureStore(args.features) as store:
        if len(knn) != store.n:
            raise UserError(f"KNN table {args.knn} has {len(knn)} rows but {args.features} has {store.n} "
                            f"samples; delete {args.knn} and rerun (the knn stage re-makes it)")
        result = calibrate(store, knn, args.settings, index, workers=args.threads, device=args.device)
    write_json(args.out, result)


if __name__ == "__main__":
    cli(main)
