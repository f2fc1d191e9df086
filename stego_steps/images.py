"""Reading images and label maps, and the official deterministic transform.

Every image goes through: optional crop box at full resolution (five-crop) → optional in-memory JPEG
re-encoding (the official five-crops were stored as JPEG quality 75) → resize of the short side with PIL
NEAREST (also for RGB: bilinear resizing changes the features) → centre crop to a square.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stego_steps.errors import UserError
from stego_steps.index import IGNORE, Box

# How each PIL image mode becomes RGB (docs/reliability.md's table of bad input lists the same):
# RGB as is; 1/L grey → three equal channels; LA/RGBA/RGBX/PA → alpha dropped (transparent pixels keep
# their colour values); P → through its palette; CMYK/YCbCr → PIL's conversion (no colour profile);
# 16-bit grey (I;16*, or I with values in 0..65535) → scaled to 8 bits (v · 255 / 65535, rounded).
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
RGB_MODES = {"RGB", "1", "L", "LA", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "I", *SIXTEEN_BIT_MODES}
# Label maps: one channel whose values are the raw label ids (P: the palette indices, not the colours).
LABEL_MODES = {"1", "L", "P", "I", *SIXTEEN_BIT_MODES}
EXIF_ORIENTATION = 0x0112
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error)


def _gone(path: Path, what: str) -> UserError:
    return UserError(f"{what} {path} does not exist: the dataset changed after `prepare` indexed it; rerun "
                     "snakemake (it re-runs `prepare` when the dataset's files change)")


def open_image(path: str | Path) -> Image.Image:
    """A fully decoded image as displayed: the EXIF orientation applied (`ImageOps.exif_transpose`).

    Raises a `UserError` naming the file for an empty, unreadable, truncated or damaged file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty file (0 bytes): replace it with the real image, or remove it "
                        "from the dataset and rerun")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as err:
        raise UserError(f"{path} is too large to read safely ({err}): use a smaller version of it, or remove it "
                        "from the dataset and rerun") from err
    except DECODE_ERRORS as err:  # PIL's UnidentifiedImageError is an OSError
        what = "is not an image PIL can read" if isinstance(err, UnidentifiedImageError) else \
            f"is damaged or truncated ({type(err).__name__}: {err})"
        raise UserError(f"{path} {what}: replace it, or remove it from the dataset and rerun") from err


def folder_files(folder: str | Path) -> list[Path]:
    """Every regular file directly in `folder` (not hidden, not recursive), sorted: the files that
    `segment_images` segments and that its rule tracks as inputs (non-images are reported when read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: name a folder of images")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def displayed_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as displayed (EXIF orientation 5–8 swaps the stored sides), from the header only."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def to_rgb(img: Image.Image, path: str | Path = "") -> Image.Image:
    """The RGB image the pipeline sees, by the conversions listed above `RGB_MODES`; other modes are a
    `UserError` naming the file."""
    mode = img.mode
    if mode not in RGB_MODES:
        raise UserError(f"{path} has the image mode {mode}, which this pipeline does not convert: save it as "
                        "8-bit RGB (PNG or JPEG)")
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(img)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise UserError(f"{path} is a 32-bit integer image with values outside 0..65535: save it as 8-bit "
                            "RGB (PNG or JPEG)")
        grey = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """RGB image as displayed (EXIF orientation applied, mode converted by `to_rgb`) from an image file, or
    from an IIC-style `.mat` tile (first three channels of key `img`)."""
    path = Path(path)
    if not path.exists():
        raise _gone(path, "image file")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        arr = np.asarray(loadmat(path)["img"])[..., :3]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "RGB")
    return to_rgb(open_image(path), path)


def read_label(path: str | Path) -> np.ndarray:
    """Raw integer label map (EXIF orientation applied, as for images) from a single-channel image file or a
    `.mat` file (key `gt`); no class mapping applied. A colour (RGB) label image is a `UserError`."""
    path = Path(path)
    if not path.exists():
        raise _gone(path, "label file")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        return np.asarray(loadmat(path)["gt"]).astype(np.int64)
    img = open_image(path)
    if img.mode not in LABEL_MODES:
        raise UserError(f"{path} is a colour label image (mode {img.mode}); a label map must have one channel "
                        "whose pixel values are the class ids (mode L or P PNG): map each colour to its class "
                        "id and save the ids as a greyscale PNG (a grey image stored as RGB: "
                        "`Image.open(p).convert('L').save(p)`)")
    return np.asarray(img).astype(np.int64)


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
