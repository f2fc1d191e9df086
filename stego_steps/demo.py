"""The built-in `demo` dataset: procedural, offline, deterministic scenes with exact label maps.

Every image is a partition of the canvas into 2–4 smooth, irregular regions (argmax of smoothed random
fields with a finer wobble on the boundaries), each painted with the texture of one region class:

| class | colour family | texture |
|---|---|---|
| sky   | pale blue        | smooth gradient with faint large clouds (almost no high frequencies) |
| grass | green            | fine isotropic grain with medium-scale two-tone patches |
| water | blue (overlaps sky) | oriented waves (mostly horizontal, warped) |
| sand  | tan / beige      | the same fine grain as grass, other colours |
| rock  | grey-brown (overlaps sand) | coarse cellular texture: shaded stones with dark cracks |
| brick | red-brown        | running-bond brick grid with light mortar lines |

So colour alone confuses sky/water and sand/rock (and partly rock/brick), while texture alone confuses
grass/sand: a segmenter needs both. Colours (hue, saturation, brightness), contrast, texture scale and
orientation are jittered per region, and a global illumination gradient plus sensor noise is applied on top.
The label of a pixel is exactly the class whose texture was painted there.

Each image has its own random stream derived from `(seed, split, index)` with `numpy.random.SeedSequence`, so
growing a split never changes earlier images and splits never share images. Image `i` of a split always
contains class `i % len(CLASS_NAMES)` (the other classes are random), so every class appears in a split of at
least `len(CLASS_NAMES)` images.
"""

from __future__ import annotations

import colorsys
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

CLASS_NAMES: tuple[str, ...] = ("sky", "grass", "water", "sand", "rock", "brick")

MIN_REGION_FRACTION = 0.1  # every class drawn into an image covers at least this share of it
MANIFEST = "scenes.json"  # the settings the scenes of a folder were rendered with


# --------------------------------------------------------------------------------------------- noise helpers
def _bspline_taps(n: int, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """First coarse index [n] and cubic B-spline weights [n,4] that interpolate a grid of spacing `scale`."""
    pos = (np.arange(n, dtype=np.float32) + offset) / scale + 1.5
    first = np.floor(pos).astype(np.int64) - 1
    f = (pos - np.floor(pos))[:, None]
    weights = np.concatenate([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3],
                             axis=1) / 6.0
    return first, weights


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-variance random field with correlation length about `scale` pixels (float32 [h,w]).

    Cubic B-spline interpolation of coarse white noise, done separably with gathers (no BLAS: tiny matrix
    products with a multithreaded BLAS were 30x slower on a loaded two-core machine).
    """
    y0, wy = _bspline_taps(h, scale, rng.uniform(0, scale))
    x0, wx = _bspline_taps(w, scale, rng.uniform(0, scale))
    grid = rng.standard_normal((int(np.ceil(h / scale)) + 6, int(np.ceil(w / scale)) + 6), dtype=np.float32)
    rows = sum(wx[:, k] * grid[:, x0 + k] for k in range(4))  # [grid rows, w]
    field = sum(wy[:, k, None] * rows[y0 + k, :] for k in range(4))  # [h, w]
    field -= field.mean()
    field /= field.std() + 1e-8
    return field


def _fine_noise(rng: np.random.Generator, h: int, w: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """Unit-variance fine-grained noise: white noise blurred by a small Gaussian (float32 [h,w])."""
    field = gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), sigma, mode="reflect")
    field /= field.std() + 1e-8
    return field


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))),
                      dtype=np.float32)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two RGB colours, t in [0,1] of shape [h,w] → [h,w,3]."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    return a * (1.0 - t) + b * t


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


# --------------------------------------------------------------------------------------------- class painters
# Each painter returns float32 RGB [h,w,3] in roughly [0,1] for the whole canvas; the caller keeps its region.
def _paint_sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    hue, sat, val = rng.uniform(0.53, 0.62), rng.uniform(0.2, 0.55), rng.uniform(0.65, 0.95)
    top = _hsv(hue, sat, val * rng.uniform(0.85, 0.97))
    bottom = _hsv(hue + rng.uniform(-0.02, 0.02), sat * rng.uniform(0.3, 0.7), min(1.0, val * 1.08))
    yy, xx = _coords(h, w)
    angle = np.pi / 2 + rng.uniform(-0.35, 0.35)  # mostly vertical gradient
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    t = (proj - proj.min()) / (np.ptp(proj) + 1e-6)
    t = t + rng.uniform(0.05, 0.15) * _smooth_noise(rng, h, w, rng.uniform(50, 90))
    return _mix(top, bottom, t)


def _paint_grain(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Fine isotropic grain + medium-scale two-tone patches: shared by grass and sand."""
    c1 = _hsv(hue, sat, val)
    c2 = _hsv(hue + rng.uniform(-0.05, 0.05), sat * rng.uniform(0.7, 1.2), val * rng.uniform(0.75, 1.1))
    patches = 0.5 + 0.35 * _smooth_noise(rng, h, w, rng.uniform(12, 24))
    base = _mix(c1, c2, patches)
    grain = _fine_noise(rng, h, w, rng.uniform(0.6, 1.3))
    return base * (1.0 + rng.uniform(0.15, 0.3) * grain)[..., None]


def _paint_grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _paint_grain(rng, h, w, rng.uniform(0.2, 0.36), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.65))


