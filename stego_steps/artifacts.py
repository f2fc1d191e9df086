"""Writing artifacts: atomic outputs (a killed writer never leaves a truncated file under the final name)
and the fingerprint that ties a resumable partial output to its inputs. Reading them: a damaged or truncated
artifact (a disk error, a copy cut short) raises a `UserError` that names the file and how to re-make it,
instead of the library's own error."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stego_steps.errors import UserError

# The workflow's shard files: Snakemake's scatter items `<i>-of-<n>`, after a prefix where a folder holds several
# sets (an extraction's `train/1-of-4.h5`, the segment stage's `segment/cluster.1-of-2.h5`), and their partial files.
SHARD_NAME = re.compile(r"(?:(?P<prefix>[^.]+)\.)?(?P<i>\d+)-of-(?P<n>\d+)\.h5(?:\.partial)?")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A killed or failing writer therefore never leaves a truncated artifact under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; artifacts get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def write_csv(path: str | os.PathLike, frame: Any) -> None:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def fingerprint(*parts: Any) -> str:
    """A digest of what an interrupted run was computing, so that a resume never mixes two inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def damaged(path: str | os.PathLike, err: BaseException, what: str = "artifact") -> UserError:
    """The error for an unreadable artifact: its name, what the reader said, and how to re-make it."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"{what} {path} is damaged or truncated ({type(err).__name__}: {reason}); re-make it: "
                     f"delete {path} and rerun (Snakemake makes it again, and what depends on it)")


def read_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """np.load of an artifact that this workflow wrote (never pickled objects)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as err:  # garbage reads as "pickled data" or a bad header
        raise damaged(path, err, what) from err


def read_torch(path: str | os.PathLike, what: str = "checkpoint", **kwargs: Any) -> Any:
    """torch.load of an artifact that this workflow wrote."""
    import pickle

    import torch

    try:
        return torch.load(path, **kwargs)
    except FileNotFoundError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise damaged(path, err, what) from err


def open_h5(path: str | os.PathLike, what: str = "HDF5 file") -> Any:
    """h5py.File(path, "r") of an artifact that this workflow wrote."""
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise damaged(path, err, what) from err


def other_counts(out: str | os.PathLike) -> list[Path]:
    """The files beside shard `out` of the same set cut into another number of shards: left by an earlier
    `extract_shards` or `segment_shards`, they would stand beside this count's shards for anything that lists the
    folder (and hold its disk)."""
    out = Path(out)
    this = SHARD_NAME.fullmatch(out.name)
    if this is None or not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir()
                  if (m := SHARD_NAME.fullmatch(p.name)) and m["prefix"] == this["prefix"]
                  and int(m["n"]) != int(this["n"]))
