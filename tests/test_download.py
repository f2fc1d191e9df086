"""Checksum-verified, atomic downloads and unpacking; only file:// URLs and a local HTTP server, never the
network."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import helpers
import pytest
import yaml

from stego_steps import download as dl
from stego_steps.errors import UserError, cli
from stego_steps.stages import download as stage

DATA = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "src" / "weights.pth"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_checksums_match(source, tmp_path):
    out = tmp_path / "resources" / "dino" / "w.pth"
    assert dl.download(source.as_uri(), out, sha256=sha256(DATA).upper()) == out
    assert out.read_bytes() == DATA and not dl.part_path(out).exists()
    assert not out.with_name("w.pth.sha256").exists()  # a published checksum needs no record
    out.unlink()
    dl.download(source.as_uri(), out, md5=hashlib.md5(DATA).hexdigest(), size=len(DATA))
    assert out.read_bytes() == DATA


@pytest.mark.parametrize("check", [{"sha256": "0" * 64}, {"md5": "0" * 32}, {"size": 7}])
def test_mismatch_leaves_nothing(source, tmp_path, check):
    out = tmp_path / "w.pth"
    with pytest.raises(UserError) as err:
        dl.download(source.as_uri(), out, **check)
    message = str(err.value)
    assert "does not match" in message and f"Nothing was written to {out}" in message and "Fix:" in message
    assert not out.exists() and not dl.part_path(out).exists()


def test_without_checksum_the_first_download_is_recorded_and_then_enforced(source, tmp_path):
    out = tmp_path / "w.pth"
    dl.download(source.as_uri(), out)
    assert (tmp_path / "w.pth.sha256").read_text() == f"{sha256(DATA)}  w.pth\n"
    out.unlink()
    source.write_bytes(b"changed upstream")
    with pytest.raises(UserError, match=f"sha256 {sha256(b'changed upstream')}, expected {sha256(DATA)}"):
        dl.download(source.as_uri(), out)
    assert not out.exists()


def test_a_partial_file_is_not_done_and_is_replaced(source, tmp_path):
    out = tmp_path / "w.pth"
    dl.part_path(out).write_bytes(b"garbage from a killed run")
    assert not out.exists()  # what Snakemake looks at
    dl.download(source.as_uri(), out, sha256=sha256(DATA))  # file:// cannot resume: starts over
    assert out.read_bytes() == DATA and not dl.part_path(out).exists()


def test_a_broken_transfer_keeps_only_the_part_file(source, tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        headers: dict = {}

        def read(self, n=-1):
            if self.tell() >= dl.CHUNK:
                raise ConnectionResetError("peer went away")
            return super().read(n)

    monkeypatch.setattr(dl, "_open", lambda url, offset, timeout: (Broken(DATA), False))
    out = tmp_path / "w.pth"
    with pytest.raises(UserError, match="broke off after 1048576 bytes.*Run again"):
        dl.download("https://example.invalid/w.pth", out, sha256=sha256(DATA))
    assert not out.exists() and dl.part_path(out).stat().st_size == dl.CHUNK


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves DATA, honouring `Range: bytes=N-`."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        start = int(self.headers["Range"][len("bytes="):-1]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(DATA) - start))
        self.end_headers()
        self.wfile.write(DATA[start:])

    def log_message(self, *args):
        pass


def test_resumes_over_http_and_checks_the_whole_file(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "w.pth"
        dl.part_path(out).write_bytes(DATA[:300_000])
        dl.download(f"http://127.0.0.1:{server.server_port}/w.pth", out, sha256=sha256(DATA))
        assert out.read_bytes() == DATA
    finally:
        server.shutdown()


def test_unreachable_says_what_to_do(tmp_path):
    out = tmp_path / "resources" / "w.pth"
    url = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(UserError) as err:
        dl.download(url, out, sha256="ab" * 32)
    message = str(err.value)
    assert url in message and f"copy it to {out}" in message and "ab" * 32 in message
    assert not out.exists()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_extract_zip_and_tar(tmp_path):
    # one top-level folder named like the target: unpacked without that level (COCO's val2017.zip)
    archive = _zip(tmp_path / "val2017.zip", {"val2017/1.jpg": b"a", "val2017/2.jpg": b"b"})
    dest = dl.extract(archive, tmp_path / "images" / "val2017")
    assert sorted(p.name for p in dest.iterdir()) == ["1.jpg", "2.jpg"]
    # several top-level entries: unpacked as they are (COCO-Stuff's stuffthingmaps)
    tar = tmp_path / "maps.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        for name in ("train2017/1.png", "val2017/2.png"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    dest = dl.extract(tar, tmp_path / "annotations")
    assert (dest / "train2017" / "1.png").read_bytes() == b"x" and (dest / "val2017" / "2.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder left


def test_extract_refuses_members_outside_the_folder(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"../escape.txt": b"x"})
    with pytest.raises(UserError, match="unsafe member"):
        dl.extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()


def test_cli_download_extract_and_instructions(tmp_path, capsys):
    archive = _zip(tmp_path / "src.zip", {"potsdam/imgs/1.mat": b"m"})
    out = tmp_path / "resources" / "archives" / "potsdam.zip"
    stage.main(["--url", archive.as_uri(), "--sha256", sha256(archive.read_bytes()), "--out", str(out),
             "--extract-to", str(tmp_path / "resources" / "potsdam")])
    assert (tmp_path / "resources" / "potsdam" / "imgs" / "1.mat").read_bytes() == b"m"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli(lambda: stage.main(["--out", str(tmp_path / "cityscapes" / "gtFine"), "--instructions", "Log in at X."]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: {tmp_path / 'cityscapes' / 'gtFine'} is missing") and "Log in at X." in err


def test_the_table(tmp_path):
    table = dl.load_table()
    assert all(entry.get("url") or entry.get("instructions") for entry in table.values())
    assert table["archives/coco/val2017.zip"]["md5"] == "442b8da7639aecaf257c1dceb8ba8c80"
    assert "cityscapes-dataset.com" in table["cityscapes/gtFine"]["instructions"]
    merged = dl.load_table({"archives/coco/val2017.zip": {"url": "file:///mirror/val2017.zip"}})
    assert merged["archives/coco/val2017.zip"]["md5"] == "442b8da7639aecaf257c1dceb8ba8c80"
    with pytest.raises(UserError, match="unknown: sha1"):
        dl.load_table({"x": {"url": "file:///x", "sha1": "0"}})


def test_the_download_rules_through_snakemake(source, tmp_path):
    archive = _zip(tmp_path / "src" / "t.zip", {"unpacked/a.txt": b"a"})
    workdir = tmp_path / "work"
    workdir.mkdir()
    override = workdir / "downloads.yaml"
    override.write_text(yaml.safe_dump({"downloads": {
        "test/w.pth": {"url": source.as_uri(), "sha256": sha256(DATA)},
        "archives/t.zip": {"url": archive.as_uri(), "extract": "unpacked"},
        "test/bad.pth": {"url": source.as_uri(), "sha256": "0" * 64},
    }}))
    run = helpers.snakemake(workdir, "--configfile", helpers.TINY, override, "--cores", "1",
                            "resources/test/w.pth", "resources/unpacked", configfile=None, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (workdir / "resources" / "test" / "w.pth").read_bytes() == DATA
    assert (workdir / "resources" / "unpacked" / "a.txt").read_bytes() == b"a"
    assert (workdir / "resources" / "archives" / "t.zip.sha256").is_file()  # no published checksum: recorded
    run = helpers.snakemake(workdir, "--configfile", helpers.TINY, override, "--cores", "1",
                            "resources/test/bad.pth", configfile=None, timeout=600)
    assert run.returncode != 0 and "ERROR: download of" in run.stderr and "does not match" in run.stderr
    assert not (workdir / "resources" / "test" / "bad.pth").exists()


def test_gated_dinov3_files_say_where_to_request_them_and_take_a_signed_link():
    """Meta's DINOv3 weights have no public url: the table says where to request each file and where to put it
    (the path the shipped config names), and a url in the config's `downloads:` makes the file downloadable."""
    from workflow_config import SHIPPED

    from stego_steps.backbone_specs import BACKBONES

    table = dl.load_table()
    files = [s.official_file for s in BACKBONES.values() if s.family == "dinov3" and s.official_file]
    assert len(files) == 5
    for name in files:
        entry = table[f"dinov3/{name}"]
        assert not entry.get("url") and "dinov3-downloads" in entry["instructions"]
        assert f"resources/dinov3/{name}" in entry["instructions"]
    for backbone in ("dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16_sat"):
        assert SHIPPED["backbones"][backbone]["weights"] == f"resources/dinov3/{BACKBONES[backbone].official_file}"
    key = f"dinov3/{files[0]}"
    signed = "https://dinov3.example/x.pth?Policy=p&Signature=s"
    assert dl.cli_args(dl.load_table({key: {"url": signed}})[key]) == f"--url '{signed}'"
