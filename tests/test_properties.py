"""Property-based tests (hypothesis): the dataset readers and transforms, the config schema and the metrics
hold their invariants on generated inputs, not only on the hand-picked examples of the other tests.

Derandomized (a fixed sequence of examples, no example database), so a run is reproducible."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from stego_steps import config as C
from stego_steps import datasets, images, metrics, store

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CONFIG = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
SCHEMA = C.load_schema()


# ---------------------------------------------------------------------------------------------------------
# Dataset readers and the transform


@st.composite
def sizes_and_boxes(draw):
    h, w = draw(st.integers(8, 90)), draw(st.integers(8, 90))
    x0, y0 = draw(st.integers(0, w - 4)), draw(st.integers(0, h - 4))
    x1, y1 = draw(st.integers(x0 + 4, w)), draw(st.integers(y0 + 4, h))
    box = draw(st.sampled_from([None, (x0, y0, x1, y1)]))
    return h, w, box, draw(st.integers(4, 64))


@PROPERTY
@given(sizes_and_boxes())
def test_image_and_label_take_the_same_pixels_for_any_size_and_box(case):
    h, w, box, res = case
    yy, xx = np.mgrid[0:h, 0:w]
    coded = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)  # h, w <= 90: exact in one byte
    out = images.transform_image(Image.fromarray(coded), res, box)
    lab = images.transform_label((yy * w + xx).astype(np.int64), res, box)
    assert out.shape == (res, res, 3) and lab.shape == (res, res)
    np.testing.assert_array_equal(out[..., 0].astype(np.int64) * w + out[..., 1], lab)
    if box is not None:  # every pixel comes from inside the box
        assert (out[..., 1] >= box[0]).all() and (out[..., 1] < box[2]).all()
        assert (out[..., 0] >= box[1]).all() and (out[..., 0] < box[3]).all()


@PROPERTY
@given(st.integers(1, 400), st.integers(1, 400), st.floats(0.05, 1.0))
def test_five_crop_boxes_lie_inside_the_image_and_share_one_size(h, w, ratio):
    ch, cw = int(h * ratio), int(w * ratio)
    assume(ch >= 1 and cw >= 1)
    boxes = datasets.five_crop_boxes(h, w, ratio)
    assert len(boxes) == 5
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h and (x1 - x0, y1 - y0) == (cw, ch)
    assert boxes[0][:2] == (0, 0) and boxes[3][2:] == (w, h)


@PROPERTY
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([np.uint8, np.uint16]), st.data())
def test_label_maps_round_trip_through_png(tmp_path_factory, h, w, dtype, data):
    top = np.iinfo(dtype).max
    values = data.draw(st.lists(st.integers(0, top), min_size=h * w, max_size=h * w))
    array = np.asarray(values, dtype).reshape(h, w)
    path = tmp_path_factory.mktemp("labels") / "l.png"
    Image.fromarray(array).save(path)
    np.testing.assert_array_equal(images.read_label(path), array.astype(np.int64))


@PROPERTY
@given(st.lists(st.integers(0, 65535), min_size=1, max_size=64))
def test_16_bit_grey_scales_to_8_bits_by_rounding(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("g16") / "g.png"
    Image.fromarray(np.asarray([values], np.uint16)).save(path)
    out = np.asarray(images.read_image(path))
    expected = [int(v * 255 / 65535 + 0.5) for v in values]  # v·255/65535 is never exactly .5 away
    assert out[0, :, 0].tolist() == expected and (out[..., 0] == out[..., 1]).all()


@PROPERTY
@given(st.integers(1, 8), st.integers(8, 30), st.integers(8, 30))
def test_exif_orientation_gives_the_same_size_from_the_header_and_the_pixels(tmp_path_factory, orientation, h, w):
    path = tmp_path_factory.mktemp("exif") / "e.png"
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path, exif=exif)
    shown = images.read_image(path)
    assert images.displayed_size(path) == (shown.height, shown.width) == datasets.image_size(path)
    assert (shown.height, shown.width) == ((w, h) if orientation >= 5 else (h, w))


# ---------------------------------------------------------------------------------------------------------
# The config schema


def _bounded_integers(schema: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    """(path inside a preset, minimum) of every integer key with a minimum."""
    defs = SCHEMA["$defs"]
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    out = []
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "integer" and "minimum" in sub:
            out.append(((*prefix, key), sub["minimum"]))
        elif "properties" in sub or "$ref" in sub:
            out += _bounded_integers(sub, (*prefix, key))
    return out


BOUNDED = _bounded_integers(SCHEMA["$defs"]["preset"])


def _set(cfg: dict, path: tuple[str, ...], value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return cfg


def test_the_generated_cases_cover_the_preset():
    assert len(BOUNDED) >= 15 and (("train", "steps"), 1) in BOUNDED and (("knn_k",), 1) in BOUNDED


@PROPERTY
@given(st.sampled_from(BOUNDED), st.data())
def test_integers_below_their_minimum_are_rejected_with_the_key_named(case, data):
    path, minimum = case
    value = data.draw(st.integers(minimum - 1000, minimum - 1))
    where = ("datasets", "demo", "overrides", *path)
    with pytest.raises(C.ConfigError) as err:
        C.validate(_set(CONFIG, where, value))
    assert f"{'.'.join(where)}: {value} is less than the minimum of {minimum}" in str(err.value)


@PROPERTY
@given(st.sampled_from(BOUNDED), st.text(min_size=1, max_size=8))
def test_words_where_integers_belong_are_rejected_with_the_key_named(case, word):
    path, _ = case
    try:
        float(word)
        assume(False)  # a number, or inf/nan: not the case under test
    except ValueError:
        pass
    assume(word.strip().lower() not in ("null", "none", "~", "true", "false"))
    where = ("presets", "demo", *path)
    cfg = C.coerce(_set(CONFIG, where, word), SCHEMA)  # as `--config` hands it over: a string
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg)
    assert f"{'.'.join(where)}: {word!r} is not of type 'integer'" in str(err.value)


@PROPERTY
@given(st.sampled_from(BOUNDED), st.data())
def test_integers_within_their_bounds_pass_also_as_strings(case, data):
    path, minimum = case
    value = data.draw(st.integers(minimum, minimum + 1000))
    maximum = SCHEMA["$defs"]["preset"]
    for key in path:
        maximum = maximum.get("properties", {}).get(key, {})
    assume("maximum" not in maximum or value <= maximum["maximum"])
    where = ("datasets", "demo", "overrides", *path)
    C.validate(_set(CONFIG, where, value))
    C.validate(C.coerce(_set(CONFIG, where, str(value)), SCHEMA))


@PROPERTY
@given(st.sampled_from([(), ("head",), ("loss",), ("train",), ("cluster",), ("probe",)]),
       st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True))
def test_unknown_keys_are_rejected_with_their_parent_named(parent, key):
    known = SCHEMA["$defs"]["preset"]
    for part in parent:
        known = known["properties"][part]
    assume(key not in known.get("properties", {}))
    where = ("presets", "demo", *parent)
    with pytest.raises(C.ConfigError) as err:
        C.validate(_set(CONFIG, (*where, key), 1))
    assert f"{'.'.join(where)}: Additional properties are not allowed ('{key}' was unexpected)" in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# The metrics


@st.composite
def confusions(draw, max_side=5):
    n_clusters, n_classes = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    cells = draw(st.lists(st.integers(0, 50), min_size=n_clusters * n_classes, max_size=n_clusters * n_classes))
    conf = np.asarray(cells, np.int64).reshape(n_clusters, n_classes)
    assume(conf.sum() > 0)
    return conf


def _best_matched(conf: np.ndarray) -> tuple[int, int]:
    """Brute force: the largest matched pixel count over one-to-one cluster→class maps, and how many maps
    reach it."""
    n_clusters, n_classes = conf.shape
    totals = []
    for classes in itertools.permutations(range(max(n_clusters, n_classes)), n_clusters):
        totals.append(sum(conf[r, k] for r, k in enumerate(classes) if k < n_classes))
    best = max(totals)
    # Maps that differ only in the dummy classes given to unmatched clusters count once.
    distinct = {tuple(k if k < n_classes else -1 for k in classes)
                for classes, t in zip(itertools.permutations(range(max(n_clusters, n_classes)), n_clusters),
                                      totals, strict=True) if t == best}
    return best, len(distinct)


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 200), st.data())
def test_confusion_counts_every_labelled_pixel_once(n_clusters, n_classes, n, data):
    pred = np.asarray(data.draw(st.lists(st.integers(0, n_clusters - 1), min_size=n, max_size=n)))
    target = np.asarray(data.draw(st.lists(st.integers(-1, n_classes + 1), min_size=n, max_size=n)))
    conf = metrics.confusion(pred, target, n_clusters, n_classes)
    assert conf.shape == (n_clusters, n_classes) and conf.dtype == np.int64
    counted = (target >= 0) & (target < n_classes)
    assert conf.sum() == counted.sum()
    for r in range(n_clusters):
        for k in range(n_classes):
            assert conf[r, k] == int(((pred == r) & (target == k)).sum())


@PROPERTY
@given(confusions())
def test_scores_stay_in_range_and_hungarian_finds_the_best_matching(conf):
    result = metrics.scores(conf)
    assert 0.0 <= result["pixel_accuracy"] <= 100.0 and 0.0 <= result["miou"] <= 100.0
    iou = result["iou"]
    assert ((iou[~np.isnan(iou)] >= 0) & (iou[~np.isnan(iou)] <= 1)).all()
    best, _ = _best_matched(conf)
    assert result["pixel_accuracy"] == 100.0 * float(best) / int(conf.sum())
    assigned = result["assignment"][result["assignment"] >= 0]
    assert len(set(assigned.tolist())) == len(assigned)  # one-to-one
    if conf.shape[0] == conf.shape[1]:
        identity = metrics.scores(conf, hungarian=False)
        assert identity["pixel_accuracy"] <= result["pixel_accuracy"]


@PROPERTY
@given(confusions(), st.randoms(use_true_random=False))
def test_permuting_cluster_ids_does_not_change_the_hungarian_scores(conf, rnd):
    order = list(range(conf.shape[0]))
    rnd.shuffle(order)
    before, after = metrics.scores(conf), metrics.scores(conf[order])
    assert after["pixel_accuracy"] == before["pixel_accuracy"]
    if _best_matched(conf)[1] == 1:  # a unique best matching: the same pairs, so the same IoUs
        np.testing.assert_array_equal(after["iou"], before["iou"])
        assert after["miou"] == before["miou"]


@PROPERTY
@given(st.integers(1, 6), st.integers(1, 300), st.data())
def test_a_relabelled_perfect_prediction_scores_100(n_classes, n, data):
    target = np.asarray(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    perm = np.asarray(data.draw(st.permutations(range(n_classes))))
    result = metrics.scores(metrics.confusion(perm[target], target, n_classes, n_classes))
    assert result["pixel_accuracy"] == 100.0 and result["miou"] == 100.0


# ---------------------------------------------------------------------------------------------------------
# The feature store's gather


@PROPERTY
@given(n=st.integers(0, 40), n_shards=st.integers(1, 6), batch=st.integers(1, 9), order_seed=st.integers(0, 99))
def test_gathered_shards_read_as_the_whole_store(tmp_path_factory, n, n_shards, batch, order_seed):
    """Shards cut where extraction cuts them (on batch multiples, some possibly empty), written as extraction
    writes them, gathered in any order: the virtual store reads exactly as the whole arrays."""
    assume(n > 0)  # an empty split stops at prepare
    folder = tmp_path_factory.mktemp("gather")
    rng = np.random.default_rng(order_seed)
    feats = rng.standard_normal((n, 3, 2, 2)).astype(np.float16)
    pooled = feats.astype(np.float32).mean(axis=(2, 3))
    ids = np.array([f"img{i}".encode() for i in range(n)], dtype="S")
    paths = []
    for shard in range(n_shards):
        rows = store.shard_range(n, shard, n_shards, align=batch)
        assert rows.start % batch == 0 or rows.start == n
        path = folder / "train" / f"{shard + 1}-of-{n_shards}.h5"
        path.parent.mkdir(exist_ok=True)
        with h5py.File(path, "w") as f:
            store.create(f, {"feats": store.Array((len(rows), 3, 2, 2), np.float16, chunks=(1, 3, 2, 2)),
                             "pooled": store.Array((len(rows), 3), np.float32)})
            f["feats"][...] = feats[rows.start:rows.stop]
            f["pooled"][...] = pooled[rows.start:rows.stop]
            f.create_dataset("ids", data=ids[rows.start:rows.stop], dtype="S8")
            f.attrs.update(start=rows.start, stop=rows.stop, backbone="synthetic")
        paths.append(path)
    rng.shuffle(paths)
    store.gather(paths, folder / "train.h5")
    with h5py.File(folder / "train.h5") as f:
        np.testing.assert_array_equal(f["feats"][...], feats)
        np.testing.assert_array_equal(f["pooled"][...], pooled)
        np.testing.assert_array_equal(f["ids"][...], ids)
        assert f.attrs["shards"] == n_shards and f.attrs["backbone"] == "synthetic"
