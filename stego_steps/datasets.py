"""Dataset adapters: turn a dataset (or the demo generator) into index rows and a class table.

An index row is `{id, image, label, x0, y0, x1, y1}`: `label` may be empty (no labels), the crop box may be
empty (the whole image). The class table is `{"names": [...], "lut": [...] | None}`: `lut[raw] = class id`
(−1 = ignore) applied to the raw label values read from the files.

Every adapter takes the dataset's settings dict. Keys shared by all real datasets:

* `root` (str): the dataset folder (layouts below and in docs/datasets.md);
* `five_crop` (bool, default False): replace every *train* image by its five corner/centre crops, as the
  official training did for COCO-Stuff and Cityscapes;
  the val split is never cropped;
* `crop_ratio` (float, default 0.5): five-crop size as a fraction of the full-resolution height and width.

Paths in the rows are `root` joined with the relative file path; they are not resolved, so a relative
root stays relative to the directory the workflow runs in.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stego_steps.download import ChecksumMismatch, download
from stego_steps.errors import UserError
from stego_steps.index import IGNORE, SPLITS, Box, row_box

log = logging.getLogger(__name__)

Row = dict[str, Any]
Settings = dict[str, Any]
Classes = dict[str, Any]

README_HINT = "see docs/datasets.md"
LUT_SIZE = 256  # 8-bit label PNGs; larger raw values fall outside the table and become ignore (−1)


def render_demo(settings: Settings, workers: int = 1) -> dict[str, list[Row]]:
    """Render the demo scenes of the settings (`root`, `generator`) in `workers` processes; returns their rows."""
    from stego_steps import demo

    gen = settings["generator"]
    return demo.write_demo(Path(settings["root"]), {"train": gen["n_train"], "val": gen["n_val"]},
                           height=gen["height"], width=gen["width"], seed=gen["seed"],
                           style=gen.get("style", "easy"), workers=workers)


def _demo_index(settings: Settings) -> tuple[dict[str, list[Row]], dict]:
    """The demo scenes under `root` (the workflow renders them in their own rule); rendered here when they are
    missing or were rendered with other generator settings."""
    from stego_steps import demo

    gen = settings["generator"]
    style = gen.get("style", "easy")
    rows = demo.rendered_rows(Path(settings["root"]), {"train": gen["n_train"], "val": gen["n_val"]},
                              height=gen["height"], width=gen["width"], seed=gen["seed"], style=style)
    if rows is None:
        log.info("rendering the demo scenes into %s", settings["root"])
        rows = render_demo(settings)
    # Demo labels are stored as class ids with 255 = unlabeled.
    names = demo.class_names(style)
    lut = list(range(len(names))) + [-1] * (256 - len(names))
    return rows, {"names": list(names), "lut": lut}


# ---------------------------------------------------------------------------------------------------------
# Shared helpers


def _root(settings: Settings, kind: str, layout: str) -> Path:
    if not settings.get("root"):
        raise UserError(f"settings of the '{kind}' dataset lack 'root' (the dataset folder)")
    root = Path(settings["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder; the '{kind}' "
                                f"dataset expects the layout {layout} ({README_HINT})")
    return root


def _require_dir(path: Path, kind: str, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"folder {path} does not exist; the '{kind}' dataset expects the layout "
                                f"{layout} ({README_HINT})")
    return path


def _require_files(paths: Iterable[Path], kind: str, what: str, hint: str = "") -> None:
    """Raise one FileNotFoundError that names the missing files (the first ten and the count)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(f"{len(missing)} {what} of the '{kind}' dataset missing: {shown}{more}"
                                f"{'; ' + hint if hint else ''} ({README_HINT})")


def _read_id_list(path: Path) -> list[str]:
    """Ids of a list file, one per line (surrounding whitespace and blank lines dropped)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _finish(splits: dict[str, list[Row]], settings: Settings) -> dict[str, list[Row]]:
    """Apply the five-crop expansion to the train split when the settings ask for it."""
    if settings.get("five_crop"):
        ratio = float(settings.get("crop_ratio", 0.5))
        splits["train"] = five_crop_rows(splits["train"], ratio)
        log.info("five-crop (ratio %s): %d train crops", ratio, len(splits["train"]))
    return splits


# ---------------------------------------------------------------------------------------------------------
# Five-crop at index level


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image at full resolution as displayed (EXIF orientation applied, as when it is
    read), from the file header only (`.mat`: shape of `img`)."""
    path = Path(path)
    if path.suffix == ".mat":
        from scipy.io import whosmat

        for name, shape, _ in whosmat(path):
            if name == "img":
                return int(shape[0]), int(shape[1])
        raise KeyError(f"{path} has no variable 'img'")
    from stego_steps.images import displayed_size

    return displayed_size(path)


