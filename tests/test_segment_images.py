"""segment_images with a run whose features were computed unlike the defaults (int8 store, bfloat16, a seeded
random ViT), the checks of the head and backbone, extreme aspect ratios and segment shards of another count."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import TINY, default_run, only_features, snakemake
from PIL import Image

from stego_steps import label_maps, segmenter
from stego_steps.backbones import backbone_id
from stego_steps.errors import UserError
from stego_steps.head import SegmentationHead, save_head
from stego_steps.stages import segment_images
from stego_steps.validate import MAX_ASPECT

RUN_SETTINGS = {"backbone": "dino_vits16_random", "seed": 3, "store_dtype": "int8", "precision": "bfloat16",
                "calibrate": False}
SHARD = "results/demo/runs/default/seed0/segment/cluster.{}.h5"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tiny demo up to the cluster probe's segmentation, with an int8 store, bfloat16 extraction and a
    random ViT of preset seed 3 (the run itself is seed 0)."""
    work = tmp_path_factory.mktemp("int8")
    extra = work / "settings.yaml"
    extra.write_text(json.dumps({"datasets": {"demo": {"overrides": RUN_SETTINGS}}}))
    run = "results/demo/runs/default/seed0"
    out = snakemake(work, "--configfile", TINY, extra, "--cores", "2", f"{run}/codes.h5", SHARD.format("1-of-1"),
                    configfile=None)
    assert out.returncode == 0, out.stderr[-4000:]
    return work


def _labels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _crops(work: Path, folder: Path) -> int:
    with h5py.File(only_features(work) / "val.h5", "r") as f:
        crops = f["image"][...]
    folder.mkdir()
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(folder / f"{i:03d}.png")
    return len(crops)


@pytest.mark.slow
def test_labels_equal_the_segment_stage_with_int8_bfloat16_and_a_seeded_random_backbone(work, tmp_path):
    with h5py.File(only_features(work) / "val.h5", "r") as f:
        producer = json.loads(f.attrs["producer"])
        assert f["feats"].dtype == np.int8
    assert (producer["backbone"], producer["seed"], producer["precision"]) == ("dino_vits16_random", 3, "bfloat16")
    n = _crops(work, tmp_path / "crops")
    out = tmp_path / "out"
    # No settings passed: the run's codes say how its features were computed.
    segment_images.main(["--run", str(default_run(work)), "--images", str(tmp_path / "crops"), "--out", str(out),
                         "--cluster-ids", "--crf", "--device", "cpu", "--threads", "2"])
    with h5py.File(work / SHARD.format("1-of-1"), "r") as f:
        raw, crf = f["raw"][...], f["crf"][...]
    for i in range(n):
        np.testing.assert_array_equal(_labels(out / f"{i:03d}.png"), raw[i])
        np.testing.assert_array_equal(_labels(out / f"{i:03d}_crf.png"), crf[i])


def _copy_run(work: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("head.pt", "centroids.npy", "codes.h5"):
        shutil.copy(default_run(work) / name, target / name)
    return target


@pytest.mark.slow
def test_a_head_of_another_backbone_is_a_named_error(work, tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (120, 96)).save(tmp_path / "img" / "a.png")
    args = ["--images", str(tmp_path / "img"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    # Trained on another network with as many channels (dino_vits8_random): refused by the network check.
    other = _copy_run(work, tmp_path / "other")
    save_head(other / "head.pt", SegmentationHead(384, 70),
              {"backbone": "dino_vits8_random", "backbone_id": backbone_id("dino_vits8_random", None, 0)})
    with pytest.raises(UserError, match="was trained on features of backbone dino_vits8_random"):
        segment_images.main(["--run", str(other), *args])
    # A head that records no network (older heads) but reads other channels (EfficientNet's 152).
    unnamed = _copy_run(work, tmp_path / "unnamed")
    save_head(unnamed / "head.pt", SegmentationHead(152, 70), {})
    with pytest.raises(UserError, match="reads 152 channels but backbone dino_vits16_random gives 384"):
        segment_images.main(["--run", str(unnamed), *args])
    # A weights file for a run whose features had none: another network.
    weights = tmp_path / "weights.pth"
    torch.save({}, weights)
    with pytest.raises(UserError, match="is not the network that computed the features of the run"):
        segment_images.main(["--run", str(default_run(work)), "--weights", str(weights), *args])


@pytest.mark.slow
def test_extreme_aspect_ratios_are_skipped_and_the_working_image_stays_bounded(work, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"strip": (3000, 3), "tall17": (10, 170), "wide16": (160, 10), "square": (96, 96)}
    for name, size in sizes.items():
        Image.new("RGB", size, (120, 60, 30)).save(folder / f"{name}.png")
    working = {}
    windows = segmenter.Segmenter.windows

    def spy(self, item):
        working[item.path.stem] = item.working.shape[:2]
        return windows(self, item)

    monkeypatch.setattr(segmenter.Segmenter, "windows", spy)
    out = tmp_path / "out"
    segment_images.main(["--run", str(default_run(work)), "--images", str(folder), "--out", str(out),
                         "--device", "cpu"])
    assert sorted(Path(p).name for p in (out / "skipped.txt").read_text().split()) == ["strip.png", "tall17.png"]
    assert set(working) == {"wide16", "square"}  # the skipped ones were never resized
    res, stride = 96, 16
    assert working["wide16"] == (res, 16 * res)
    assert max(h * w for h, w in working.values()) <= res * (MAX_ASPECT * res + stride)
    for name in ("wide16", "square"):
        with Image.open(out / f"{name}.png") as img:
            assert img.size == sizes[name]


def test_shards_of_other_counts_are_found(tmp_path):
    names = ["cluster.1-of-1.h5", "cluster.1-of-1.h5.partial", "cluster.1-of-2.h5", "cluster.2-of-2.h5",
             "linear.1-of-1.h5", "backbone_kmeans.3-of-3.h5", "notes.txt"]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in label_maps.other_counts(tmp_path / "cluster.2-of-2.h5")] == \
        ["cluster.1-of-1.h5", "cluster.1-of-1.h5.partial"]
    assert [p.name for p in label_maps.other_counts(tmp_path / "backbone_kmeans.1-of-3.h5")] == []
    assert label_maps.other_counts(tmp_path / "my_output.h5") == []  # not a workflow shard name: nothing


@pytest.mark.slow
def test_a_new_segment_shards_value_leaves_only_its_shards(work, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(work, copy, symlinks=True)
    with h5py.File(copy / SHARD.format("1-of-1"), "r") as f:
        whole = f["raw"][...], f["crf"][...]
    out = snakemake(copy, SHARD.format("1-of-2"), SHARD.format("2-of-2"), "--cores", "2", "--configfile", TINY,
                    copy / "settings.yaml", "--config", "segment_shards=2", configfile=None)
    assert out.returncode == 0, out.stderr[-4000:]
    folder = (copy / SHARD.format("x")).parent
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("cluster.")) == \
        ["cluster.1-of-2.h5", "cluster.2-of-2.h5"]
    parts = [h5py.File(copy / SHARD.format(f"{i}-of-2"), "r") for i in (1, 2)]
    for k, key in enumerate(("raw", "crf")):  # the shards hold the same maps as the single shard did
        np.testing.assert_array_equal(np.concatenate([p[key][...] for p in parts]), whole[k])
    for p in parts:
        p.close()
