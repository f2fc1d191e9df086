"""CWFID (crop/weed field images, 3 classes) as a `directory` dataset: agriculture, 60 images of 1296×966.

    python scripts/cwfid.py resources/cwfid                         # download (≈ 90 MB), unpack, lay out
    python scripts/cwfid.py resources/cwfid --from /path/to/cwfid-dataset   # from a checkout you have

The data are the Crop/Weed Field Image Dataset (Haug & Ostermann, "A Crop/Weed Field Image Dataset for the
Evaluation of Computer Vision Based Precision Agriculture Tasks", CVPPP 2014) from github.com/cwfid/dataset at
the pinned commit below. Licence: "all data is subject to copyright and may only be used for non-commercial
research" (the repository's README): never commit them.

Classes: soil (0), crop (1), weed (2), from the colour-coded annotation images (black, green, red); every pixel
is labelled, so the ignore label (255) never occurs. Splits: the dataset's own `train_test_split.yaml`
(train 40 images, test 21 → val); image 28, listed in both, is kept in val only (39 train, 21 val).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layout_tools import (  # noqa: E402
    colour_label,
    fresh_root,
    link_image,
    script_parser,
    source_tree,
    write_label,
)

COMMIT = "36290d0912a032f0bd1a5678ed55457ddafde217"
URL = f"https://github.com/cwfid/dataset/archive/{COMMIT}.zip"
CLASS_NAMES = ["soil", "crop", "weed"]
COLOURS = [(0, 0, 0), (0, 255, 0), (255, 0, 0)]
IGNORE = 255

log = logging.getLogger("cwfid")


def find_cwfid(tree: Path) -> Path:
    """The dataset's top folder (with images/, annotations/, train_test_split.yaml) in a checkout or archive."""
    for candidate in (tree, *sorted(tree.glob("*/"))):
        if (candidate / "train_test_split.yaml").is_file() and (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(f"no CWFID folder (images/, annotations/, train_test_split.yaml) under {tree}; pass "
                            "the cwfid/dataset checkout with --from")


def splits_of(top: Path) -> dict[str, list[int]]:
    """Image numbers per split; one listed in both is kept in val only."""
    split = yaml.safe_load((top / "train_test_split.yaml").read_text())
    val = sorted(int(i) for i in split["test"])
    return {"train": sorted(int(i) for i in split["train"] if int(i) not in val), "val": val}


def lay_out(top: Path, out: Path) -> dict[str, int]:
    fresh_root(out, "scripts/cwfid.py")
    counts = {}
    for split, numbers in splits_of(top).items():
        for n in numbers:
            stem = f"{n:03d}"
            link_image(top / "images" / f"{stem}_image.png", out, split, stem)
            rgb = np.asarray(Image.open(top / "annotations" / f"{stem}_annotation.png").convert("RGB"))
            write_label(colour_label(rgb, COLOURS, IGNORE), out, split, stem)
        counts[split] = len(numbers)
    log.info("laid out %s: %s", out, counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, URL, "an existing cwfid/dataset tree: no download")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = source_tree(args, "cwfid")
    try:
        lay_out(find_cwfid(source).resolve(), args.out)
    except (FileNotFoundError, FileExistsError) as exc:
        parser.exit(2, f"ERROR: {exc}\n")


if __name__ == "__main__":
    main()
