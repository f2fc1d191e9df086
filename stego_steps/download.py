"""Checksum-verified downloads into `resources/`, and unpacking of the downloaded archives.

`python -m stego_steps.stages.download --url U [--sha256 S | --md5 M] [--size N] --out P [--extract-to DIR]`

The bytes go to `.<name>.part` next to `P`; only a complete download whose checksum (and size) match is
renamed onto `P`, so the final path never holds a partial or wrong file. An interrupted download resumes
from its `.part` file where the server supports HTTP ranges and starts over otherwise; a mismatching one is
deleted. Without a published checksum the sha256 of the first download is written to `P.sha256`
(`sha256sum -c` format) and later downloads must match it. `--extract-to DIR` unpacks the archive (zip or
tar) into a temporary folder next to DIR and renames it onto DIR when complete. With `--instructions TEXT`
instead of a URL (data behind a login), a missing `P` stops with TEXT. The table of known files is
`stego_steps/data/resources.yaml` (`load_table`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from stego_steps.errors import UserError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TABLE = "resources.yaml"
FIELDS = ("url", "sha256", "md5", "size", "extract", "instructions")


class ChecksumMismatch(UserError):
    """A download whose checksum or size does not match (nothing was written)."""


def load_table(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The known resources (path under resources/ → url, checksum, size, extract, instructions), with the
    entries of `overrides` (the config's `downloads:`) merged over them field by field."""
    text = importlib.resources.files("stego_steps").joinpath("data", TABLE).read_text()
    table = {path: dict(entry) for path, entry in yaml.safe_load(text).items()}
    for path, entry in (overrides or {}).items():
        table[path] = {**table.get(path, {}), **entry}
    for path, entry in table.items():
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown or not (entry.get("url") or entry.get("instructions")):
            raise UserError(f"download entry {path!r}: needs a url (or instructions), may have "
                            f"{', '.join(FIELDS)}; unknown: {', '.join(unknown) or 'none'}")
    return table


def cli_args(entry: Mapping[str, Any]) -> str:
    """`--url ... [--sha256 ...] [--md5 ...] [--size ...]` of a table entry, shell-quoted."""
    args = ["--url", entry["url"]]
    for key in ("sha256", "md5", "size"):
        if entry.get(key):
            args += [f"--{key}", str(entry[key])]
    return shlex.join(args)


def path_pattern(paths: Iterable[str]) -> str:
    """A regular expression that matches exactly these paths (for a rule's wildcard constraint)."""
    return "|".join(re.escape(path) for path in sorted(paths)) or "(?!)"


def part_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.part")


def recorded_sha256(out: Path) -> str | None:
    """The sha256 recorded by an earlier download of `out` (`out.sha256`), if any."""
    record = out.with_name(out.name + ".sha256")
    return record.read_text().split()[0] if record.is_file() and record.read_text().strip() else None


def _open(url: str, offset: int, timeout: float) -> tuple[Any, bool]:
    """The response for `url` from byte `offset`, and whether the server honoured that offset."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the range is past the end: start over
            return _open(url, 0, timeout)
        raise
    return response, bool(offset) and getattr(response, "status", None) == 206


def download(url: str, out: str | Path, *, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `out` (see the module docstring); returns `out`. A `UserError` says what failed and
    what to do; nothing is left at `out` then."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(out)
    sha256 = (sha256 or "").lower() or None
    recorded = None if (sha256 or md5) else recorded_sha256(out)
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response, resumed = _open(url, offset, timeout)
    except (OSError, ValueError) as err:  # URLError, timeouts, unknown URL types
        raise UserError(
            f"could not download {url} to {out}: {err}\n"
            f"Without network access from this machine: download the file elsewhere, e.g. `wget -O {out.name} "
            f"'{url}'`, copy it to {out} and run the workflow again"
            + (f" (its sha256 should be {sha256})" if sha256 else f" (its md5 should be {md5})" if md5 else "")
        ) from err
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with response, open(part, "ab" if resumed else "wb") as f:
        if resumed:
            log.info("resuming %s at byte %d", url, offset)
            with open(part, "rb") as done:
                for chunk in iter(lambda: done.read(CHUNK), b""):
                    for h in hashes.values():
                        h.update(chunk)
        total = response.headers.get("Content-Length") if response.headers else None
        total = int(total) + (offset if resumed else 0) if total and total.isdigit() else size
        got, last = (offset if resumed else 0), time.monotonic()
        log.info("downloading %s → %s (%s bytes)", url, out, total or "unknown")
        try:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                f.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
                got += len(chunk)
                if time.monotonic() - last > 30:
                    last = time.monotonic()
                    log.info("%s: %d of %s bytes", out.name, got, total or "?")
        except OSError as err:
            raise UserError(f"download of {url} broke off after {got} bytes ({err}); nothing was written to "
                            f"{out}. Run again: it resumes from {part.name} where the server allows") from err
    digests = {name: h.hexdigest() for name, h in hashes.items()}
    wanted = {"sha256": sha256 or recorded, "md5": (md5 or "").lower() or None}
    problems = [f"{name} {digests[name]}, expected {want}" for name, want in wanted.items()
                if want and digests[name] != want]
    if size is not None and got != size:
        problems.append(f"{got} bytes, expected {size}")
    if problems:
        part.unlink()
        raise ChecksumMismatch(
            f"download of {url} does not match: {'; '.join(problems)}. Nothing was written to {out}.\n"
            "Fix: run again (a transfer error); if it persists the file at the URL changed or the URL is "
            f"wrong: check the url in the `downloads:` section of the config (or {TABLE}), or copy the right "
            f"file to {out} yourself")
    os.replace(part, out)
    if not (sha256 or md5 or recorded):
        out.with_name(out.name + ".sha256").write_text(f"{digests['sha256']}  {out.name}\n")
        log.warning("%s has no published checksum: recorded its sha256 %s in %s.sha256; later downloads must "
                    "match it", out, digests["sha256"], out.name)
    log.info("%s: %d bytes, sha256 %s", out, got, digests["sha256"])
    return out


def _safe_members(names: list[str], archive: Path) -> None:
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UserError(f"archive {archive} has an unsafe member {name!r} (absolute or outside the folder); "
                            "not unpacking it: download it again from the official source")


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a zip or tar archive onto the folder `dest` (replacing it), via a temporary folder next to it.
    An archive whose only top-level entry is a folder named like `dest` is unpacked without that level."""
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        log.info("unpacking %s → %s", archive, dest)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                _safe_members(z.namelist(), archive)
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                _safe_members(t.getnames(), archive)
                # the "data" filter (no links out of the folder, no special files) where Python has it
                t.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        else:
            raise UserError(f"{archive} is neither a zip nor a tar archive: delete it and download it again")
        entries = list(tmp.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() and entries[0].name == dest.name else tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
