"""The procedural demo dataset: shapes, exact labels, determinism, stability under growth, class coverage; the
`hard` style's class structure (shared colours, shared textures), clutter and region sizes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from PIL import Image
from scipy import ndimage

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

    easy = dataclasses.replace(demo.STYLES["easy"], painters=tuple(flat(c) for c in hues))
    monkeypatch.setitem(demo.STYLES, "easy", easy)
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


def test_write_demo_workers_write_the_same_files(tmp_path: Path) -> None:
    counts = {"train": 3, "val": 2}
    one = write_demo(tmp_path / "one", counts, height=H, width=W, seed=2)
    two = write_demo(tmp_path / "two", counts, height=H, width=W, seed=2, workers=2)
    for split in counts:
        assert _files(one[split]) == _files(two[split])
    assert (tmp_path / "two" / demo.MANIFEST).read_text() == (tmp_path / "one" / demo.MANIFEST).read_text()


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


# --------------------------------------------------------------------------------------------- styles
def test_easy_scenes_are_pinned() -> None:
    """The easy style renders exactly the pixels it rendered before there were styles (the built-in demo's
    cached results stay valid)."""
    digest = hashlib.sha256()
    for i in range(12):
        rgb, label = render_scene(np.random.default_rng(i), H, W, required=i % 6 if i % 2 else None)
        digest.update(rgb.tobytes())
        digest.update(label.tobytes())
    assert digest.hexdigest() == "9b9dfbfc7ed402911086c6391c9f1305d08af9405480ff763d2cccc2b111d8da"
    assert demo.class_names() == demo.class_names("easy") == CLASS_NAMES


def test_easy_manifest_has_no_style(tmp_path: Path) -> None:
    write_demo(tmp_path, {"train": 1, "val": 1}, height=32, width=32, seed=0)
    assert "style" not in (tmp_path / demo.MANIFEST).read_text()
    assert demo.rendered_rows(tmp_path, {"train": 1, "val": 1}, height=32, width=32, seed=0) is not None
    assert demo.rendered_rows(tmp_path, {"train": 1, "val": 1}, height=32, width=32, seed=0, style="hard") is None


def test_unknown_style() -> None:
    with pytest.raises(ValueError, match="unknown demo style"):
        render_scene(np.random.default_rng(0), H, W, style="medium")


def test_hard_class_chain() -> None:
    """Every hard class shares its colour with exactly one other class and its texture with exactly one other,
    never both with the same one."""
    classes = demo.HARD_CLASSES
    names = demo.class_names("hard")
    assert 12 <= len(names) <= 16 and len(set(names)) == len(names)
    assert [n for n, _, _ in classes] == list(names) and len(demo.STYLES["hard"].painters) == len(names)
    assert len({(t, c) for _, t, c in classes}) == len(classes)
    for i, (_, texture, colour) in enumerate(classes):
        same_colour = [j for j, (_, _, c) in enumerate(classes) if c == colour and j != i]
        same_texture = [j for j, (_, t, _) in enumerate(classes) if t == texture and j != i]
        assert len(same_colour) == 1 and len(same_texture) == 1 and same_colour != same_texture


def _hue_stats(cls: int, n: int = 8, size: int = 40) -> tuple[float, float]:
    """Circular mean hue (weighted by saturation) of a class's painter over n patches, and the largest
    distance of a patch's hue from it."""
    hues = []
    for k in range(n):
        hsv = rgb_to_hsv(np.clip(demo.STYLES["hard"].painters[cls](np.random.default_rng(100 * cls + k), size, size),
                                 0, 1))
        hues.append(np.angle(np.sum(hsv[..., 1] * np.exp(2j * np.pi * hsv[..., 0]))))
    mean = float(np.angle(np.mean(np.exp(1j * np.asarray(hues)))))
    spread = float(np.max(np.abs(np.angle(np.exp(1j * (np.asarray(hues) - mean))))))
    return mean / (2 * np.pi) % 1.0, spread / (2 * np.pi)


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_hard_shared_colours_share_hue_and_shared_textures_differ() -> None:
    classes = demo.HARD_CLASSES
    stats = [_hue_stats(c) for c in range(len(classes))]
    for i, (_, texture, colour) in enumerate(classes):
        assert stats[i][1] < 0.05  # a class's hue is stable from region to region
        for j in range(i + 1, len(classes)):
            distance = _hue_distance(stats[i][0], stats[j][0])
            if classes[j][2] == colour:
                assert distance < 0.03, (classes[i], classes[j], distance)
            else:
                assert distance > 0.08, (classes[i], classes[j], distance)
            if classes[j][1] == texture:
                assert distance > 0.3, (classes[i], classes[j], distance)  # the colour wheel's far side