def _paint_sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _paint_grain(rng, h, w, rng.uniform(0.08, 0.14), rng.uniform(0.2, 0.5), rng.uniform(0.55, 0.9))


def _paint_water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    hue, sat, val = rng.uniform(0.52, 0.63), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.8)
    colour = _hsv(hue, sat, val)
    crest = _hsv(hue, sat * 0.5, min(1.0, val * 1.3))
    yy, xx = _coords(h, w)
    angle = np.pi / 2 + rng.uniform(-0.4, 0.4)  # wave fronts mostly horizontal
    wavelength = rng.uniform(7, 14)
    phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / wavelength
    phase += rng.uniform(1.0, 2.5) * _smooth_noise(rng, h, w, rng.uniform(25, 50)) + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase)
    base = colour * (1.0 + rng.uniform(0.12, 0.3) * wave)[..., None]
    highlight = (np.clip((wave - 0.75) * 4, 0, 1) * rng.uniform(0.2, 0.6))[..., None]
    return base * (1 - highlight) + crest * highlight


def _voronoi(rng: np.random.Generator, h: int, w: int, cell: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered-grid Voronoi: distance to the nearest and second-nearest seed, and the nearest cell's id."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    sy = ((np.arange(gh)[:, None] - 1 + rng.uniform(0.1, 0.9, (gh, gw))) * cell).astype(np.float32).ravel()
    sx = ((np.arange(gw)[None, :] - 1 + rng.uniform(0.1, 0.9, (gh, gw))) * cell).astype(np.float32).ravel()
    yy, xx = _coords(h, w)
    home = ((yy // cell).astype(np.int64) + 1) * gw + (xx // cell).astype(np.int64) + 1
    d1 = np.full((h, w), np.inf, np.float32)  # squared distances while searching
    d2 = np.full((h, w), np.inf, np.float32)
    ids = np.zeros((h, w), np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cand = home + (dy * gw + dx)
            d = np.square(yy - sy[cand]) + np.square(xx - sx[cand])
            closer = d < d1
            np.minimum(d2, d, out=d2)
            np.copyto(d2, d1, where=closer)
            np.copyto(d1, d, where=closer)
            np.copyto(ids, cand, where=closer)
    np.sqrt(d1, out=d1)
    np.sqrt(d2, out=d2)
    return d1, d2, ids


def _paint_rock(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    colour = _hsv(rng.uniform(0.05, 0.13), rng.uniform(0.03, 0.3), rng.uniform(0.4, 0.75))
    cell = rng.uniform(16, 28)
    d1, d2, ids = _voronoi(rng, h, w, cell)
    tone = rng.uniform(-1, 1, ids.max() + 1).astype(np.float32)[ids]
    shade = 1.0 + rng.uniform(0.12, 0.25) * tone - rng.uniform(0.2, 0.4) * (d1 / cell - 0.35)
    crack = np.clip((d2 - d1) / rng.uniform(1.5, 3.0), 0, 1)
    shade = shade * (0.45 + 0.55 * crack) + 0.05 * _fine_noise(rng, h, w, 0.8)
    return colour * shade[..., None]


def _paint_brick(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    brick = _hsv(rng.uniform(-0.02, 0.06), rng.uniform(0.4, 0.75), rng.uniform(0.35, 0.7))
    mortar = _hsv(rng.uniform(0.06, 0.12), rng.uniform(0.03, 0.15), rng.uniform(0.6, 0.85))
    yy, xx = _coords(h, w)
    angle = rng.uniform(-0.15, 0.15)
    u = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, 100)
    v = -xx * np.sin(angle) + yy * np.cos(angle) + rng.uniform(0, 100)
    row_h = rng.uniform(8, 14)
    brick_w = row_h * rng.uniform(2.0, 2.8)
    joint = rng.uniform(1.2, 2.2)
    row = np.floor(v / row_h).astype(np.int64)
    uu = u + (row % 2) * brick_w / 2
    col = np.floor(uu / brick_w).astype(np.int64)
    is_mortar = ((v - row * row_h) < joint) | ((uu - col * brick_w) < joint)
    table = rng.uniform(-1, 1, (32, 32)).astype(np.float32)
    shade = 1.0 + rng.uniform(0.08, 0.2) * table[row % 32, col % 32] + 0.06 * _fine_noise(rng, h, w, 0.8)
    return np.where(is_mortar[..., None], mortar, brick) * shade[..., None]


_PAINTERS = (_paint_sky, _paint_grass, _paint_water, _paint_sand, _paint_rock, _paint_brick)
assert len(_PAINTERS) == len(CLASS_NAMES)


# --------------------------------------------------------------------------------------------- scenes
def _layout(rng: np.random.Generator, h: int, w: int, n_regions: int) -> np.ndarray:
    """int [h,w] region index in range(n_regions): smooth irregular blobs, each >= MIN_REGION_FRACTION."""
    scale = rng.uniform(0.25, 0.45) * min(h, w)
    wobble_scale = scale * rng.uniform(0.12, 0.2)
    wobble = rng.uniform(0.1, 0.2)
    fields = np.stack([
        _smooth_noise(rng, h, w, scale) + wobble * _smooth_noise(rng, h, w, wobble_scale)
        for _ in range(n_regions)
    ])
    offsets = rng.normal(0.0, 0.3, n_regions).astype(np.float32)
    for _ in range(50):
        regions = np.argmax(fields + offsets[:, None, None], axis=0)
        frac = np.bincount(regions.ravel(), minlength=n_regions) / regions.size
        smallest = int(np.argmin(frac))
        if frac[smallest] >= MIN_REGION_FRACTION:
            break
        offsets[smallest] += 0.1
    return regions


def render_scene(rng: np.random.Generator, height: int, width: int, *, required: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One demo scene: uint8 RGB [H,W,3] and its exact uint8 label map [H,W] with values in range(#classes).

    `required` forces one class index into the scene (write_demo uses it to cover every class).
    """
    n_classes = len(CLASS_NAMES)
    n_regions = int(rng.choice([2, 3, 4], p=[0.3, 0.4, 0.3]))
    if required is None:
        classes = rng.choice(n_classes, size=n_regions, replace=False)
    else:
        others = [c for c in range(n_classes) if c != required]
        classes = np.concatenate([[required], rng.choice(others, size=n_regions - 1, replace=False)])
        classes = rng.permutation(classes)
    regions = _layout(rng, height, width, n_regions)
    label = classes[regions].astype(np.uint8)

    image = np.zeros((height, width, 3), np.float32)
    for region, cls in enumerate(classes):
        np.copyto(image, _PAINTERS[cls](rng, height, width), where=(regions == region)[..., None])

    # Global illumination: a linear gradient and a soft low-frequency modulation, then sensor noise.
    yy, xx = _coords(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(height, width)
    light = rng.uniform(0.85, 1.1) + rng.uniform(0.0, 0.3) * (ramp - ramp.mean())
    light = light + rng.uniform(0.0, 0.07) * _smooth_noise(rng, height, width, 0.5 * max(height, width))
    image = image * light[..., None] + 0.012 * rng.standard_normal(image.shape, dtype=np.float32)
    rgb = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return rgb, label


def image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of image `index` of `split`: independent of every other (split, index) pair."""
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode("utf-8")), index))


def scene_rows(root: Path, counts: dict[str, int]) -> dict[str, list[dict]]:
    """The rows `{'id', 'image', 'label'}` (string paths) of the scenes of each split under `root`."""
    root = Path(root)
    return {split: [{"id": f"{split}_{i:05d}", "image": str(root / split / "images" / f"{split}_{i:05d}.png"),
                     "label": str(root / split / "labels" / f"{split}_{i:05d}.png")} for i in range(count)]
            for split, count in counts.items()}


def _manifest(counts: dict[str, int], height: int, width: int, seed: int) -> dict:
    return {"counts": dict(counts), "height": height, "width": width, "seed": seed}


def write_demo(root: Path, counts: dict[str, int], *, height: int, width: int, seed: int
               ) -> dict[str, list[dict]]:
    """Write `root/{split}/images/{id}.png` and `root/{split}/labels/{id}.png`; return the rows per split.

    Rows are `{'id', 'image', 'label'}` with string paths. Image `i` of a split depends only on
    `(seed, split, i, height, width)`. `root/MANIFEST`, written last, records the settings of the scenes.
    """
    root = Path(root)
    index = scene_rows(root, counts)
    (root / MANIFEST).unlink(missing_ok=True)
    for split, rows in index.items():
        for i, row in enumerate(rows):
            rng = np.random.default_rng(image_seed(seed, split, i))
            rgb, label = render_scene(rng, height, width, required=i % len(CLASS_NAMES))
            Path(row["image"]).parent.mkdir(parents=True, exist_ok=True)
            Path(row["label"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, "RGB").save(row["image"], compress_level=1)
            Image.fromarray(label, "L").save(row["label"], compress_level=1)
    (root / MANIFEST).write_text(json.dumps(_manifest(counts, height, width, seed), sort_keys=True) + "\n")
    return index


def rendered_rows(root: Path, counts: dict[str, int], *, height: int, width: int, seed: int
                  ) -> dict[str, list[dict]] | None:
    """The rows of scenes already rendered under `root` with exactly these settings, or None (not rendered,
    rendered with other settings, or files missing)."""
    manifest = Path(root) / MANIFEST
    try:
        written = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if written != _manifest(counts, height, width, seed):
        return None
    rows = scene_rows(root, counts)
    if not all(Path(r[k]).is_file() for split_rows in rows.values() for r in split_rows for k in ("image", "label")):
        return None
    return rows
