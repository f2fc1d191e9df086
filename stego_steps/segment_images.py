"""Segment a folder of new images with a finished run: `python -m stego_steps.segment_images --run
results/demo/runs/default/seed0 --images my_photos --out my_photos_segmented [--crf]`.

The run folder provides the backbone and how the run computed its features — name, weights file, seed (of a
`_random` backbone), precision, store dtype, batch size, evaluation resolution — and the class names (attributes
of the evaluation codes `codes.h5`, copied there from the feature store), the head (`head.pt`), the cluster
centroids (`centroids.npy`) and, where the run had labels, the Hungarian cluster → class mapping
(`mapping/cluster_{raw,crf}.csv`) and the linear probe (`linear.pt`). `--weights` names the weights file where
it moved since the run. The head is checked against the network as in every other stage: a head trained on
another backbone's features is refused with a message naming it.

For every image `NAME.ext` it writes, at the image's own width and height:
- `NAME.png`: the label map, 8-bit (16-bit when there are more than 255 ids). With a mapping these are class
  ids (the class's row in the run's class list; 255 = a cluster the matching left without a class); without one (or with
  `--cluster-ids`) the cluster ids. With `--probe linear` always class ids.
- `NAME_overlay.png`: the image blended half and half with the label colours (those of the figures stage;
  `legend.csv` lists id, name and colour);
- with `--crf`, `NAME_crf.png` and `NAME_crf_overlay.png` after the dense CRF.

How any size is handled: the image is resized (PIL NEAREST, as in the evaluation transform) so that its short
side is the run's evaluation resolution (or `--short-side`), i.e. objects appear at the scale the head was
evaluated at; its long side is rounded to a multiple of the backbone stride. Square windows of the evaluation
resolution slide over it with `--overlap` (default one half), each window goes through the backbone with flip
test-time augmentation and the head, and the codes of overlapping windows are averaged on the common feature
grid. Windows rather than the whole resized image: the backbone then always sees the input size it was
evaluated at (a ViT's positional embeddings are not re-interpolated), memory per window is fixed, and windows of
all images fill the same batches. Features are computed by the extraction's own function, with the run's
precision, and rounded as the run's store keeps them (float16, or int8 with a scale per token); batches hold
as many windows as the extraction's batches held images. So an image of exactly the evaluation size is
processed exactly like the evaluation stage processes its crops. The code grid is then upsampled bilinearly
to the original size in blocks of rows (bounded memory for very large images) and turned into
log-probabilities as in the segment stage. The CRF runs on the resized image (a full-resolution CRF of a large
photo would need gigabytes) and its labels are upsampled with nearest neighbours.

Memory per image does not grow with its aspect ratio: an image more than MAX_ASPECT times longer than wide (the
limit of `prepare`) is skipped, so the working image has at most MAX_ASPECT · short side² pixels (the
windows, the code grid and the CRF live there); only the label maps and overlays have the original size, in
blocks of rows where they are computed.

Files that cannot be read as images, and images of a more extreme aspect ratio, are skipped with a warning
naming them and the reason, counted at the end and listed in `skipped.txt`; the command fails (a named
error) only when no image could be segmented.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from stego_steps import images as image_io
from stego_steps.artifacts import atomic_path, write_csv, write_text
from stego_steps.backbones import (
    FeatureExtractor,
    WeightsUnavailable,
    backbone_id,
    build_backbone,
    features_of,
    to_float,
)
from stego_steps.cli import base_parser, parse_stage_args, progress
from stego_steps.crf import refine_labels
from stego_steps.errors import UserError, cli
from stego_steps.head import LogProbs, cluster_log_probs, flip_tta_code, linear_log_probs, load_head, load_probe
from stego_steps.segmentations import palette
from stego_steps.store import as_stored
from stego_steps.validate import MAX_ASPECT

log = logging.getLogger(__name__)

NO_CLASS = 255  # label of a cluster without a matched class
BLOCK_BYTES = 256 * 2**20  # upsampled codes held at once


@dataclass
class Run:
    """What a finished run provides for segmenting new images."""

    backbone: str
    res: int
    head: Path
    centroids: Path
    codes: Path
    # How the run's evaluation features were computed (the extraction's settings: weights, seed, precision,
    # store_dtype, batch_size, ...), and the id of that network.
    features: dict = field(default_factory=dict)
    backbone_id: str | None = None
    linear: Path | None = None
    class_names: list[str] = field(default_factory=list)
    mapping: dict[bool, np.ndarray] = field(default_factory=dict)  # crf → class id per cluster (−1: none)


def find_file(name: str, artifact: Path) -> Path | None:
    """A file that a run's artifact names by a path relative to the run's working directory: as is, or under one
    of the artifact's parent folders (the working directory, wherever the command runs)."""
    path = Path(name).expanduser()
    return next((p for p in (path, *(d / path for d in artifact.parents)) if p.is_file()), None)


