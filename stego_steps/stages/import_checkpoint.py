"""Stage `import_checkpoint`: a released STEGO checkpoint as this workflow's own artifacts.

Writes `backbone.pth` (unless `--weights` names the same official DINO file), `head.pt`, `centroids.npy`,
`linear.pt` and `hyper_parameters.json`; how the official names map to this workflow's is in
`stego_steps.official_checkpoint`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stego_steps.errors import cli
from stego_steps.official_checkpoint import convert, read_checkpoint, write_artifacts

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    from stego_steps.cli import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="official Lightning checkpoint (.ckpt)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes backbone.pth, head.pt, centroids.npy, linear.pt, hyper_parameters.json")
    parser.add_argument("--weights", help="the backbone weights path as the config names it "
                        "(default: OUT_DIR/backbone.pth); part of the head's backbone_id")
    parser.add_argument("--seed", type=int, default=0, help="the dataset's seed (part of the backbone_id)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    state, hparams = read_checkpoint(args.ckpt)
    imported = convert(state, hparams, source=str(args.ckpt))
    paths = write_artifacts(imported, args.out_dir, weights=args.weights, seed=args.seed, source=str(args.ckpt))
    log.info("%s: backbone %s, head %d→%d, %d clusters, linear probe of %d classes → %s", args.ckpt,
             imported.backbone, imported.head.in_dim, imported.head.code_dim, len(imported.clusters),
             imported.linear.out_channels, ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    cli(main)
