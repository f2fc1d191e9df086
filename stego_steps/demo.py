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
from collections.abc import Callable
from dataclasses import dataclass
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


# --------------------------------------------------------------------------------------------- textures
# A texture paints float32 RGB [h,w,3] in roughly [0,1] for the whole canvas from a base colour (hue,
# saturation, value); the caller keeps its region. A painter draws a class's colour and calls its texture.
Texture = Callable[[np.random.Generator, int, int, float, float, float], np.ndarray]
Painter = Callable[[np.random.Generator, int, int], np.ndarray]


def _texture_smooth(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Smooth gradient with faint large clouds (almost no high frequencies)."""
    top = _hsv(hue, sat, val * rng.uniform(0.85, 0.97))
    bottom = _hsv(hue + rng.uniform(-0.02, 0.02), sat * rng.uniform(0.3, 0.7), min(1.0, val * 1.08))
    yy, xx = _coords(h, w)
    angle = np.pi / 2 + rng.uniform(-0.35, 0.35)  # mostly vertical gradient
    proj = xx * np.cos(angle) + yy * np.sin(angle)
    t = (proj - proj.min()) / (np.ptp(proj) + 1e-6)
    t = t + rng.uniform(0.05, 0.15) * _smooth_noise(rng, h, w, rng.uniform(50, 90))
    return _mix(top, bottom, t)


def _texture_grain(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Fine isotropic grain + medium-scale two-tone patches."""
    c1 = _hsv(hue, sat, val)
    c2 = _hsv(hue + rng.uniform(-0.05, 0.05), sat * rng.uniform(0.7, 1.2), val * rng.uniform(0.75, 1.1))
    patches = 0.5 + 0.35 * _smooth_noise(rng, h, w, rng.uniform(12, 24))
    base = _mix(c1, c2, patches)
    grain = _fine_noise(rng, h, w, rng.uniform(0.6, 1.3))
    return base * (1.0 + rng.uniform(0.15, 0.3) * grain)[..., None]


def _texture_waves(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Oriented waves (mostly horizontal, warped) with pale crests."""
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


def _texture_cells(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Coarse cellular texture: shaded stones with dark cracks."""
    colour = _hsv(hue, sat, val)
    cell = rng.uniform(16, 28)
    d1, d2, ids = _voronoi(rng, h, w, cell)
    tone = rng.uniform(-1, 1, ids.max() + 1).astype(np.float32)[ids]
    shade = 1.0 + rng.uniform(0.12, 0.25) * tone - rng.uniform(0.2, 0.4) * (d1 / cell - 0.35)
    crack = np.clip((d2 - d1) / rng.uniform(1.5, 3.0), 0, 1)
    shade = shade * (0.45 + 0.55 * crack) + 0.05 * _fine_noise(rng, h, w, 0.8)
    return colour * shade[..., None]


def _texture_bricks(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Running-bond brick grid with light, nearly grey mortar lines."""
    brick = _hsv(hue, sat, val)
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


def _texture_dots(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Round dark spots of the same hue on a plain ground, on a jittered grid."""
    ground = _hsv(hue, sat, val)
    spot = _hsv(hue, sat * rng.uniform(0.8, 1.1), val * rng.uniform(0.4, 0.6))
    cell = rng.uniform(9, 15)
    d1, _, _ = _voronoi(rng, h, w, cell)
    radius = cell * rng.uniform(0.22, 0.34)
    base = _mix(ground, spot, radius + 0.5 - d1)  # anti-aliased disks
    return base * (1.0 + 0.05 * _fine_noise(rng, h, w, 0.8))[..., None]


def _texture_hatch(rng: np.random.Generator, h: int, w: int, hue: float, sat: float, val: float) -> np.ndarray:
    """Cross-hatching: two families of thin dark lines of the same hue, crossing at about right angles."""
    ground = _hsv(hue, sat, val)
    line = _hsv(hue, sat * rng.uniform(0.8, 1.1), val * rng.uniform(0.35, 0.55))
    yy, xx = _coords(h, w)
    period, width = rng.uniform(6, 10), rng.uniform(1.0, 1.8)
    first = np.pi / 4 + rng.uniform(-0.3, 0.3)
    ink = np.zeros((h, w), np.float32)
    for angle in (first, first + np.pi / 2 + rng.uniform(-0.15, 0.15)):
        u = np.mod(xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period), period)
        ink = np.maximum(ink, width / 2 + 0.5 - np.minimum(u, period - u))  # distance to the nearest line
    return _mix(ground, line, ink) * (1.0 + 0.05 * _fine_noise(rng, h, w, 0.8))[..., None]


# --------------------------------------------------------------------------------------------- easy painters
# The `easy` classes: each draws its colour from its own family, then paints its texture.
def _paint_sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _texture_smooth(rng, h, w, rng.uniform(0.53, 0.62), rng.uniform(0.2, 0.55), rng.uniform(0.65, 0.95))


def _paint_grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _texture_grain(rng, h, w, rng.uniform(0.2, 0.36), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.65))


def _paint_sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _texture_grain(rng, h, w, rng.uniform(0.08, 0.14), rng.uniform(0.2, 0.5), rng.uniform(0.55, 0.9))


def _paint_water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _texture_waves(rng, h, w, rng.uniform(0.52, 0.63), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.8))


