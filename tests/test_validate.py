"""Bad input files: each case of the table in docs/reliability.md ("What happens to bad input") gets its message
or its documented conversion, checked on small synthetic files; every bad file is listed in one error."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from stego_steps import datasets, errors, feature_extraction, images, validate
from stego_steps.index import read_index
from stego_steps.stages import prepare

CLASSES = ["sky", "grass", "road"]


def rgb(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def label(h=24, w=32, value=None):
    out = np.zeros((h, w), np.uint8)
    out[:, w // 3:] = 1
    out[:, 2 * w // 3:] = 2 if value is None else value
    return out


def make_directory(root: Path, n_train=3, n_val=2, labels=True) -> Path:
    """A valid `directory` dataset: 24×32 RGB PNGs with three-class label PNGs."""
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
        if labels:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rgb(seed=k)).save(root / "imgs" / split / f"{split}{k}.png")
            if labels:
                Image.fromarray(label()).save(root / "labels" / split / f"{split}{k}.png")
    return root


def settings(root, **extra):
    return {"root": str(root), "class_names": CLASSES, "five_crop": False, "crop_ratio": 0.5, **extra}


def problems_of(root, **extra) -> str:
    with pytest.raises(errors.UserError) as err:
        validate.checked_index("directory", settings(root, **extra))
    return str(err.value)


def test_a_valid_folder_passes_and_is_indexed(tmp_path):
    root = make_directory(tmp_path / "d")
    splits, classes = validate.checked_index("directory", settings(root))
    assert [len(splits[s]) for s in ("train", "val")] == [3, 2] and classes["names"] == CLASSES
    splits, _ = validate.checked_index("directory", settings(root, five_crop=True, crop_ratio=0.75))
    assert len(splits["train"]) == 15 and len(splits["val"]) == 2


# ---------------------------------------------------------------------------------------------------------
# Damaged files: every one is named in one error


def test_truncated_empty_and_non_image_files_are_all_listed_at_once(tmp_path):
    root = make_directory(tmp_path / "d", n_train=5)
    png = (root / "imgs" / "train" / "train0.png").read_bytes()
    (root / "imgs" / "train" / "train0.png").write_bytes(png[: len(png) // 2])  # truncated PNG
    Image.fromarray(rgb()).save(root / "imgs" / "train" / "train1.jpg", quality=90)
    (root / "imgs" / "train" / "train1.png").unlink()
    jpg = (root / "imgs" / "train" / "train1.jpg").read_bytes()
    (root / "imgs" / "train" / "train1.jpg").write_bytes(jpg[: len(jpg) // 2])  # truncated JPEG
    (root / "imgs" / "train" / "train2.png").write_bytes(b"")  # empty
    (root / "imgs" / "val" / "val0.png").write_text("not an image at all")  # text under an image name
    said = problems_of(root)
    assert said.startswith("4 problems with the files of the 'directory' dataset")
    assert "nothing was written" in said and "rerun" in said
    assert f"{root}/imgs/train/train0.png is damaged or truncated" in said
    assert f"{root}/imgs/train/train1.jpg is damaged or truncated" in said
    assert f"{root}/imgs/train/train2.png is an empty file (0 bytes)" in said
    assert f"{root}/imgs/val/val0.png is not an image PIL can read" in said
    assert said.count("replace it") == 4


def test_images_beyond_pils_size_limit_are_named(tmp_path, monkeypatch):
    Image.fromarray(rgb(40, 40)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1600 pixels > 2 x the limit
    with pytest.raises(errors.UserError, match=r"huge.png is too large to read safely .*use a smaller version"):
        images.read_image(tmp_path / "huge.png")


def test_a_long_list_is_cut_in_the_message_and_complete_in_the_log(tmp_path, caplog):
    root = make_directory(tmp_path / "d", labels=False)
    for k in range(validate.SHOWN + 5):
        (root / "imgs" / "train" / f"empty{k:03d}.png").write_bytes(b"")
    said = problems_of(root)
    assert said.startswith(f"{validate.SHOWN + 5} problems") and said.endswith(
        "... and 5 more (all of them in the job's log)")
    assert said.count("is an empty file") == validate.SHOWN
    assert sum("is an empty file" in r.getMessage() for r in caplog.records) == validate.SHOWN + 5


def test_prepare_writes_nothing_when_a_file_is_bad(tmp_path):
    root = make_directory(tmp_path / "d")
    (root / "imgs" / "val" / "val1.png").write_bytes(b"")
    with pytest.raises(errors.UserError, match="val1.png is an empty file"):
        validate.write_index("directory", settings(root), tmp_path / "index")
    assert not (tmp_path / "index").exists()


# ---------------------------------------------------------------------------------------------------------
# Image modes: documented conversions to RGB


def test_grey_rgba_palette_and_cmyk_convert_as_documented(tmp_path):
    base = rgb()
    grey = base[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(np.asarray(images.read_image(tmp_path / "grey.png")), np.stack([grey] * 3, -1))
    rgba = np.concatenate([base, np.zeros_like(base[..., :1])], -1)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(images.read_image(tmp_path / "rgba.png")), base)  # alpha dropped
    palette = Image.fromarray(base).quantize(colors=8)
    palette.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(np.asarray(images.read_image(tmp_path / "pal.png")),
                                  np.asarray(palette.convert("RGB")))
    Image.fromarray(grey > 127).save(tmp_path / "bits.png")  # mode 1
    assert Image.open(tmp_path / "bits.png").mode == "1"
    np.testing.assert_array_equal(np.asarray(images.read_image(tmp_path / "bits.png")),
                                  np.stack([np.where(grey > 127, 255, 0)] * 3, -1))
    Image.fromarray(np.stack([grey, grey // 2], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(images.read_image(tmp_path / "la.png")), np.stack([grey] * 3, -1))
    ycc = Image.fromarray(base).convert("YCbCr")
    np.testing.assert_array_equal(np.asarray(images.to_rgb(ycc)), np.asarray(ycc.convert("RGB")))
    cmyk = np.zeros((4, 4, 4), np.uint8)
    cmyk[..., 0] = 255  # pure cyan
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tif")
    assert (np.asarray(images.read_image(tmp_path / "cmyk.tif")) == [0, 255, 255]).all()


def test_16_bit_grey_is_scaled_to_8_bits_not_white(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = np.asarray(images.read_image(tmp_path / "g16.png"))
    assert out[..., 0].tolist() == [[0, 1, 128, 255]] and (out[..., 0] == out[..., 2]).all()


def test_unsupported_modes_name_the_file(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(errors.UserError, match=r"float.tif has the image mode F.*save it as 8-bit RGB"):
        images.read_image(tmp_path / "float.tif")


# ---------------------------------------------------------------------------------------------------------
# EXIF orientation


def save_rotated(path: Path, array: np.ndarray, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    Image.fromarray(array).save(path, exif=exif)


def test_exif_rotation_is_applied_to_the_image_and_its_size(tmp_path):
    stored = rgb(24, 32)
    save_rotated(tmp_path / "rot.png", stored)  # 6 = displayed rotated 90° clockwise
    np.testing.assert_array_equal(np.asarray(images.read_image(tmp_path / "rot.png")), np.rot90(stored, k=-1))
    assert images.displayed_size(tmp_path / "rot.png") == (32, 24)
    assert datasets.image_size(tmp_path / "rot.png") == (32, 24)  # five-crop boxes use the displayed size


def test_labels_are_rotated_like_images(tmp_path):
    save_rotated(tmp_path / "l.png", label(), orientation=8)  # 8 = displayed rotated 90° counter-clockwise
    np.testing.assert_array_equal(images.read_label(tmp_path / "l.png"), np.rot90(label(), k=1))


def test_label_size_is_checked_against_the_displayed_size(tmp_path):
    root = make_directory(tmp_path / "d")
    save_rotated(root / "imgs" / "train" / "train0.png", rgb(24, 32))
    said = problems_of(root)  # its label is 32 wide, 24 high: drawn on the stored, not the displayed image
    assert said.startswith("1 problem with")
    assert (f"{root}/labels/train/train0.png: the label map is 32x24 (width x height) but its image train0.png is "
            "24x32 as displayed (after its EXIF rotation, if any)") in said
    Image.fromarray(np.rot90(label(), k=-1).copy()).save(root / "labels" / "train" / "train0.png")
    validate.checked_index("directory", settings(root))  # drawn as displayed: accepted


# ---------------------------------------------------------------------------------------------------------
# Sizes


def test_tiny_images_extreme_aspect_ratios_and_too_small_five_crops(tmp_path):
    root = make_directory(tmp_path / "d", labels=False)
    Image.fromarray(rgb(6, 12)).save(root / "imgs" / "train" / "train0.png")
    Image.fromarray(rgb(16, 300)).save(root / "imgs" / "train" / "train1.png")
    Image.fromarray(rgb(14, 40)).save(root / "imgs" / "train" / "train2.png")
    Image.fromarray(rgb(14, 40)).save(root / "imgs" / "val" / "val0.png")
    said = problems_of(root, five_crop=True)
    assert said.startswith("3 problems")
    assert "train0.png: the image is only 12x6 pixels (width x height); images need at least 8 pixels" in said
    assert "train1.png: extreme aspect ratio 300x16 (width x height)" in said
    assert ("train2.png: the image (40x14) is smaller than its five-crops allow: crops of crop_ratio 0.5 would be "
            "20x7, under 8 pixels") in said
    # The val split is never five-cropped: the same 14x40 image is fine there, and without five_crop.
    assert "val" not in said.split("rerun", 1)[1]
    Image.fromarray(rgb(24, 32)).save(root / "imgs" / "train" / "train0.png")
    Image.fromarray(rgb(24, 32)).save(root / "imgs" / "train" / "train1.png")
    validate.checked_index("directory", settings(root))


# ---------------------------------------------------------------------------------------------------------
# File names


def test_spaces_and_non_ascii_names_work_through_extraction(tmp_path):
    root = make_directory(tmp_path / "d", n_train=2, n_val=1)
    name = "café au lait ünïcode 画像"
    for sub, array in (("imgs", rgb()), ("labels", label())):
        Image.fromarray(array).save(root / sub / "train" / f"{name}.png")
    validate.write_index("directory", settings(root), tmp_path / "index")
    index = read_index(tmp_path / "index" / "train.csv")
    assert name in set(index["id"])
    classes = json.loads((tmp_path / "index" / "classes.json").read_text())
    feature_extraction.extract(index, classes, tmp_path / "train.h5", backbone="dino_vits16_random", weights=None,
                               res=16, evaluation=False, batch_size=3, device="cpu", seed=0)
    with h5py.File(tmp_path / "train.h5") as f:
        assert [i.decode() for i in f["ids"][...]] == list(index["id"])


def test_same_stem_and_unpaired_files_are_all_listed(tmp_path):
    root = make_directory(tmp_path / "d")
    Image.fromarray(rgb()).save(root / "imgs" / "train" / "train0.jpg")  # train0.png exists
    Image.fromarray(rgb()).save(root / "imgs" / "val" / "val0.bmp")  # val0.png exists
    (root / "labels" / "train" / "train1.png").unlink()  # image without label
    Image.fromarray(label()).save(root / "labels" / "val" / "orphan.png")  # label without image
    said = problems_of(root)
    assert said.startswith("4 problems")
    assert f"{root}/imgs/train: 2 files share the name stem 'train0' (train0.jpg, train0.png)" in said
    assert f"{root}/imgs/val: 2 files share the name stem 'val0' (val0.bmp, val0.png)" in said
    assert f"{root}/imgs/train/train1.png: no label {root}/labels/train/train1.png; add the label PNG" in said
    assert f"{root}/labels/val/orphan.png: a label without an image in {root}/imgs/val" in said


# ---------------------------------------------------------------------------------------------------------
# Label maps


def test_label_values_outside_the_classes_are_named_with_their_pixels(tmp_path):
    root = make_directory(tmp_path / "d")
    bad = label(value=7)
    bad[0, 0] = 9
    Image.fromarray(bad).save(root / "labels" / "val" / "val1.png")
    said = problems_of(root)
    n7 = int((bad == 7).sum())
    assert (f"{root}/labels/val/val1.png: label values 7, 9 ({n7 + 1} pixels) are neither classes nor the "
            "unlabeled value (allowed: 0, 1, 2, 255)") in said
    validate.checked_index("directory", settings(root, class_names=CLASSES + [f"c{k}" for k in range(3, 10)]))


def test_label_size_mismatch_and_colour_labels_are_errors(tmp_path):
    root = make_directory(tmp_path / "d")
    Image.fromarray(label(20, 32)).save(root / "labels" / "train" / "train0.png")
    Image.fromarray(np.stack([label()] * 3, -1)).save(root / "labels" / "train" / "train1.png")
    said = problems_of(root)
    assert (f"{root}/labels/train/train0.png: the label map is 32x20 (width x height) but its image train0.png "
            "is 32x24") in said
    assert f"{root}/labels/train/train1.png is a colour label image (mode RGB)" in said
    assert "convert('L')" in said


def test_palette_and_16_bit_labels_keep_their_raw_values(tmp_path):
    values = label()
    pal = Image.fromarray(values, "L").convert("P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(images.read_label(tmp_path / "p.png"), values)  # indices, not colours
    Image.fromarray(values.astype(np.uint16) * 300).save(tmp_path / "l16.png")
    np.testing.assert_array_equal(images.read_label(tmp_path / "l16.png"), values.astype(np.int64) * 300)


def test_other_kinds_allow_their_unlabeled_values():
    coco = datasets.load_coco_classes()
    assert validate.allowed_label_values("cocostuff", {}, coco) == {*range(182), 255}
    city_lut = [v - 7 if 0 <= v - 7 < 27 else -1 for v in range(256)]
    assert validate.allowed_label_values("cityscapes", {}, {"lut": city_lut}) == {*range(34), 255}
    assert validate.allowed_label_values("potsdam", {}, {"lut": [0] * 256}) == {0, 1, 2, 3, 4, 5, 255}


# ---------------------------------------------------------------------------------------------------------
# Splits and the KNN


def test_an_empty_split_is_named(tmp_path):
    root = make_directory(tmp_path / "d", labels=False)
    for path in (root / "imgs" / "val").iterdir():
        path.unlink()
    said = problems_of(root)
    assert f"no images in {root}/imgs/val" in said and "expects the layout" in said


def test_too_few_training_images_for_the_knn_name_knn_k(tmp_path):
    root = make_directory(tmp_path / "d", n_train=5, labels=False)
    said = validate.knn_problem("mine", "directory", settings(root), 7)
    assert said == ("dataset 'mine': its train split has 5 samples but knn_k is 7; the nearest-neighbour table "
                    "needs at least knn_k + 1 = 8 training samples: add images, or lower knn_k in the preset or "
                    "in datasets.mine.overrides")
    assert validate.knn_problem("mine", "directory", settings(root, five_crop=True), 7) is None  # 25 crops
    demo = {"generator": {"n_train": 4}, "five_crop": False}
    assert "has 4 samples but knn_k is 4" in validate.knn_problem("demo", "demo", demo, 4)
    assert validate.knn_problem("demo", "demo", demo, 3) is None


# ---------------------------------------------------------------------------------------------------------
# The manifest that re-runs prepare


def test_manifest_changes_with_every_change_to_the_files(tmp_path):
    root = make_directory(tmp_path / "d")
    s = settings(root)
    first = validate.manifest("directory", s)
    assert first.startswith("10 files, ") and validate.manifest("directory", s) == first
    previous = first
    victim = root / "imgs" / "train" / "train0.png"
    for change in (lambda: Image.fromarray(rgb()).save(root / "imgs" / "val" / "new.png"),
                   lambda: (root / "imgs" / "val" / "new.png").unlink(),
                   lambda: victim.write_bytes(victim.read_bytes() + b"\0"),
                   lambda: __import__("os").utime(victim, ns=(1, 1)),
                   lambda: victim.rename(root / "imgs" / "train" / "renamed é.png")):
        change()
        now = validate.manifest("directory", s)
        assert now != previous
        previous = now
    assert validate.manifest("demo", {"root": str(root)}) == ""


# ---------------------------------------------------------------------------------------------------------
# Reaching the terminal


def test_the_cli_prints_one_error_block_and_exits_2(tmp_path, capsys):
    root = make_directory(tmp_path / "d")
    (root / "imgs" / "train" / "train0.png").write_bytes(b"")
    (root / "imgs" / "val" / "val0.png").write_bytes(b"")
    argv = ["--kind", "directory", "--settings", json.dumps(settings(root)), "--out-dir", str(tmp_path / "i")]
    with pytest.raises(SystemExit) as exit_:
        errors.cli(lambda: prepare.main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    block = errors.error_blocks(err)
    assert len(block) == 1 and block[0].startswith("ERROR: 2 problems with the files")
    assert "\n    " + str(root / "imgs" / "train" / "train0.png") + " is an empty file" in block[0]


def test_error_blocks_and_failed_job_logs(tmp_path):
    log = "noise\nERROR: first\n    detail\nmore noise\nERROR: second\n"
    assert errors.error_blocks(log) == ["ERROR: first\n    detail", "ERROR: second"]
    assert errors.error_blocks("Traceback ...\n  File x\nValueError: boom\n\n") == ["ValueError: boom"]
    job_log = tmp_path / "job.log"
    job_log.write_text(log)
    main_log = tmp_path / "snakemake.log"
    main_log.write_text(f"Error in rule prepare:\n    jobid: 1\n    log: {job_log} (check log file(s) for error "
                        "details)\n")
    assert errors.failed_job_logs([main_log]) == [job_log]
    import io

    out = io.StringIO()
    errors.report_failed_jobs(str(main_log), out)
    assert out.getvalue() == f"{job_log}:\nERROR: first\n    detail\nERROR: second\n"
