"""On a finished tiny demo run: the figures, the Snakemake report and segmenting new images."""

import base64
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import default_run, only_features, snakemake
from PIL import Image

from stego_steps import segmenter
from stego_steps.stages import segment_images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny demo run to its end (rule all: tables and pictures)."""
    work = tmp_path_factory.mktemp("demo")
    out = snakemake(work, "--cores", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    return work


@pytest.mark.slow
def test_the_run_leaves_its_pictures_and_mapping(run_dir):
    run = default_run(run_dir)
    figures = run / "figures"
    expected = {"panels.png", "training.png", "correlations.png", "correlations.csv", "calibration.csv",
                "per_class_iou.png",
                *(f"confusion_{p}_{c}.png" for p in ("cluster", "linear") for c in ("raw", "crf")),
                "confusion_backbone_kmeans_raw.png", "confusion_backbone_kmeans_crf.png",
                "confusion_backbone_linear_raw.png",
                "confusion_backbone_linear_crf.png"}
    assert {p.name for p in figures.iterdir()} == expected
    names = pd.read_csv(run / "per_class_iou.csv")["class"].unique().tolist()
    mapping = pd.read_csv(run / "mapping" / "cluster_crf.csv", keep_default_na=False)
    confusion = pd.read_csv(run / "confusion" / "cluster_crf.csv", keep_default_na=False)
    assert confusion.columns.tolist() == ["cluster", "class", *names]
    assert mapping["class"].tolist() == confusion["class"].tolist()
    matched = mapping[mapping["class_id"] >= 0]
    conf = confusion[names].to_numpy()
    assert matched["matched_pixels"].tolist() == conf[matched["cluster"], matched["class_id"]].tolist()
    table = pd.read_csv(run_dir / "results" / "demo" / "miou.csv")
    row = table[(table["probe"] == "cluster") & table["crf"]].iloc[0]
    assert row["pixel_accuracy"] == pytest.approx(100 * matched["matched_pixels"].sum() / conf.sum())
    correlations = pd.read_csv(figures / "correlations.csv")
    assert correlations["term"].tolist() == ["self", "knn", "random"]
    # The demo keeps its preset's shifts: the calibration table says so, with no candidate (none was computed).
    calibration = pd.read_csv(figures / "calibration.csv")
    assert calibration["setting"].tolist() == ["preset"]
    assert calibration["used"].tolist() == [True]
    assert calibration["shift_self"].iloc[0] == correlations["shift"].iloc[0]


@pytest.mark.slow
def test_report_holds_every_picture(run_dir):
    out = snakemake(run_dir, "--report", "report.zip")
    assert out.returncode == 0, out.stderr[-4000:]
    with zipfile.ZipFile(run_dir / "report.zip") as z:
        listed = z.namelist()
    pictures = sorted((default_run(run_dir) / "figures").glob("*.png"))
    for picture in pictures:
        assert any(name.endswith(f"/{picture.name}") for name in listed), picture.name
    out = snakemake(run_dir, "--report", "report.html")
    assert out.returncode == 0, out.stderr[-4000:]
    html = (run_dir / "report.html").read_text()
    for picture in pictures:  # self-contained: the PNG bytes are embedded
        assert base64.b64encode(picture.read_bytes()).decode() in html, picture.name
    assert "workflow description" in html.lower() or "STEGO" in html


def _labels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.mark.slow
def test_segmenting_the_evaluation_crops_gives_the_evaluation_clusters(run_dir, tmp_path):
    results = default_run(run_dir)
    with h5py.File(only_features(run_dir) / "val.h5", "r") as f:
        crops = f["image"][...]
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(tmp_path / f"{i:03d}.png")
    out = tmp_path / "out"
    # Batch 16 as the extraction (all six crops in one batch): the backbone sees the same tensors.
    segment_images.main(["--run", str(results), "--images", str(tmp_path), "--out", str(out), "--cluster-ids",
                         "--crf", "--batch-size", "16", "--device", "cpu", "--threads", "2"])
    with h5py.File(results / "segment" / "cluster.1-of-1.h5", "r") as f:
        raw, crf = f["raw"][...], f["crf"][...]
    for i in range(len(crops)):
        np.testing.assert_array_equal(_labels(out / f"{i:03d}.png"), raw[i])
        np.testing.assert_array_equal(_labels(out / f"{i:03d}_crf.png"), crf[i])
        with Image.open(out / f"{i:03d}_overlay.png") as overlay:
            assert overlay.size == crops[i].shape[1::-1]
    # With the run's mapping (its default) the same pixels carry the matched classes.
    mapped_out = tmp_path / "mapped"
    segment_images.main(["--run", str(results), "--images", str(tmp_path), "--out", str(mapped_out),
                         "--batch-size", "16", "--device", "cpu"])
    mapping = pd.read_csv(results / "mapping" / "cluster_raw.csv")
    lut = np.where(mapping["class_id"] >= 0, mapping["class_id"], segmenter.NO_CLASS)
    for i in range(len(crops)):
        np.testing.assert_array_equal(_labels(mapped_out / f"{i:03d}.png"), lut[raw[i]])
    legend = pd.read_csv(mapped_out / "legend.csv")
    assert legend["name"].tolist()[:-1] == pd.read_csv(results / "per_class_iou.csv")["class"].unique().tolist()


@pytest.mark.slow
def test_images_of_odd_sizes_keep_their_size_and_bad_files_are_counted(run_dir, tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(0)
    sizes = {"tall": (40, 300), "wide": (300, 40), "tiny": (5, 3), "large": (1500, 1100), "square": (96, 96)}
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8)).convert("L").save(folder / "grey.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    sizes["grey"] = (50, 70)
    # A small block budget: the large image is upsampled in blocks of rows.
    monkeypatch.setattr(segmenter, "BLOCK_BYTES", 2**20)
    monkeypatch.setattr("stego_steps.cli.setup_logging", lambda verbose=False: None)  # keep caplog's handler
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        segment_images.main(["--run", str(default_run(run_dir)), "--images", str(folder), "--out",
                             str(out), "--crf", "--batch-size", "4", "--device", "cpu"])
    for name, size in sizes.items():
        for suffix in ("", "_overlay", "_crf", "_crf_overlay"):
            with Image.open(out / f"{name}{suffix}.png") as img:
                assert img.size == size, (name, suffix)
    assert sorted(Path(p).name for p in (out / "skipped.txt").read_text().split()) == ["broken.png", "notes.txt"]
    text = caplog.text
    assert "skipping" in text and "notes.txt" in text and "broken.png" in text
    assert "segmented 6 of 8 files" in text and "skipped 2" in text


def _planned(out) -> dict[str, int]:
    """Rule → job count of a dry run ({} when there is nothing to be done)."""
    assert out.returncode == 0, out.stderr[-4000:]
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.mark.slow
def test_the_rule_tracks_each_image_of_its_folder(run_dir):
    rng = np.random.default_rng(1)
    photos = run_dir / "photos"
    photos.mkdir()

    def photo(name: str) -> None:
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(photos / name)

    photo("a.png")
    photo("b.png")
    target, folder = "results/demo/segmented/photos", 'segment_images={"photos": "photos"}'
    out = snakemake(run_dir, "--cores", "2", target, "--config", folder)
    assert out.returncode == 0, out.stderr[-4000:]
    outputs = {f"{s}{k}.png" for s in "ab" for k in ("", "_overlay", "_crf", "_crf_overlay")}
    written = {p.name for p in (run_dir / target).iterdir() if not p.name.startswith(".")}
    assert written == {*outputs, "legend.csv", "skipped.txt"}
    assert _planned(snakemake(run_dir, "-n", target, "--config", folder)) == {}
    photo("c.png")  # an added image re-runs the folder's job and nothing else
    assert _planned(snakemake(run_dir, "-n", target, "--config", folder)) == {"segment_images": 1}
    out = snakemake(run_dir, "--cores", "2", target, "--config", folder)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (run_dir / target / "c_crf.png").exists()
    photo("a.png")  # an edited one
    assert _planned(snakemake(run_dir, "-n", target, "--config", folder)) == {"segment_images": 1}
    (photos / "b.png").unlink()  # a removed one
    assert _planned(snakemake(run_dir, "-n", target, "--config", folder)) == {"segment_images": 1}
    # A folder that is not there or holds nothing: an error naming the key before any job.
    (run_dir / "empty").mkdir()
    for name, path, message in (("gone", "nowhere", "segment_images.gone: nowhere is not a folder"),
                                ("empty", "empty", "segment_images.empty: the folder empty holds no files")):
        out = snakemake(run_dir, "-n", f"results/demo/segmented/{name}", "--config",
                        f'segment_images={{"{name}": "{path}"}}')
        assert out.returncode != 0 and message in out.stdout + out.stderr, out.stderr[-2000:]


def test_block_upsampling_is_the_bilinear_upsampling(monkeypatch):
    import torch

    code = torch.randn(1, 5, 7, 9, generator=torch.Generator().manual_seed(0))
    identity = torch.nn.Identity()
    whole = segmenter.labels_at(code, 61, 83, identity)
    monkeypatch.setattr(segmenter, "BLOCK_BYTES", 5 * 83 * 4 * 6)  # blocks of 6 rows
    blocks = segmenter.labels_at(code, 61, 83, identity)
    # The same interpolation by two kernels: values agree to float32 rounding (~1e-7), so only a near-tie
    # between two channels could flip an argmax; on 5063 random pixels there is none.
    np.testing.assert_array_equal(whole, blocks)


def test_window_layout():
    assert segmenter.window_starts(96, 96, 48) == [0]
    assert segmenter.window_starts(200, 96, 48) == [0, 48, 96, 104]
    assert segmenter.working_size(1500, 1100, 96, 8) == (128, 96)
    assert segmenter.working_size(40, 300, 96, 8) == (96, 720)
    assert segmenter.working_size(5, 3, 96, 8) == (160, 96)