def _paint_rock(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _texture_cells(rng, h, w, rng.uniform(0.05, 0.13), rng.uniform(0.03, 0.3), rng.uniform(0.4, 0.75))


def _paint_brick(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _texture_bricks(rng, h, w, rng.uniform(-0.02, 0.06), rng.uniform(0.4, 0.75), rng.uniform(0.35, 0.7))


_PAINTERS = (_paint_sky, _paint_grass, _paint_water, _paint_sand, _paint_rock, _paint_brick)
assert len(_PAINTERS) == len(CLASS_NAMES)


# --------------------------------------------------------------------------------------------- hard classes
# The `hard` classes: seven textures and seven hues, chained so that class 2k and 2k+1 share texture k and
# class 2k+1 shares its hue with class 2k+2 (class 13 with class 0). Hues are spaced by 1/7 and consecutive
# hues of the chain by 3/7 of the colour wheel, so that texture-sharing pairs differ strongly in hue.
HARD_TEXTURES: tuple[tuple[str, Texture], ...] = (
    ("smooth", _texture_smooth), ("grain", _texture_grain), ("waves", _texture_waves), ("cells", _texture_cells),
    ("bricks", _texture_bricks), ("dots", _texture_dots), ("hatch", _texture_hatch))
HARD_HUES: dict[str, float] = {"red": 0 / 7, "amber": 1 / 7, "lime": 2 / 7, "jade": 3 / 7, "azure": 4 / 7,
                               "violet": 5 / 7, "magenta": 6 / 7}
HUE_JITTER = 0.025  # per region: hues stay 1/7 - 2 * 0.025 apart from the next family
HARD_SATURATION = (0.4, 0.8)  # shared by every hard class: only hue and texture tell them apart
HARD_VALUE = (0.4, 0.85)


def _hard_chain() -> tuple[tuple[str, str, str], ...]:
    """(name, texture, colour) of every hard class, in label order."""
    colours = list(HARD_HUES)
    chain = [colours[(3 * j) % len(colours)] for j in range(len(HARD_TEXTURES))]  # red, jade, magenta, ...
    return tuple((f"{texture}_{chain[(k + j) % len(chain)]}", texture, chain[(k + j) % len(chain)])
                 for k, (texture, _) in enumerate(HARD_TEXTURES) for j in (0, 1))


HARD_CLASSES = _hard_chain()


def _hard_painter(texture: Texture, hue: float) -> Painter:
    def paint(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        return texture(rng, h, w, hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(*HARD_SATURATION),
                       rng.uniform(*HARD_VALUE))
    return paint


_HARD_PAINTERS = tuple(_hard_painter(dict(HARD_TEXTURES)[texture], HARD_HUES[colour])
                       for _, texture, colour in HARD_CLASSES)


# --------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Style:
    """How the scenes of a style are composed: its classes and painters, the layout, clutter and lighting."""

    class_names: tuple[str, ...]
    painters: tuple[Painter, ...]
    regions: tuple[int, ...]  # choices of the number of regions (distinct classes) of the layout
    region_p: tuple[float, ...]  # their probabilities
    layout_scale: tuple[float, float]  # correlation length of the layout fields, fraction of min(h, w)
    min_region_fraction: float  # every region of the layout covers at least this share of the image
    blobs: tuple[int, int] = (0, 0)  # small distractor blobs of random classes per scene (inclusive range)
    blob_radius: tuple[float, float] = (0.0, 0.0)  # fraction of min(h, w)
    strands: tuple[int, int] = (0, 0)  # thin curved structures of random classes per scene (inclusive range)
    strand_width: tuple[float, float] = (0.0, 0.0)  # pixels
    light_ramp: float = 0.3  # largest amplitude of the global illumination gradient
    tint: float = 0.0  # largest per-channel gain deviation of a global colour cast
    noise: float = 0.012  # standard deviation of the sensor noise


STYLES: dict[str, Style] = {
    "easy": Style(CLASS_NAMES, _PAINTERS, regions=(2, 3, 4), region_p=(0.3, 0.4, 0.3), layout_scale=(0.25, 0.45),
                  min_region_fraction=MIN_REGION_FRACTION),
    "hard": Style(tuple(name for name, _, _ in HARD_CLASSES), _HARD_PAINTERS, regions=(3, 4, 5, 6),
                  region_p=(0.2, 0.3, 0.3, 0.2), layout_scale=(0.16, 0.3), min_region_fraction=0.04,
                  blobs=(3, 8), blob_radius=(0.03, 0.08), strands=(0, 2), strand_width=(2.0, 5.0),
                  light_ramp=0.6, tint=0.06),
}


def class_names(style: str = "easy") -> tuple[str, ...]:
    """The class names of a style, in label order."""
    return _style(style).class_names


def _style(style: str) -> Style:
    if style not in STYLES:
        raise ValueError(f"unknown demo style {style!r}: expected one of {', '.join(STYLES)}")
    return STYLES[style]


def _layout(rng: np.random.Generator, h: int, w: int, n_regions: int, *, scale: tuple[float, float] = (0.25, 0.45),
            min_fraction: float = MIN_REGION_FRACTION) -> np.ndarray:
    """int [h,w] region index in range(n_regions): smooth irregular blobs, each >= `min_fraction`."""
    scale_px = rng.uniform(*scale) * min(h, w)
    wobble_scale = scale_px * rng.uniform(0.12, 0.2)
    wobble = rng.uniform(0.1, 0.2)
    fields = np.stack([
        _smooth_noise(rng, h, w, scale_px) + wobble * _smooth_noise(rng, h, w, wobble_scale)
        for _ in range(n_regions)
    ])
    offsets = rng.normal(0.0, 0.3, n_regions).astype(np.float32)
    for _ in range(50):
        regions = np.argmax(fields + offsets[:, None, None], axis=0)
        frac = np.bincount(regions.ravel(), minlength=n_regions) / regions.size
        smallest = int(np.argmin(frac))
        if frac[smallest] >= min_fraction:
            break
        offsets[smallest] += 0.1
    return regions


def _paste(image: np.ndarray, label: np.ndarray, mask: np.ndarray, cls: int, painter: Painter,
           rng: np.random.Generator) -> None:
    """Paint class `cls` into the pixels of `mask` (painting only their bounding box) and label them."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1]
    image[y0:y1, x0:x1][box] = painter(rng, int(y1 - y0), int(x1 - x0))[box]
    label[y0:y1, x0:x1][box] = cls


def _add_clutter(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, style: Style) -> None:
    """Small distractor blobs and thin curved strands of random classes, painted over the layout."""
    h, w = label.shape
    n_classes = len(style.class_names)
    yy, xx = _coords(h, w)
    for _ in range(int(rng.integers(style.blobs[0], style.blobs[1] + 1))):
        cls = int(rng.integers(n_classes))
        radius = rng.uniform(*style.blob_radius) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = int(max(0, cy - 1.5 * radius)), int(min(h, cy + 1.5 * radius + 1))
        x0, x1 = int(max(0, cx - 1.5 * radius)), int(min(w, cx + 1.5 * radius + 1))
        dist = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx) / radius
        dist += 0.3 * _smooth_noise(rng, y1 - y0, x1 - x0, max(2.0, 0.7 * radius))  # irregular outline
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = dist < 1.0
        _paste(image, label, mask, cls, style.painters[cls], rng)
    for _ in range(int(rng.integers(style.strands[0], style.strands[1] + 1))):
        cls = int(rng.integers(n_classes))
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        across += rng.uniform(0.02, 0.06) * max(h, w) * _smooth_noise(rng, h, w, 0.3 * max(h, w))  # gentle bends
        length = rng.uniform(0.3, 0.8) * max(h, w)
        mask = (np.abs(across) < rng.uniform(*style.strand_width) / 2) & (np.abs(along) < length / 2)
        _paste(image, label, mask, cls, style.painters[cls], rng)


def render_scene(rng: np.random.Generator, height: int, width: int, *, required: int | None = None,
                 style: str = "easy") -> tuple[np.ndarray, np.ndarray]:
    """One demo scene: uint8 RGB [H,W,3] and its exact uint8 label map [H,W] with values in range(#classes).

    `required` forces one class index into the scene as a region of the layout (write_demo uses it to cover
    every class). `style` names an entry of STYLES.
    """
    spec = _style(style)
    n_classes = len(spec.class_names)
    n_regions = int(rng.choice(list(spec.regions), p=list(spec.region_p)))
    if required is None:
        classes = rng.choice(n_classes, size=n_regions, replace=False)
    else:
        others = [c for c in range(n_classes) if c != required]
        classes = np.concatenate([[required], rng.choice(others, size=n_regions - 1, replace=False)])
        classes = rng.permutation(classes)
    regions = _layout(rng, height, width, n_regions, scale=spec.layout_scale, min_fraction=spec.min_region_fraction)
    label = classes[regions].astype(np.uint8)

    image = np.zeros((height, width, 3), np.float32)
    for region, cls in enumerate(classes):
        np.copyto(image, spec.painters[cls](rng, height, width), where=(regions == region)[..., None])
    if spec.blobs[1] > 0 or spec.strands[1] > 0:
        _add_clutter(rng, image, label, spec)

    # Global illumination: a linear gradient and a soft low-frequency modulation (and a colour cast), then noise.
    yy, xx = _coords(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(height, width)
    light = rng.uniform(0.85, 1.1) + rng.uniform(0.0, spec.light_ramp) * (ramp - ramp.mean())
    light = light + rng.uniform(0.0, 0.07) * _smooth_noise(rng, height, width, 0.5 * max(height, width))
    image = image * light[..., None]
    if spec.tint > 0:
        image = image * (1.0 + rng.uniform(-spec.tint, spec.tint, 3)).astype(np.float32)
    image = image + spec.noise * rng.standard_normal(image.shape, dtype=np.float32)
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


def _manifest(counts: dict[str, int], height: int, width: int, seed: int, style: str) -> dict:
    manifest = {"counts": dict(counts), "height": height, "width": width, "seed": seed}
    if style != "easy":  # manifests of easy scenes stay as they were before there were styles
        manifest["style"] = style
    return manifest


def _write_scene(job: tuple[dict, int, str, int, int, int, str]) -> None:
    """Render scene `i` of `split` and write its image and label (one task of `write_demo`)."""
    row, seed, split, i, height, width, style = job
    rng = np.random.default_rng(image_seed(seed, split, i))
    rgb, label = render_scene(rng, height, width, required=i % len(class_names(style)), style=style)
    Image.fromarray(rgb, "RGB").save(row["image"], compress_level=1)
    Image.fromarray(label, "L").save(row["label"], compress_level=1)


def write_demo(root: Path, counts: dict[str, int], *, height: int, width: int, seed: int, style: str = "easy",
               workers: int = 1) -> dict[str, list[dict]]:
    """Write `root/{split}/images/{id}.png` and `root/{split}/labels/{id}.png`; return the rows per split.

    Rows are `{'id', 'image', 'label'}` with string paths. Image `i` of a split depends only on
    `(seed, split, i, height, width, style)`, so `workers` processes render the same files as one.
    `root/MANIFEST`, written last, records the settings of the scenes.
    """
    root = Path(root)
    index = scene_rows(root, counts)
    (root / MANIFEST).unlink(missing_ok=True)
    jobs = []
    for split, rows in index.items():
        for folder in ("images", "labels") if rows else ():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        jobs += [(row, seed, split, i, height, width, style) for i, row in enumerate(rows)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: nothing of this process is inherited; a worker imports numpy, SciPy and PIL only.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_scene, jobs, chunksize=max(len(jobs) // (8 * workers), 1)))
    else:
        for job in jobs:
            _write_scene(job)
    (root / MANIFEST).write_text(json.dumps(_manifest(counts, height, width, seed, style), sort_keys=True) + "\n")
    return index


def rendered_rows(root: Path, counts: dict[str, int], *, height: int, width: int, seed: int,
                  style: str = "easy") -> dict[str, list[dict]] | None:
    """The rows of scenes already rendered under `root` with exactly these settings, or None (not rendered,
    rendered with other settings, or files missing)."""
    manifest = Path(root) / MANIFEST
    try:
        written = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if written != _manifest(counts, height, width, seed, style):
        return None
    rows = scene_rows(root, counts)
    if not all(Path(r[k]).is_file() for split_rows in rows.values() for r in split_rows for k in ("image", "label")):
        return None
    return rows
