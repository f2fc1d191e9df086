"""The official deterministic transform: NEAREST short-side resize, centre crop, crop boxes, label mapping."""

import numpy as np
from PIL import Image

from stego_steps import images


def coded_image(h, w):
    """An RGB image whose pixel values encode their coordinates, and the matching label map."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([yy % 256, xx % 256, (yy // 256) * 16 + xx // 256], -1).astype(np.uint8)
    return Image.fromarray(rgb), (yy * w + xx).astype(np.int64)


def decode(rgb, w):
    y = rgb[..., 0].astype(np.int64) + 256 * (rgb[..., 2].astype(np.int64) // 16)
    x = rgb[..., 1].astype(np.int64) + 256 * (rgb[..., 2].astype(np.int64) % 16)
    return y * w + x


def test_resize_follows_torchvision_sizes():
    img = Image.new("RGB", (640, 480))
    assert images.resize_short_side(img, 320).size == (426, 320)
    assert images.resize_short_side(Image.new("RGB", (300, 500)), 224).size == (224, 373)
    assert images.center_crop(Image.new("RGB", (426, 320)), 320).size == (320, 320)


def test_image_and_label_take_the_same_pixels():
    img, label = coded_image(120, 190)  # codes stay below the int16 range of label maps
    for box in (None, (10, 20, 150, 100)):
        rgb = images.transform_image(img, 64, box)
        lab = images.transform_label(label, 64, box)
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert lab.shape == (64, 64) and lab.dtype == np.int16
        # NEAREST picks source pixels: the label map must name exactly the pixels the image shows.
        assert (decode(rgb, 190) == lab).all()


def test_label_transform_keeps_ignore():
    label = np.full((50, 80), -1, np.int64)
    label[:, 40:] = 3
    out = images.transform_label(label, 32)
    assert set(np.unique(out)) == {-1, 3}


def test_lut_maps_raw_values_and_ignores_the_rest():
    lut = [2, 0, 1] + [-1] * 253
    raw = np.array([[0, 1, 2, 255, 300]])
    assert images.apply_lut(raw, lut).tolist() == [[2, 0, 1, -1, -1]]


def test_jpeg_roundtrip_changes_pixels_slightly():
    img, _ = coded_image(64, 64)
    out = images.transform_image(img, 64, jpeg_quality=75).astype(int)
    ref = images.transform_image(img, 64).astype(int)
    assert 0 < np.abs(out - ref).mean() < 40


def test_read_back_png(tmp_path):
    img, _ = coded_image(20, 30)
    img.save(tmp_path / "a.png")
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(tmp_path / "l.png")
    assert images.read_image(tmp_path / "a.png").size == (30, 20)
    assert (images.read_label(tmp_path / "l.png") == 7).all()


def test_damaged_files_name_the_file_and_the_fix(tmp_path):
    import pytest

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png.*replace it"):
        images.read_image(bad)
    with pytest.raises(ValueError, match="broken.png"):
        images.read_label(bad)