def five_crop_boxes(height: int, width: int, ratio: float) -> list[Box]:
    """Boxes (x0, y0, x1, y1) of torchvision `five_crop` with size (int(H·ratio), int(W·ratio)).

    Order: top-left, top-right, bottom-left, bottom-right, centre; the centre offsets are torchvision
    `center_crop`'s rounded half-differences.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"crop_ratio must be in (0, 1], got {ratio}")
    h, w = int(height * ratio), int(width * ratio)
    if h < 1 or w < 1:
        raise ValueError(f"five-crop of a {height}x{width} image with ratio {ratio} is empty")
    top = int(round((height - h) / 2.0))
    left = int(round((width - w) / 2.0))
    corners = [(0, 0), (width - w, 0), (0, height - h), (width - w, height - h), (left, top)]
    return [(x, y, x + w, y + h) for x, y in corners]


def five_crop_rows(rows: Sequence[Row], ratio: float, threads: int = 8) -> list[Row]:
    """Five rows per input row, ids `<id>_c0` … `<id>_c4`, boxes in torchvision `five_crop` order.

    Crop sizes come from each image's full-resolution size (header only). A row that already has a box is
    cropped inside that box.
    """
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        sizes = list(pool.map(image_size, [row["image"] for row in rows]))
    out: list[Row] = []
    for row, (height, width) in zip(rows, sizes, strict=True):
        base = row_box(row) or (0, 0, width, height)
        bx, by = base[0], base[1]
        boxes = five_crop_boxes(base[3] - base[1], base[2] - base[0], ratio)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            out.append({**row, "id": f"{row['id']}_c{k}", "x0": bx + x0, "y0": by + y0, "x1": bx + x1,
                        "y1": by + y1})
    return out


# ---------------------------------------------------------------------------------------------------------
# COCO-Stuff-27

COCO_LAYOUT = ("<root>/images/{train2017,val2017}/<id>.jpg, <root>/annotations/{train2017,val2017}/<id>.png "
               "(COCO-Stuff stuffthingmaps) and <root>/curated/{train2017,val2017}/<list>.txt")
COCO_SPLIT_DIRS = {"train": "train2017", "val": "val2017"}
COCO_TRAIN_LIST = "Coco164kFull_Stuff_Coarse"  # default: the list the official training used (97,702 images)
COCO_VAL_LIST = "Coco164kFull_Stuff_Coarse_7"  # the 2,175-image IIC val set, always
# PiCIE commit fc4e7c1 is the last one that carries the full (non-_7) lists; master only has the _7 ones.
CURATED_URL = ("https://raw.githubusercontent.com/janghyuncho/PiCIE/fc4e7c193c2ba77a6dbf9f24e5e7cf99da9f528a/"
               "curated/{split}/{name}.txt")
# md5 of the IIC lists as published in janghyuncho/PiCIE (line counts in the comments).
CURATED_MD5: dict[tuple[str, str], str] = {
    ("train2017", "Coco164kFull_Stuff_Coarse_7"): "bf3d54a2d1d4f2b5f9ff6bb7de1eaa18",  # 49,629
    ("val2017", "Coco164kFull_Stuff_Coarse_7"): "de66cfb97c6ea796c3ba8e001edda199",  # 2,175
    ("train2017", "Coco164kFull_Stuff_Coarse"): "e425154733caf9e2cdc9ce4ffe77771b",  # 97,702
    ("val2017", "Coco164kFull_Stuff_Coarse"): "d7579da2045b42c653acd719a8e4669c",  # 4,172
}
COCO_CLASSES_TABLE = Path(__file__).resolve().parent / "data" / "cocostuff27_classes.csv"  # package data


class ChecksumError(ValueError):
    """A downloaded file does not have the expected md5."""


def fetch_curated_lists(root: str | Path, base_url: str,
                        checksums: Mapping[tuple[str, str], str] | None = None,
                        lists: Iterable[tuple[str, str]] = (("train2017", COCO_TRAIN_LIST),
                                                            ("val2017", COCO_VAL_LIST))) -> list[Path]:
    """Make sure `<root>/curated/<split>/<name>.txt` exists for each (split, name); download the missing ones.

    `base_url` is a template with the fields `{split}` (train2017/val2017) and `{name}` (list name without
    `.txt`), e.g. `CURATED_URL` or `file:///data/lists/{split}_{name}.txt`. A downloaded file must match its
    md5 in `checksums` (default `CURATED_MD5`) or a `ChecksumError` is raised and nothing is written; a list
    without a known md5 is accepted with a warning that gives its md5 and line count. Files already present
    are kept (a warning when their md5 differs from the table). Returns the list paths.
    """
    root = Path(root)
    table = CURATED_MD5 if checksums is None else checksums
    paths = []
    for split, name in lists:
        dest = root / "curated" / split / f"{name}.txt"
        expected = table.get((split, name))
        paths.append(dest)
        if dest.is_file():
            digest = _md5(dest) if expected else ""
            if expected and digest != expected:
                log.warning("%s differs from the published list (md5 %s, expected %s); using it as it is",
                            dest, digest, expected)
            continue
        url = base_url.format(split=split, name=name)
        log.info("downloading curated list %s/%s.txt from %s", split, name, url)
        try:  # the one downloader: checksum-verified, nothing at `dest` unless complete and matching
            download(url, dest, md5=expected, timeout=120)
        except ChecksumMismatch as err:
            raise ChecksumError(
                f"checksum mismatch for curated list {split}/{name}.txt downloaded from {url}: {err}. Fix: point "
                f"the 'curated_url' setting at a source that serves the original IIC/PiCIE lists (default "
                f"{CURATED_URL}), or place the correct file at {dest} yourself") from err
        except UserError as err:
            raise UserError(
                f"could not download the curated list {split}/{name}.txt from {url}: {err}. Fix: check "
                f"the network or the 'curated_url' setting, or place the file at {dest} yourself "
                f"({README_HINT})") from err
        if expected is None:
            log.warning("no known checksum for curated list %s/%s.txt: accepting it unverified (md5 %s, "
                        "%d ids)", split, name, _md5(dest), len(_read_id_list(dest)))
    return paths


def load_coco_classes(path: str | Path = COCO_CLASSES_TABLE) -> Classes:
    """Coarse names and the 256-entry fine→coarse LUT (255 and unused values → −1) from the CSV table."""
    path = Path(path)
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    fine_ids = [int(r["fine_id"]) for r in records]
    if sorted(fine_ids) != list(range(182)):
        raise UserError(f"{path} must have one row for each fine id 0..181")
    coarse: dict[int, str] = {}
    for r in records:
        cid, cname = int(r["coarse_id"]), r["coarse_name"]
        if coarse.setdefault(cid, cname) != cname:
            raise UserError(f"{path}: coarse id {cid} has two names, '{coarse[cid]}' and '{cname}'")
    if sorted(coarse) != list(range(len(coarse))):
        raise UserError(f"{path}: coarse ids must be 0..n-1, got {sorted(coarse)}")
    lut = [IGNORE] * LUT_SIZE
    for r in records:
        lut[int(r["fine_id"])] = int(r["coarse_id"])
    return {"names": [coarse[i] for i in range(len(coarse))], "lut": lut}


def _cocostuff_index(settings: Settings) -> tuple[dict[str, list[Row]], Classes]:
    """COCO-Stuff-27: COCO 2017 images, stuffthingmaps (0..181, 255 unlabeled), IIC curated lists.

    Layout: `<root>/images/{train2017,val2017}/<id>.jpg`, `<root>/annotations/{train2017,val2017}/<id>.png`,
    `<root>/curated/{train2017,val2017}/<list>.txt` (missing lists are downloaded, see `fetch_curated_lists`).
    The val split always uses `Coco164kFull_Stuff_Coarse_7` (2,175 images).

    Settings (besides root, five_crop, crop_ratio):
    * `train_list` (str, default `Coco164kFull_Stuff_Coarse`, the 97,702 images the official training used):
      curated list of the train split (`Coco164kFull_Stuff_Coarse_7`, 49,629 images, is the smaller choice);
    * `curated_url` (str, default `CURATED_URL`): URL template with `{split}` and `{name}` for missing lists;
      empty = never download (missing lists are then an error);
    * `classes_table` (str, default the package's `stego_steps/data/cocostuff27_classes.csv`): fine→coarse table.
    """
    root = _root(settings, "cocostuff", COCO_LAYOUT)
    for sub in ("images", "annotations"):
        for split_dir in COCO_SPLIT_DIRS.values():
            _require_dir(root / sub / split_dir, "cocostuff", COCO_LAYOUT)
    list_names = {"train": settings.get("train_list") or COCO_TRAIN_LIST, "val": COCO_VAL_LIST}
    wanted = [(COCO_SPLIT_DIRS[s], list_names[s]) for s in SPLITS]
    url = settings.get("curated_url", CURATED_URL)
    if url:
        fetch_curated_lists(root, url, lists=wanted)
    else:
        _require_files([root / "curated" / d / f"{n}.txt" for d, n in wanted], "cocostuff", "curated lists",
                       "place them there or set 'curated_url' to download them")
    splits: dict[str, list[Row]] = {}
    for split in SPLITS:
        split_dir = COCO_SPLIT_DIRS[split]
        ids = _read_id_list(root / "curated" / split_dir / f"{list_names[split]}.txt")
        rows = [{"id": i, "image": str(root / "images" / split_dir / f"{i}.jpg"),
                 "label": str(root / "annotations" / split_dir / f"{i}.png")} for i in ids]
        _require_files([Path(r["image"]) for r in rows], "cocostuff", f"{split} images",
                       "get COCO 2017 images from cocodataset.org")
        _require_files([Path(r["label"]) for r in rows], "cocostuff", f"{split} label maps",
                       "get stuffthingmaps_trainval2017.zip from the COCO-Stuff release")
        splits[split] = rows
    classes = load_coco_classes(settings.get("classes_table") or COCO_CLASSES_TABLE)
    return _finish(splits, settings), classes


# ---------------------------------------------------------------------------------------------------------
# Cityscapes-27

CITYSCAPES_LAYOUT = ("<root>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and "
                     "<root>/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png")
CITYSCAPES_NAMES = [
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
    "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person",
    "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
]
CITYSCAPES_FIRST_ID = 7  # labelId 7 (road) → class 0; labelId 33 (bicycle) → class 26


def _cityscapes_index(settings: Settings) -> tuple[dict[str, list[Row]], Classes]:
    """Cityscapes with the 27-class PiCIE protocol: class = labelId − 7, labelIds outside 7..33 ignored.

    Layout: `<root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` and
    `<root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png`. Val rows are whole images (the evaluation's
    centre crop comes from the transform). Settings: root, five_crop, crop_ratio.
    """
    root = _root(settings, "cityscapes", CITYSCAPES_LAYOUT)
    suffix = "_leftImg8bit.png"
    splits: dict[str, list[Row]] = {}
    for split in SPLITS:
        img_dir = _require_dir(root / "leftImg8bit" / split, "cityscapes", CITYSCAPES_LAYOUT)
        gt_dir = _require_dir(root / "gtFine" / split, "cityscapes", CITYSCAPES_LAYOUT)
        images = sorted(img_dir.glob(f"*/*{suffix}"))
        if not images:
            raise FileNotFoundError(f"no *{suffix} files in the city folders of {img_dir}; the 'cityscapes' "
                                    f"dataset expects the layout {CITYSCAPES_LAYOUT} ({README_HINT})")
        rows = []
        for path in images:
            stem = path.name[: -len(suffix)]
            rows.append({"id": stem, "image": str(path),
                         "label": str(gt_dir / path.parent.name / f"{stem}_gtFine_labelIds.png")})
        _require_files([Path(r["label"]) for r in rows], "cityscapes", f"{split} gtFine label maps",
                       "download gtFine_trainvaltest.zip")
        splits[split] = rows
    n = len(CITYSCAPES_NAMES)
    lut = [v - CITYSCAPES_FIRST_ID if 0 <= v - CITYSCAPES_FIRST_ID < n else IGNORE for v in range(LUT_SIZE)]
    return _finish(splits, settings), {"names": list(CITYSCAPES_NAMES), "lut": lut}


# ---------------------------------------------------------------------------------------------------------
# Potsdam-3

POTSDAM_LAYOUT = ("<root>/imgs/<id>.mat (key 'img'), <root>/gt/<id>.mat (key 'gt'), "
                  "<root>/labelled_train.txt and <root>/labelled_test.txt (IIC's preprocessed Potsdam)")
POTSDAM_LISTS = {"train": "labelled_train.txt", "val": "labelled_test.txt"}
POTSDAM_NAMES = ["roads and cars", "buildings and clutter", "trees and vegetation"]
# IIC's 6 classes: 0 roads, 1 building, 2 low vegetation, 3 tree, 4 car, 5 clutter.
POTSDAM_FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}


def _potsdam_index(settings: Settings) -> tuple[dict[str, list[Row]], Classes]:
    """Potsdam-3 from IIC's `.mat` tiles: fine {0,4}→0, {1,5}→1, {2,3}→2, 255→ignore.

    Train = `labelled_train.txt`, val = `labelled_test.txt`. A listed tile without its image or gt file is an
    error (the official code silently used an all-ones label). Raw values other than 0..5 and 255 map to 0, as
    in the official code. Settings: root, five_crop, crop_ratio.
    """
    root = _root(settings, "potsdam", POTSDAM_LAYOUT)
    for sub in ("imgs", "gt"):
        _require_dir(root / sub, "potsdam", POTSDAM_LAYOUT)
    _require_files([root / name for name in POTSDAM_LISTS.values()], "potsdam", "split lists")
    splits: dict[str, list[Row]] = {}
    for split in SPLITS:
        ids = [i.removesuffix(".mat") for i in _read_id_list(root / POTSDAM_LISTS[split])]
        rows = [{"id": i, "image": str(root / "imgs" / f"{i}.mat"), "label": str(root / "gt" / f"{i}.mat")}
                for i in ids]
        _require_files([Path(r["image"]) for r in rows], "potsdam", f"{split} image tiles")
        _require_files([Path(r["label"]) for r in rows], "potsdam", f"{split} gt tiles")
        splits[split] = rows
    lut = [0] * LUT_SIZE
    for fine, coarse in POTSDAM_FINE_TO_COARSE.items():
        lut[fine] = coarse
    lut[255] = IGNORE
    return _finish(splits, settings), {"names": list(POTSDAM_NAMES), "lut": lut}


# ---------------------------------------------------------------------------------------------------------
# Any folder of images

DIRECTORY_LAYOUT = ("<root>/imgs/{train,val}/<name>.<jpg|png|...> with optional "
                    "<root>/labels/{train,val}/<name>.png")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".mat"}


def _by_stem(folder: Path, suffixes: set[str]) -> tuple[dict[str, list[Path]], list[Path]]:
    """The files of `folder` of the given types by name stem (sorted), and the files of other types; hidden
    files and sub-folders are not looked at, a missing folder has none."""
    found: dict[str, list[Path]] = {}
    other: list[Path] = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() in suffixes:
                found.setdefault(path.stem, []).append(path)
            else:
                other.append(path)
    return found, other


def _files(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    """One file per stem of a folder whose stems `directory_problems` found unique; other types are skipped."""
    found, skipped = _by_stem(folder, suffixes)
    for path in skipped:
        log.warning("skipping %s: not one of the file types %s", path, ", ".join(sorted(suffixes)))
    return {stem: paths[0] for stem, paths in found.items()}


def has_labels_folder(root: str | Path) -> bool:
    """Whether a `directory` dataset has `<root>/labels`: what says, by default, that it is labelled."""
    return (Path(root) / "labels").is_dir()


def labelled_splits(root: str | Path) -> list[str]:
    """The splits of a `directory` dataset that have labels: those with a `<root>/labels/<split>` folder (each
    of its images then needs a label PNG; a split without one has no labels)."""
    return [split for split in SPLITS if (Path(root) / "labels" / split).is_dir()]


def directory_images(root: str | Path, split: str) -> dict[str, list[Path]] | None:
    """The image files of one split of a `directory` dataset by name stem; None when its folder is missing."""
    folder = Path(root) / "imgs" / split
    return _by_stem(folder, IMAGE_SUFFIXES)[0] if folder.is_dir() else None


def directory_problems(root: str | Path) -> list[str]:
    """Every duplicate name stem and unpaired image or label of a `directory` dataset (empty when fine), each
    with its fix."""
    root = Path(root)
    problems: list[str] = []
    labelled = labelled_splits(root)
    for split in SPLITS:
        stems: dict[str, dict[str, list[Path]]] = {}
        for sub, suffixes in (("imgs", IMAGE_SUFFIXES), ("labels", {".png"})):
            folder = root / sub / split
            stems[sub] = found = _by_stem(folder, suffixes)[0]
            for stem, paths in found.items():
                if len(paths) > 1:
                    problems.append(f"{folder}: {len(paths)} files share the name stem '{stem}' "
                                    f"({', '.join(p.name for p in paths)}); images and labels are paired by "
                                    "stem: rename or remove all but one")
        if split in labelled:
            imgs, labels = stems["imgs"], stems["labels"]
            for stem in sorted(set(imgs) - set(labels)):
                problems.append(f"{imgs[stem][0]}: no label {root / 'labels' / split / (stem + '.png')}; add the "
                                f"label PNG or remove the image")
            for stem in sorted(set(labels) - set(imgs)):
                problems.append(f"{labels[stem][0]}: a label without an image in {root / 'imgs' / split}; add "
                                "the image or remove the label")
    return problems


def _directory_index(settings: Settings) -> tuple[dict[str, list[Row]], Classes]:
    """Your own images: `<root>/imgs/{train,val}/*` with optional `<root>/labels/{train,val}/*.png`.

    Labels are paired with images by file stem. A split whose labels folder exists must have a label for
    every image and an image for every label; a split without a labels folder gets empty labels.

    Settings (besides root, five_crop, crop_ratio):
    * `class_names` (list of str, required, non-empty): class names in id order; label value i < n is class i;
    * `ignore_label` (int, default 255): label value for unlabeled pixels (→ −1); other values ≥ n are also
      ignored.
    """
    root = _root(settings, "directory", DIRECTORY_LAYOUT)
    names = settings.get("class_names")
    if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError("the 'directory' dataset needs 'class_names': a non-empty list of class names in id "
                         "order (their number is also the number of clusters)")
    ignore = int(settings.get("ignore_label", 255))
    if 0 <= ignore < len(names):
        raise UserError(f"ignore_label {ignore} is a class id (there are {len(names)} classes); use a value "
                         f">= {len(names)}")
    for split in SPLITS:
        _require_dir(root / "imgs" / split, "directory", DIRECTORY_LAYOUT)
    problems = directory_problems(root)
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise FileNotFoundError(f"the files of the 'directory' dataset at {root} are not paired one to one by "
                                f"name stem ({len(problems)} problem{'s' * (len(problems) != 1)}): "
                                f"{'; '.join(problems[:10])}{more}; or remove the labels folder of a split to "
                                f"use no labels ({README_HINT})")
    labelled = labelled_splits(root)
    splits: dict[str, list[Row]] = {}
    for split in SPLITS:
        images = _files(root / "imgs" / split, IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"no images in {root / 'imgs' / split}; the 'directory' dataset expects the "
                                    f"layout {DIRECTORY_LAYOUT} ({README_HINT})")
        labels = _files(root / "labels" / split, {".png"}) if split in labelled else {}
        splits[split] = [{"id": stem, "image": str(path), "label": str(labels[stem]) if labels else ""}
                         for stem, path in images.items()]
    lut = [IGNORE] * max(LUT_SIZE, len(names), ignore + 1)
    lut[: len(names)] = range(len(names))
    return _finish(splits, settings), {"names": list(names), "lut": lut}


# kind → function(settings) -> ({split: rows}, classes)
ADAPTERS: dict[str, Callable[[Settings], tuple[dict[str, list[Row]], dict]]] = {
    "demo": _demo_index,
    "cocostuff": _cocostuff_index,
    "cityscapes": _cityscapes_index,
    "potsdam": _potsdam_index,
    "directory": _directory_index,
}


def build_index(kind: str, settings: Settings) -> tuple[dict[str, list[Row]], dict]:
    """Index rows for every split and the class table of a dataset of the given kind."""
    if kind not in ADAPTERS:
        raise UserError(f"unknown dataset kind '{kind}'; known kinds: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[kind](settings)
