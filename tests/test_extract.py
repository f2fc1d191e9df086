"""The feature store: HDF5 round trip on a tiny demo index with a seeded random ViT, and resuming."""

import json

import h5py
import numpy as np
import pytest

from stego_steps import feature_extraction, images, store, validate
from stego_steps.index import read_index, row_box

SETTINGS = dict(backbone="dino_vits16_random", weights=None, batch_size=3, device="cpu", seed=0)


@pytest.fixture
def demo_index(tmp_path):
    settings = {"root": str(tmp_path / "data"), "five_crop": False, "crop_ratio": 0.5,
                "generator": {"n_train": 5, "n_val": 3, "height": 48, "width": 64, "seed": 0}}
    validate.write_index("demo", settings, tmp_path / "index")
    return tmp_path / "index"


def test_train_and_eval_stores_round_trip(demo_index, tmp_path):
    classes = json.loads((demo_index / "classes.json").read_text())
    train_index, val_index = read_index(demo_index / "train.csv"), read_index(demo_index / "val.csv")
    feature_extraction.extract(train_index, classes, tmp_path / "train.h5", res=32, evaluation=False, **SETTINGS)
    feature_extraction.extract(val_index, classes, tmp_path / "val.h5", res=48, evaluation=True, **SETTINGS)
    with h5py.File(tmp_path / "train.h5") as f:
        assert f["feats"].shape == (5, 384, 2, 2) and f["feats"].dtype == np.float16
        assert f["pooled"].shape == (5, 384) and f["pooled"].dtype == np.float32
        np.testing.assert_allclose(f["pooled"][...], f["feats"][...].astype(np.float32).mean((2, 3)), atol=2e-3)
        assert "image" not in f and "feats_flip" not in f
        assert f.attrs["res"] == 32 and f.attrs["n_classes"] == len(classes["names"])
        assert [i.decode() for i in f["ids"][...]] == list(train_index["id"])
        row = train_index.iloc[2]
        want = images.transform_label(images.apply_lut(images.read_label(row["label"]), classes["lut"]), 32,
                                      row_box(row))
        np.testing.assert_array_equal(f["label"][2], want)
    with h5py.File(tmp_path / "val.h5") as f:
        assert f["feats_flip"].shape == f["feats"].shape == (3, 384, 3, 3)
        assert f["image"].shape == (3, 48, 48, 3) and f["label"].shape == (3, 48, 48)
        row = val_index.iloc[1]
        np.testing.assert_array_equal(f["image"][1], images.transform_image(images.read_image(row["image"]), 48))
    assert not (tmp_path / "train.h5.partial").exists()


def test_killed_extraction_resumes_to_the_same_file(demo_index, tmp_path, monkeypatch):
    classes = json.loads((demo_index / "classes.json").read_text())
    index = read_index(demo_index / "train.csv")
    feature_extraction.extract(index, classes, tmp_path / "ref.h5", res=32, evaluation=False, **SETTINGS)
    real, calls = feature_extraction.features_of, []

    def dies_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(feature_extraction, "features_of", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        feature_extraction.extract(index, classes, tmp_path / "out.h5", res=32, evaluation=False, **SETTINGS)
    assert not (tmp_path / "out.h5").exists()
    with h5py.File(tmp_path / "out.h5.partial") as f:
        assert f.attrs["done"] == 3
    monkeypatch.setattr(feature_extraction, "features_of", real)
    feature_extraction.extract(index, classes, tmp_path / "out.h5", res=32, evaluation=False, **SETTINGS)
    with h5py.File(tmp_path / "ref.h5") as a, h5py.File(tmp_path / "out.h5") as b:
        for key in ("feats", "pooled", "label"):
            np.testing.assert_array_equal(a[key][...], b[key][...])


def test_resolution_must_be_a_multiple_of_the_stride(demo_index, tmp_path):
    classes = json.loads((demo_index / "classes.json").read_text())
    with pytest.raises(ValueError, match="multiple"):
        feature_extraction.extract(read_index(demo_index / "train.csv"), classes, tmp_path / "x.h5", res=40,
                                   evaluation=False, **SETTINGS)


@pytest.fixture
def seven_val_index(tmp_path):
    settings = {"root": str(tmp_path / "data7"), "five_crop": False, "crop_ratio": 0.5,
                "generator": {"n_train": 2, "n_val": 7, "height": 48, "width": 64, "seed": 1}}
    validate.write_index("demo", settings, tmp_path / "index7")
    return tmp_path / "index7"


@pytest.mark.parametrize("n_shards", [2, 4])
def test_shards_gather_into_the_same_store(seven_val_index, tmp_path, n_shards):
    """Shards start on multiples of the batch size, so the backbone sees the very batches of an unsharded run:
    equal by construction (7 samples in batches of 3; with 4 shards one shard is empty)."""
    classes = json.loads((seven_val_index / "classes.json").read_text())
    index = read_index(seven_val_index / "val.csv")
    feature_extraction.extract(index, classes, tmp_path / "whole.h5", res=32, evaluation=True, **SETTINGS)
    shards = [tmp_path / "shards" / f"{i}.h5" for i in range(n_shards)]
    for i, path in enumerate(shards):
        feature_extraction.extract(index, classes, path, res=32, evaluation=True, shard=i, n_shards=n_shards,
                                   **SETTINGS)
    store.gather(shards[::-1], tmp_path / "val.h5")
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "val.h5") as b:
        assert b["feats"].is_virtual and b.attrs["shards"] == n_shards
        for key in ("feats", "feats_flip", "pooled", "label", "image", "ids"):
            np.testing.assert_array_equal(a[key][...], b[key][...])
        assert b.attrs["n_classes"] == a.attrs["n_classes"]
    with pytest.raises(ValueError, match="do not tile"):
        store.gather(shards[1:], tmp_path / "bad.h5")