def _attrs(path: Path) -> dict:
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs)
    except OSError as err:
        raise UserError(f"{path} is unreadable ({err}): delete it and rerun snakemake, which re-makes it") from err


def find_run(run_dir: Path) -> Run:
    """The files of a finished run: `head.pt`, `centroids.npy`, `codes.h5` (which names the backbone, how its
    features were computed, the evaluation resolution and the classes) and, where the run had labels,
    `linear.pt` and `mapping/`."""
    need = {name: run_dir / name for name in ("head.pt", "centroids.npy", "codes.h5")}
    missing = [str(p) for p in need.values() if not p.exists()]
    if missing:
        raise UserError(f"the run in {run_dir} is not finished: missing {', '.join(missing)}; a run folder is "
                        "results/<dataset>/runs/<variant>/seed<seed> after its evaluation")
    codes = need["codes.h5"]
    attrs = _attrs(codes)
    if "producer" not in attrs and "source" in attrs:
        # codes written before they recorded the features' settings: those of the store they came from (its
        # path is relative to the working directory of the run)
        source = find_file(str(attrs["source"]), codes)
        if source is not None:
            attrs = {**_attrs(source), **attrs}
    if "producer" not in attrs or "backbone" not in attrs:
        raise UserError(f"{codes} does not record how the run's features were computed (weights, seed, "
                        "precision, store dtype): delete it and rerun snakemake, whose predict stage re-makes it")
    names = json.loads(attrs["class_names"]) if "class_names" in attrs else []
    run = Run(str(attrs["backbone"]), int(attrs["res"]), need["head.pt"], need["centroids.npy"], codes,
              features=json.loads(attrs["producer"]), backbone_id=attrs.get("backbone_id"),
              class_names=list(names))
    linear = run_dir / "linear.pt"
    run.linear = linear if linear.exists() else None
    for crf in (False, True):
        path = run_dir / "mapping" / f"cluster_{'crf' if crf else 'raw'}.csv"
        if path.exists():
            table = pd.read_csv(path)
            lut = np.full(int(table["cluster"].max()) + 1, -1, np.int64)
            lut[table["cluster"].to_numpy()] = table["class_id"].to_numpy()
            run.mapping[crf] = lut
    return run


