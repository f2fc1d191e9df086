"""Reading images and label maps, and the official deterministic transform.

Every image goes through: optional crop box at full resolution (five-crop) → optional in-memory JPEG
re-encoding (the official five-crops were stored as JPEG quality 75) → resize of the short side with PIL
NEAREST (also for RGB: bilinear resizing changes the features) → centre crop to a square.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stego_steps.index import IGNORE, Box


def read_image(path: str | Path) -> Image.Image:
    """RGB image from a PNG/JPEG file or an IIC-style `.mat` tile (first three channels of key `img`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist: check the dataset root in config/config.yaml")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        arr = np.asarray(loadmat(path)["img"])[..., :3]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "RGB")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:  # truncated or not an image (PIL's UnidentifiedImageError is an OSError)
        raise ValueError(f"cannot read image {path} ({err}): the file is damaged or not an image; "
                         "replace it, or remove it from the dataset and rerun `prepare`") from err


def read_label(path: str | Path) -> np.ndarray:
    """Raw integer label map from a PNG file or a `.mat` file (key `gt`); no class mapping applied."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file {path} does not exist: check the dataset root in config/config.yaml")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        return np.asarray(loadmat(path)["gt"]).astype(np.int64)
    try:
        with Image.open(path) as img:
            return np.asarray(img).astype(np.int64)
    except OSError as err:
        raise ValueError(f"cannot read label map {path} ({err}): the file is damaged or not an image; "
                         "replace it, or remove the sample from the dataset and rerun `prepare`") from err


def apply_lut(raw: np.ndarray, lut: Sequence[int] | None) -> np.ndarray:
    """Map raw label values to class ids with a lookup table; values outside the table become IGNORE."""
    if lut is None:
        return raw.astype(np.int64)
    table = np.asarray(lut, dtype=np.int64)
    out = np.full(raw.shape, IGNORE, dtype=np.int64)
    inside = (raw >= 0) & (raw < len(table))
    out[inside] = table[raw[inside]]
    return out


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(size)` semantics with PIL NEAREST: short side → size, long side truncated."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), Image.NEAREST)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision `CenterCrop(size)` offsets (rounded half-differences)."""
    w, h = img.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def transform_image(img: Image.Image, res: int, box: Box | None = None, jpeg_quality: int | None = None
                    ) -> np.ndarray:
    """uint8 [res,res,3] after crop box, optional JPEG re-encoding, NEAREST short-side resize, centre crop."""
    if box is not None:
        img = img.crop(box)
    if jpeg_quality:
        img = jpeg_roundtrip(img, jpeg_quality)
    return np.array(center_crop(resize_short_side(img, res), res), dtype=np.uint8)


def transform_label(label: np.ndarray, res: int, box: Box | None = None) -> np.ndarray:
    """int16 [res,res] class ids (IGNORE = -1) after the same geometry as the image."""
    if box is not None:
        x0, y0, x1, y1 = box
        label = label[y0:y1, x0:x1]
    # Resize the labels packed into an RGB image (value + 1 over three bytes): PIL's 16-bit path rounds
    # pixel centres differently from its RGB path, and labels must take exactly the image's pixels.
    v = (label.astype(np.int64) + 1).astype(np.uint32)
    packed = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], axis=-1).astype(np.uint8)
    out = np.asarray(center_crop(resize_short_side(Image.fromarray(packed, "RGB"), res), res)).astype(np.int64)
    return (out[..., 0] + (out[..., 1] << 8) + (out[..., 2] << 16) - 1).astype(np.int16)