def test_hard_scenes_exact_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat colours of distinct directions (no colour cast, no noise): every pixel's colour names its label,
    also in the blobs and strands painted over the layout."""
    n = len(demo.class_names("hard"))
    directions = np.asarray([d for d in np.ndindex(3, 3, 3) if max(d) > 0 and np.gcd.reduce(d) == 1],
                            dtype=np.float32)[:n]
    assert len(directions) == n
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def flat(colour: np.ndarray):
        return lambda rng, h, w: np.broadcast_to(0.45 * colour / colour.max(), (h, w, 3)).astype(np.float32)

    hard = dataclasses.replace(demo.STYLES["hard"], painters=tuple(flat(d) for d in directions), tint=0.0,
                               noise=0.0)
    monkeypatch.setitem(demo.STYLES, "hard", hard)
    rng = np.random.default_rng(4)
    for _ in range(6):
        rgb, label = render_scene(rng, H, W, style="hard")
        decoded = np.argmax(rgb.astype(np.float32) @ unit.T, axis=-1)
        assert np.array_equal(decoded, label)


def test_hard_scenes_shapes_determinism_and_clutter() -> None:
    n = len(demo.class_names("hard"))
    a = render_scene(np.random.default_rng(9), H, W, style="hard")
    b = render_scene(np.random.default_rng(9), H, W, style="hard")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    largest_hard, largest_easy, pieces = [], [], 0
    for seed in range(10):
        rgb, label = render_scene(np.random.default_rng(seed), H * 2, W * 2, style="hard")
        assert rgb.shape == (2 * H, 2 * W, 3) and label.shape == (2 * H, 2 * W) and label.max() < n
        present = np.unique(label)
        assert len(present) >= 3
        largest_hard.append(np.bincount(label.ravel()).max() / label.size)
        _, easy = render_scene(np.random.default_rng(seed), H * 2, W * 2)
        largest_easy.append(np.bincount(easy.ravel()).max() / easy.size)
        # small pieces: clutter blobs and strands (and small parts of regions)
        for c in present:
            parts, count = ndimage.label(label == c)
            sizes = np.bincount(parts.ravel())[1:]
            pieces += int(np.sum(sizes < 0.01 * label.size))
    assert np.mean(largest_hard) < np.mean(largest_easy) - 0.1  # smaller regions than the easy scenes
    assert pieces >= 20  # clutter: on average at least two small pieces per scene


def test_hard_layout_region_sizes() -> None:
    style = demo.STYLES["hard"]
    rng = np.random.default_rng(0)
    for n_regions in style.regions:
        regions = demo._layout(rng, 120, 160, n_regions, scale=style.layout_scale,
                               min_fraction=style.min_region_fraction)
        shares = np.bincount(regions.ravel(), minlength=n_regions) / regions.size
        assert shares.min() >= style.min_region_fraction


def test_hard_every_class_in_small_splits_and_deterministic(tmp_path: Path) -> None:
    n = len(demo.class_names("hard"))
    counts = {"train": n, "val": n}
    index = write_demo(tmp_path / "a", counts, height=48, width=64, seed=0, style="hard")
    again = write_demo(tmp_path / "b", counts, height=48, width=64, seed=0, style="hard")
    for split, rows in index.items():
        seen: set[int] = set()
        for row in rows:
            with Image.open(row["label"]) as lb:
                seen |= set(np.unique(np.asarray(lb)).tolist())
        assert seen == set(range(n))
        assert _files(rows) == _files(again[split])
    assert demo.rendered_rows(tmp_path / "a", counts, height=48, width=64, seed=0, style="hard") == index
    assert demo.rendered_rows(tmp_path / "a", counts, height=48, width=64, seed=0) is None


def test_adapter_uses_the_generator_style(tmp_path: Path) -> None:
    from stego_steps import datasets

    generator = {"n_train": 2, "n_val": 1, "height": 32, "width": 48, "seed": 0}
    easy_rows, easy = datasets.build_index("demo", {"root": str(tmp_path / "easy"), "generator": generator})
    hard_rows, hard = datasets.build_index("demo", {"root": str(tmp_path / "hard"),
                                                    "generator": {**generator, "style": "hard"}})
    assert easy["names"] == list(CLASS_NAMES) and hard["names"] == list(demo.class_names("hard"))
    assert hard["lut"][: len(hard["names"])] == list(range(len(hard["names"])))
    assert set(hard["lut"][len(hard["names"]):]) == {-1}
    assert [len(hard_rows[s]) for s in ("train", "val")] == [2, 1]
    with Image.open(easy_rows["train"][0]["image"]) as a, Image.open(hard_rows["train"][0]["image"]) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))
