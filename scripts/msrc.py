"""MSRC-v2 (objects in outdoor and indoor photos, 23 classes) as a `directory` dataset: 591 images of 320×213.

    python scripts/msrc.py resources/msrc                    # download the repository (≈ 170 MB), lay out
    python scripts/msrc.py resources/msrc --from /path/to/MultiGraph_MultiLabel_Learning

The images are the Microsoft Research Cambridge object recognition image database v2 (Shotton et al.,
"TextonBoost", ECCV 2006) with the cleaned-up segmentations of Malisiewicz & Efros ("Improving spatial support
for objects via multiple segmentations", BMVC 2007), as copied into the `MSRC_v2` folder of
github.com/TonyZZX/MultiGraph_MultiLabel_Learning at the pinned commit below (that repository's own licence
covers its code; the MSRC images are Microsoft Research's, for non-commercial research use): never commit them.

Classes 0..22 in the order of that folder's README (building, grass, tree, cow, horse, sheep, sky, mountain,
aeroplane, water, face, car, bicycle, flower, sign, bird, book, chair, road, cat, dog, body, boat). Each
`<name>_GT.mat` holds a segment map (`newseg`, segments 1..n) and the class (1-based) of the first labelled
segments (`newlabels`); the remaining segments are unlabelled and get the ignore label 255, so unlike the other
scripts' datasets part of the pixels (17% of the default val split, mostly object borders and background) is
ignored. Splits by sorted file name: every `--val-every`-th image (default 6: 98 images) is val, the rest
train (493).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import scipy.io

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layout_tools import fresh_root, link_image, script_parser, source_tree, write_label  # noqa: E402

COMMIT = "df10559f6a45e2ba7ea85296647e01a2518a37f6"
URL = f"https://github.com/TonyZZX/MultiGraph_MultiLabel_Learning/archive/{COMMIT}.zip"
CLASS_NAMES = ["building", "grass", "tree", "cow", "horse", "sheep", "sky", "mountain", "aeroplane", "water",
               "face", "car", "bicycle", "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body",
               "boat"]
IGNORE = 255

log = logging.getLogger("msrc")


def find_msrc(tree: Path) -> Path:
    """The `MSRC_v2` folder (Images/, newsegmentations_mats/) in a checkout or unpacked archive."""
    for candidate in (tree, tree / "MSRC_v2", *sorted(tree.glob("*/MSRC_v2"))):
        if (candidate / "Images").is_dir() and (candidate / "newsegmentations_mats").is_dir():
            return candidate
    raise FileNotFoundError(f"no MSRC_v2 folder (Images/, newsegmentations_mats/) under {tree}; pass the "
                            "MultiGraph_MultiLabel_Learning checkout with --from")


def class_map(segments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class value per pixel: segment s (1-based) has class labels[s − 1] − 1; other segments are ignored."""
    table = np.full(max(int(segments.max()), len(labels)) + 1, IGNORE, dtype=np.uint8)
    table[1:len(labels) + 1] = labels.astype(np.int64) - 1
    return table[segments]


def lay_out(top: Path, out: Path, val_every: int = 6) -> dict[str, int]:
    stems = sorted(p.stem for p in (top / "Images").glob("*.bmp"))
    fresh_root(out, "scripts/msrc.py")
    counts = {"train": 0, "val": 0}
    for i, stem in enumerate(stems):
        gt = scipy.io.loadmat(top / "newsegmentations_mats" / f"{stem}_GT.mat")
        split = "val" if i % val_every == val_every - 1 else "train"
        link_image(top / "Images" / f"{stem}.bmp", out, split, stem)
        write_label(class_map(gt["newseg"], np.ravel(gt["newlabels"])), out, split, stem)
        counts[split] += 1
    log.info("laid out %s: %s", out, counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, URL, "an existing MultiGraph_MultiLabel_Learning tree")
    parser.add_argument("--val-every", type=int, default=6, help="every n-th image (sorted by name) is val")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = source_tree(args, "msrc")
    try:
        lay_out(find_msrc(source).resolve(), args.out, args.val_every)
    except (FileNotFoundError, FileExistsError) as exc:
        parser.exit(2, f"ERROR: {exc}\n")


if __name__ == "__main__":
    main()