def window_starts(length: int, window: int, step: int) -> list[int]:
    """Window offsets along one axis covering [0, length): multiples of `step`, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, step))
    return [*starts, length - window]


def working_size(width: int, height: int, short_side: int, stride: int) -> tuple[int, int]:
    """(width, height) with the short side = `short_side`, the long side scaled alike and rounded to a multiple
    of `stride` (at least `short_side`)."""
    if width <= height:
        long = max(short_side, int(round(short_side * height / width / stride)) * stride)
        return short_side, long
    long = max(short_side, int(round(short_side * width / height / stride)) * stride)
    return long, short_side


@dataclass
class Pending:
    """An image whose windows are in flight: the sum and count of window codes on its feature grid."""

    index: int
    path: Path
    original: Image.Image
    working: np.ndarray  # [h', w', 3] uint8
    code_sum: torch.Tensor | None = None
    count: torch.Tensor | None = None
    left: int = 0


@torch.no_grad()
def window_codes(backbone: FeatureExtractor, head: torch.nn.Module, windows: np.ndarray, device: str, *,
                 precision: str = "float32", store_dtype: str = "float16") -> torch.Tensor:
    """Codes [B,D,h,w] of uint8 windows [B,res,res,3]: the features of the windows and of their mirror images
    as `extract` computes them (`precision`) and as a store of `store_dtype` returns them, then flip
    test-time augmentation as in `predict`."""
    x = to_float(torch.from_numpy(windows))
    feats = as_stored(features_of(backbone, x, device, precision), store_dtype).to(device)
    flipped = as_stored(features_of(backbone, x.flip(-1), device, precision), store_dtype).to(device)
    return flip_tta_code(head, feats, flipped).cpu()


@torch.no_grad()
def labels_at(code: torch.Tensor, height: int, width: int, to_log_probs: LogProbs) -> np.ndarray:
    """argmax of the log-probabilities of the code grid [1,D,h,w] upsampled bilinearly to height × width.

    Small outputs in one `F.interpolate` call (exactly the segment stage's computation); large ones in blocks
    of rows by `grid_sample` at the output pixel centres, which is the same bilinear interpolation
    (align_corners=False, edges clamped)."""
    d = code.shape[1]
    if d * height * width * 4 <= BLOCK_BYTES:
        up = F.interpolate(code, size=(height, width), mode="bilinear", align_corners=False)
        return to_log_probs(up)[0].argmax(0).numpy()
    out = np.empty((height, width), np.int64)
    rows = max(1, BLOCK_BYTES // (d * width * 4))
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    for top in range(0, height, rows):
        ys = (torch.arange(top, min(top + rows, height), dtype=torch.float32) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1,rows,W,2] as (x, y)
        up = F.grid_sample(code, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[top:top + len(ys)] = to_log_probs(up)[0].argmax(0).numpy()
    return out


def save_label(path: Path, ids: np.ndarray) -> None:
    img = Image.fromarray(ids.astype(np.uint8)) if ids.max(initial=0) <= 255 else \
        Image.fromarray(ids.astype(np.uint16))
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def save_overlay(path: Path, image: Image.Image, ids: np.ndarray, colours: np.ndarray) -> None:
    rgb = np.asarray(image, dtype=np.uint8)
    colour = np.zeros_like(rgb)
    valid = ids < len(colours)
    colour[valid] = colours[ids[valid]]
    blend = (rgb.astype(np.uint16) + colour) // 2
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(blend.astype(np.uint8)).save(tmp, format="PNG")


def build_network(run: Run, weights: str | None = None) -> tuple[FeatureExtractor, str]:
    """The backbone that computed the run's features (its weights file, or `weights` where it moved; its seed)
    and that network's id. Another weights file than the run's is a `UserError`."""
    recorded = run.features.get("weights")
    seed = int(run.features.get("seed", 0))
    found = find_file(recorded, run.codes) if recorded else None
    if weights and not Path(weights).expanduser().is_file():
        raise UserError(f"--weights {weights} does not exist: pass the weights file the run used")
    if recorded and not weights and found is None:
        raise UserError(f"the backbone weights {recorded} (recorded in {run.codes}) do not exist: pass the file the "
                        "run used with --weights")
    path = weights or (str(found) if found else None)
    # The id names the file as the config did: the run's file under another path (or moved) is the same network.
    same = bool(weights and recorded) and (found is None or os.path.samefile(Path(weights).expanduser(), found))
    network = backbone_id(run.backbone, recorded if same else weights or recorded, seed)
    if run.backbone_id and network != run.backbone_id:
        raise UserError(f"--weights {weights} is not the network that computed the features of the run "
                        f"({run.backbone} with {recorded or 'its default weights'}, recorded in {run.codes}): pass "
                        "the weights file the run used, or leave --weights out")
    try:
        return build_backbone(run.backbone, weights=path, seed=seed), network
    except WeightsUnavailable as err:
        raise UserError(str(err)) from err


class Segmenter:
    """Segments images of any size with a run's backbone, head and probe (see the module docstring)."""

    def __init__(self, run: Run, *, weights: str | None = None, probe: str = "cluster", cluster_ids: bool = False,
                 short_side: int | None = None, overlap: float = 0.5, crf: bool = False, device: str = "cpu",
                 batch_size: int | None = None) -> None:
        self.run, self.device, self.crf = run, device, crf
        # Features as the run computed and stored them; batches of the extraction's size.
        self.precision = run.features.get("precision", "float32")
        self.store_dtype = run.features.get("store_dtype", "float16")
        self.batch_size = batch_size or int(run.features.get("batch_size", 16))
        self.backbone, network = build_network(run, weights)
        self.backbone = self.backbone.to(device).eval()
        self.head = load_head(run.head, device, network)  # refuses a head of another network, as every stage
        if self.head.in_dim != self.backbone.dim:
            raise UserError(f"head {run.head} reads {self.head.in_dim} channels but backbone {run.backbone} gives "
                            f"{self.backbone.dim}: the head belongs to another backbone; rerun snakemake so that "
                            "it is retrained on this run's features")
        self.stride = self.backbone.stride
        self.short_side = short_side or run.res
        if self.short_side % self.stride or run.res % self.stride:
            raise UserError(f"--short-side {self.short_side} must be a multiple of the stride {self.stride}")
        if not 0 <= overlap < 1:
            raise UserError(f"--overlap must be in [0, 1), got {overlap}")
        self.step = max(self.stride, int(run.res * (1 - overlap)) // self.stride * self.stride)
        if probe == "linear":
            if run.linear is None:
                raise UserError(f"the run in {run.head.parent} has no linear probe (it had no labels): use "
                                "--probe cluster")
            self.to_log_probs = linear_log_probs(load_probe(run.linear))
            self.lut: dict[bool, np.ndarray | None] = {False: None, True: None}
            n_ids = len(run.class_names)
        else:
            centroids = np.load(run.centroids)
            self.to_log_probs = cluster_log_probs(centroids)
            mapped = bool(run.mapping) and not cluster_ids
            self.lut = {crf: (run.mapping.get(crf) if mapped else None) for crf in (False, True)}
            n_ids = len(run.class_names) if mapped else len(centroids)
        self.classes = probe == "linear" or self.lut[False] is not None
        self.names = run.class_names if self.classes else [f"cluster {k}" for k in range(n_ids)]
        self.colours = palette(len(self.names))

    def legend(self) -> pd.DataFrame:
        rows = [{"id": k, "name": n, "r": int(c[0]), "g": int(c[1]), "b": int(c[2])}
                for k, (n, c) in enumerate(zip(self.names, self.colours, strict=True))]
        if self.classes and self.lut[False] is not None:
            rows.append({"id": NO_CLASS, "name": "cluster without a class", "r": 0, "g": 0, "b": 0})
        return pd.DataFrame(rows)

    def prepare(self, index: int, path: Path) -> Pending:
        try:
            original = image_io.read_image(path)
        except ValueError as err:
            raise ValueError(f"not a readable image ({err.__cause__ or err})") from err
        width, height = original.size
        if max(width, height) > MAX_ASPECT * min(width, height):
            # the guard of `prepare`: the working image (short side at the evaluation resolution) and its CRF
            # would grow with the aspect ratio
            raise UserError(f"extreme aspect ratio {width}x{height} (width x height), above {MAX_ASPECT:g}:1: "
                            f"cut it into pieces of at most {MAX_ASPECT:g}:1")
        w, h = working_size(*original.size, self.short_side, self.stride)
        working = np.array(original.resize((w, h), Image.NEAREST) if (w, h) != original.size else original,
                           dtype=np.uint8)
        return Pending(index, path, original, working)

    def windows(self, item: Pending) -> Iterator[tuple[int, int, np.ndarray]]:
        h, w = item.working.shape[:2]
        res = self.run.res
        for top in window_starts(h, res, self.step):
            for left in window_starts(w, res, self.step):
                yield top, left, item.working[top:top + res, left:left + res]

    def finish(self, item: Pending) -> dict[str, np.ndarray]:
        """Label maps at the original size: `raw`, and `crf` when asked for."""
        code = (item.code_sum / item.count)[None]
        width, height = item.original.size
        out = {"raw": self._map(labels_at(code, height, width, self.to_log_probs), False)}
        if self.crf:
            h, w = item.working.shape[:2]
            up = F.interpolate(code, size=(h, w), mode="bilinear", align_corners=False)
            with torch.no_grad():
                log_probs = self.to_log_probs(up)[0].numpy()
            refined = next(refine_labels([(item.working, log_probs)], workers=1))  # as the segment stage
            if (w, h) != (width, height):
                refined = np.asarray(Image.fromarray(refined.astype(np.int32)).resize((width, height),
                                                                                      Image.NEAREST))
            out["crf"] = self._map(refined, True)
        return out

    def _map(self, ids: np.ndarray, crf: bool) -> np.ndarray:
        lut = self.lut[crf]
        if lut is None:
            return ids.astype(np.int64)
        mapped = lut[ids]
        return np.where(mapped < 0, NO_CLASS, mapped)

    def segment_paths(self, paths: list[Path], batch_size: int | None = None
                      ) -> Iterator[tuple[Path, tuple[Image.Image, dict[str, np.ndarray]] | Exception]]:
        """(path, (image, label maps)) for every image, in order, or (path, the error) for a file that is no
        image or is skipped.

        Windows of consecutive images share batches of `batch_size` (default: the extraction's batch size)."""
        batch_size = batch_size or self.batch_size
        queue: list[tuple[Pending, int, int, np.ndarray]] = []
        open_items: list[Pending | tuple[Path, Exception]] = []

        def run_batch() -> None:
            codes = window_codes(self.backbone, self.head, np.stack([q[3] for q in queue]), self.device,
                                 precision=self.precision, store_dtype=self.store_dtype)
            g = self.run.res // self.stride
            for (item, top, left, _), code in zip(queue, codes, strict=True):
                ty, tx = top // self.stride, left // self.stride
                item.code_sum[:, ty:ty + g, tx:tx + g] += code
                item.count[:, ty:ty + g, tx:tx + g] += 1
                item.left -= 1
            queue.clear()

        def drain(final: bool) -> Iterator:
            while open_items and (isinstance(open_items[0], tuple) or open_items[0].left == 0):
                head = open_items.pop(0)
                if isinstance(head, tuple):
                    yield head
                else:
                    yield head.path, (head.original, self.finish(head))
            if final and open_items:
                raise RuntimeError("images left with windows in flight")  # cannot happen: every batch is run

        for i, path in enumerate(paths):
            try:
                item = self.prepare(i, path)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                open_items.append((path, err))
                yield from drain(False)
                continue
            h, w = item.working.shape[:2]
            item.code_sum = torch.zeros(self.head.code_dim, h // self.stride, w // self.stride)
            item.count = torch.zeros(1, h // self.stride, w // self.stride)
            windows = list(self.windows(item))
            item.left = len(windows)
            open_items.append(item)
            for top, left, window in windows:
                queue.append((item, top, left, window))
                if len(queue) >= batch_size:
                    run_batch()
                    yield from drain(False)
        if queue:
            run_batch()
        yield from drain(True)


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """The file stem, or the whole name with dots replaced where two files share a stem (a.jpg, a.png)."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return {p: p.stem if counts[p.stem] == 1 else p.name.replace(".", "_") for p in paths}


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, device=True)
    parser.add_argument("--run", type=Path, required=True,
                        help="a finished run's folder, e.g. results/demo/runs/default/seed0")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (any size, any aspect)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", help="the run's backbone weights file, where it moved since the run")
    parser.add_argument("--probe", choices=("cluster", "linear"), default="cluster")
    parser.add_argument("--cluster-ids", action="store_true", help="write cluster ids even where a mapping exists")
    parser.add_argument("--crf", action="store_true", help="also write the CRF-refined labels")
    parser.add_argument("--short-side", type=int, help="working short side (default: the run's eval resolution)")
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring windows")
    parser.add_argument("--batch-size", type=int,
                        help="windows per backbone batch (default: the batch size of the run's extraction)")
    args = parse_stage_args(parser, argv)
    run = find_run(args.run)
    seg = Segmenter(run, weights=args.weights, probe=args.probe, cluster_ids=args.cluster_ids,
                    short_side=args.short_side, overlap=args.overlap, crf=args.crf, device=args.device,
                    batch_size=args.batch_size)
    paths = image_io.folder_files(args.images)
    stems = output_stems(paths)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "legend.csv", seg.legend())
    done, skipped = 0, []
    results = seg.segment_paths(paths)
    for path, result in progress(results, desc="segment images", total=len(paths)):
        if isinstance(result, Exception):
            log.warning("skipping %s: %s", path, result)
            skipped.append(path)
            continue
        original, labels = result
        for kind, ids in labels.items():
            suffix = "" if kind == "raw" else "_crf"
            save_label(args.out / f"{stems[path]}{suffix}.png", ids)
            save_overlay(args.out / f"{stems[path]}{suffix}_overlay.png", original, ids, seg.colours)
        done += 1
    write_text(args.out / "skipped.txt", "".join(f"{p}\n" for p in skipped))
    log.info("segmented %d of %d files into %s; skipped %d%s", done, len(paths), args.out, len(skipped),
             f" ({', '.join(p.name for p in skipped)})" if skipped else "")
    if not done:
        raise UserError(f"no image in {args.images} could be segmented ({len(skipped)} files skipped, listed in "
                        f"{args.out / 'skipped.txt'} and above with the reasons): put readable images there")


if __name__ == "__main__":
    cli(main)