def test_shard_ranges_start_on_batch_multiples():
    for n, n_shards, align in [(7, 2, 3), (7, 4, 3), (100, 3, 16), (5, 8, 1), (0, 2, 4), (33, 5, 32)]:
        ranges = [store.shard_range(n, s, n_shards, align=align) for s in range(n_shards)]
        assert [i for r in ranges for i in r] == list(range(n))
        assert all(r.start % align == 0 or r.start == n for r in ranges)
    assert [len(store.shard_range(10, s, 4)) for s in range(4)] == [2, 3, 3, 2]
    with pytest.raises(ValueError, match="outside"):
        store.shard_range(10, 2, 2)


def test_a_gathered_store_with_a_missing_shard_is_an_error_not_zeros(seven_val_index, tmp_path):
    classes = json.loads((seven_val_index / "classes.json").read_text())
    index = read_index(seven_val_index / "val.csv")
    shards = [tmp_path / "val" / f"{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        feature_extraction.extract(index, classes, path, res=32, evaluation=True, shard=i, n_shards=2, **SETTINGS)
    store.gather(shards, tmp_path / "val.h5")
    with store.FeatureStore(tmp_path / "val.h5") as whole:
        assert whole.n == 7
    shards[1].rename(tmp_path / "moved.h5")
    with pytest.raises(ValueError, match=r"missing: .*1\.h5.*--forcerun gather_features"):
        store.FeatureStore(tmp_path / "val.h5")


def test_a_new_extract_shards_value_leaves_only_its_shards(seven_val_index, tmp_path):
    """Shards of an earlier count (and their partial stores) are removed when this count extracts, so nothing that
    lists the split's folder (the disk check, the memory estimate) finds two copies of the split."""
    classes = json.loads((seven_val_index / "classes.json").read_text())
    index = read_index(seven_val_index / "val.csv")
    folder = tmp_path / "val"
    feature_extraction.extract(index, classes, folder / "1-of-1.h5", res=32, evaluation=True, **SETTINGS)
    (folder / "2-of-3.h5.partial").write_bytes(b"killed")  # a partial store of yet another count
    (folder / "notes.txt").write_text("not a shard")
    shards = [folder / f"{i + 1}-of-2.h5" for i in range(2)]
    feature_extraction.extract(index, classes, shards[0], res=32, evaluation=True, shard=0, n_shards=2, **SETTINGS)
    assert sorted(p.name for p in folder.iterdir()) == ["1-of-2.h5", "notes.txt"]
    feature_extraction.extract(index, classes, shards[1], res=32, evaluation=True, shard=1, n_shards=2, **SETTINGS)
    assert sorted(p.name for p in folder.iterdir()) == ["1-of-2.h5", "2-of-2.h5", "notes.txt"]
    store.gather(shards, tmp_path / "val.h5")
    with store.FeatureStore(tmp_path / "val.h5") as whole:
        assert whole.n == 7
