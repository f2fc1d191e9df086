"""Clothing Co-Parsing (people, street-fashion photos) as a `directory` dataset with 7 coarse classes.

    python scripts/ccp.py resources/ccp                             # download (≈ 140 MB), unpack, lay out
    python scripts/ccp.py resources/ccp --from /path/to/clothing-co-parsing   # from a checkout you have

The data are the CCP dataset (Yang, Luo & Lin, "Clothing Co-Parsing by Joint Image Segmentation and
Labeling", CVPR 2014) from github.com/bearpaw/clothing-co-parsing at the pinned commit below: 1,004 photos of
550×832 with pixel-level annotations (`annotations/pixel-level/NNNN.mat`, 59 tags in `label_list.mat`). The
repository carries an Apache-2.0 licence; the photos were collected from a fashion website and their
copyright stays with their owners: use them for research only and never commit them.

The 59 tags are merged into 7 classes: background (the tag `null`), skin, hair, upper-body clothes (including
dresses, coats and swimwear), lower-body clothes (including socks and tights), footwear, accessories (bags,
belts, jewellery, hats, glasses, scarves, …). Every pixel is labelled, so the ignore label (255) never occurs.
Splits by photo number: train = the first `--train` annotated photos (default 300), val = the last `--val`
(default 100).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import scipy.io

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layout_tools import fresh_root, link_image, script_parser, source_tree, write_label  # noqa: E402

COMMIT = "fe34fb77721a9973fbae92c05f7f12b664d10110"
URL = f"https://github.com/bearpaw/clothing-co-parsing/archive/{COMMIT}.zip"
CLASS_NAMES = ["background", "skin", "hair", "upper_clothes", "lower_clothes", "footwear", "accessories"]
IGNORE = 255
#: coarse class of each CCP tag other than null / skin / hair (the rest are accessories).
UPPER = {"blazer", "blouse", "bodysuit", "bra", "cape", "cardigan", "coat", "dress", "hoodie", "intimate",
         "jacket", "jumper", "romper", "shirt", "suit", "sweater", "sweatshirt", "swimwear", "t-shirt", "top",
         "vest"}
LOWER = {"jeans", "leggings", "panties", "pants", "shorts", "skirt", "socks", "stockings", "tights"}
FOOTWEAR = {"boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers", "wedges"}

log = logging.getLogger("ccp")


def coarse_class(tag: str) -> int:
    """The coarse class value of one CCP tag."""
    fixed = {"null": 0, "skin": 1, "hair": 2}
    if tag in fixed:
        return fixed[tag]
    return 3 if tag in UPPER else 4 if tag in LOWER else 5 if tag in FOOTWEAR else 6


def tag_table(top: Path) -> np.ndarray:
    """Lookup table: CCP tag value (index into `label_list.mat`) → coarse class value."""
    names = [str(np.ravel(t)[0]) for t in np.ravel(scipy.io.loadmat(top / "label_list.mat")["label_list"])]
    return np.array([coarse_class(n) for n in names], dtype=np.uint8)


def find_ccp(tree: Path) -> Path:
    """The repository's top folder (photos/, annotations/pixel-level/, label_list.mat)."""
    for candidate in (tree, *sorted(tree.glob("*/"))):
        if (candidate / "label_list.mat").is_file() and (candidate / "annotations" / "pixel-level").is_dir():
            return candidate
    raise FileNotFoundError(f"no CCP folder (photos/, annotations/pixel-level/, label_list.mat) under {tree}; "
                            "pass the clothing-co-parsing checkout with --from")


def lay_out(top: Path, out: Path, n_train: int = 300, n_val: int = 100) -> dict[str, int]:
    stems = sorted(p.stem for p in (top / "annotations" / "pixel-level").glob("*.mat"))
    if n_train + n_val > len(stems):
        raise ValueError(f"{n_train} train + {n_val} val photos asked, {len(stems)} annotated")
    table = tag_table(top)
    fresh_root(out, "scripts/ccp.py")
    chosen = {"train": stems[:n_train], "val": stems[len(stems) - n_val:]}
    for split, names in chosen.items():
        for stem in names:
            tags = scipy.io.loadmat(top / "annotations" / "pixel-level" / f"{stem}.mat")["groundtruth"]
            link_image(top / "photos" / f"{stem}.jpg", out, split, stem)
            write_label(table[tags], out, split, stem)
    counts = {s: len(n) for s, n in chosen.items()}
    log.info("laid out %s: %s", out, counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, URL, "an existing clothing-co-parsing tree")
    parser.add_argument("--train", type=int, default=300, help="training photos (the first ones)")
    parser.add_argument("--val", type=int, default=100, help="validation photos (the last ones)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = source_tree(args, "ccp")
    try:
        lay_out(find_ccp(source).resolve(), args.out, args.train, args.val)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        parser.exit(2, f"ERROR: {exc}\n")


if __name__ == "__main__":
    main()
