"""Segmenting images of any size with a finished run: its files, the backbone that computed its features,
sliding windows through backbone and head, label maps at the original size (the segment_images stage's core)."""

from __future__ import annotations

import json
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
from stego_steps.artifacts import atomic_path
from stego_steps.backbones import (
    FeatureExtractor,
    WeightsUnavailable,
    backbone_id,
    build_backbone,
    features_of,
    to_float,
)
from stego_steps.crf import refine_labels
from stego_steps.errors import UserError
from stego_steps.head import LogProbs, cluster_log_probs, flip_tta_code, linear_log_probs, load_head, load_probe
from stego_steps.label_maps import palette
from stego_steps.protocol import row_key
from stego_steps.store import as_stored
from stego_steps.validate import MAX_ASPECT

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
        path = run_dir / "mapping" / f"{row_key('cluster', crf)}.csv"
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
    layers = run.features.get("layers")  # a `timm/` model's chosen layers, where the run chose them
    network = backbone_id(run.backbone, recorded if same else weights or recorded, seed, layers)
    if run.backbone_id and network != run.backbone_id:
        raise UserError(f"--weights {weights} is not the network that computed the features of the run "
                        f"({run.backbone} with {recorded or 'its default weights'}, recorded in {run.codes}): pass "
                        "the weights file the run used, or leave --weights out")
    try:
        return build_backbone(run.backbone, weights=path, seed=seed, layers=layers), network
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
