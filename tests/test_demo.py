"""The procedural demo dataset: shapes, exact labels, determinism, stability under growth, class coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego_steps import demo
from stego_steps.demo import CLASS_NAMES, render_scene, write_demo

H, W = 96, 128  # small canvases keep the tests fast; the workflow uses 240 x 320


def _files(rows: list[dict]) -> list[bytes]:
    return [Path(r[key]).read_bytes() for r in rows for key in ("image", "label")]


def test_class_names() -> None:
    assert 5 <= len(CLASS_NAMES) <= 6
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_render_scene_shapes_and_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(8):
        rgb, label = render_scene(rng, H, W)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert label.shape == (H, W) and label.dtype == np.uint8
        present = np.unique(label)
        assert set(present) <= set(range(len(CLASS_NAMES)))
        assert 2 <= len(present) <= 4
        # every class drawn covers a real region, not a sliver
        assert np.bincount(label.ravel()).max() < H * W
        assert min(np.mean(label == c) for c in present) >= 0.05
        assert rgb.std() > 5  # not a flat image


def test_render_scene_required_class_and_determinism() -> None:
    for cls in range(len(CLASS_NAMES)):
        _, label = render_scene(np.random.default_rng(cls), H, W, required=cls)
        assert (label == cls).any()
    a = render_scene(np.random.default_rng(7), H, W)
    b = render_scene(np.random.default_rng(7), H, W)
    c = render_scene(np.random.default_rng(8), H, W)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_labels_are_exactly_the_painted_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paint each class a flat colour of its own hue: the hue of every pixel must name its label."""
    hues = np.eye(3).tolist() + [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    hues = np.asarray(hues[: len(CLASS_NAMES)], dtype=np.float32)

    def flat(colour: np.ndarray):
        return lambda rng, h, w: np.broadcast_to(0.6 * colour, (h, w, 3)).astype(np.float32)

    monkeypatch.setattr(demo, "_PAINTERS", tuple(flat(c) for c in hues))
    rng = np.random.default_rng(3)
    for _ in range(5):
        rgb, label = render_scene(rng, H, W)
        unit = hues / np.linalg.norm(hues, axis=1, keepdims=True)
        decoded = np.argmax(rgb.astype(np.float32) @ unit.T, axis=-1)  # closest hue direction
        assert np.array_equal(decoded, label)


def test_write_demo_rows_and_files(tmp_path: Path) -> None:
    index = write_demo(tmp_path, {"train": 4, "val": 2}, height=H, width=W, seed=0)
    assert set(index) == {"train", "val"}
    assert [len(index["train"]), len(index["val"])] == [4, 2]
    ids = [r["id"] for rows in index.values() for r in rows]
    assert len(set(ids)) == len(ids)
    for split, rows in index.items():
        for row in rows:
            assert set(row) == {"id", "image", "label"}
            assert isinstance(row["image"], str) and isinstance(row["label"], str)
            image, label = Path(row["image"]), Path(row["label"])
            assert image == tmp_path / split / "images" / f"{row['id']}.png"
            assert label == tmp_path / split / "labels" / f"{row['id']}.png"
            with Image.open(image) as im:
                assert im.mode == "RGB" and im.size == (W, H)
            with Image.open(label) as lb:
                assert lb.mode == "L" and lb.size == (W, H)
                assert np.asarray(lb).max() < len(CLASS_NAMES)


def test_write_demo_deterministic(tmp_path: Path) -> None:
    counts = {"train": 3, "val": 2}
    a = write_demo(tmp_path / "a", counts, height=H, width=W, seed=5)
    b = write_demo(tmp_path / "b", counts, height=H, width=W, seed=5)
    c = write_demo(tmp_path / "c", counts, height=H, width=W, seed=6)
    for split in counts:
        assert _files(a[split]) == _files(b[split])
        assert all(x != y for x, y in zip(_files(a[split])[::2], _files(c[split])[::2], strict=True))
    # train and val never share an image
    assert not set(_files(a["train"])[::2]) & set(_files(a["val"])[::2])


def test_write_demo_stable_when_counts_grow(tmp_path: Path) -> None:
    small = write_demo(tmp_path / "small", {"train": 2, "val": 1}, height=H, width=W, seed=1)
    large = write_demo(tmp_path / "large", {"val": 3, "train": 5}, height=H, width=W, seed=1)
    for split, rows in small.items():
        assert [r["id"] for r in rows] == [r["id"] for r in large[split][: len(rows)]]
        assert _files(rows) == _files(large[split][: len(rows)])


def test_every_class_in_small_splits(tmp_path: Path) -> None:
    index = write_demo(tmp_path, {"train": 20, "val": 6}, height=64, width=80, seed=0)
    for rows in index.values():
        seen: set[int] = set()
        for row in rows:
            with Image.open(row["label"]) as lb:
                seen |= set(np.unique(np.asarray(lb)).tolist())
        assert seen == set(range(len(CLASS_NAMES)))


def test_rendered_scenes_are_reused_only_with_the_same_settings(tmp_path: Path) -> None:
    counts = {"train": 2, "val": 1}
    assert demo.rendered_rows(tmp_path, counts, height=H, width=W, seed=0) is None
    rows = write_demo(tmp_path, counts, height=H, width=W, seed=0)
    assert demo.rendered_rows(tmp_path, counts, height=H, width=W, seed=0) == rows
    assert demo.rendered_rows(tmp_path, counts, height=H, width=W, seed=1) is None
    assert demo.rendered_rows(tmp_path, {"train": 3, "val": 1}, height=H, width=W, seed=0) is None
    Path(rows["val"][0]["label"]).unlink()
    assert demo.rendered_rows(tmp_path, counts, height=H, width=W, seed=0) is None
