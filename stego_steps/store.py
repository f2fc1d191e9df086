"""Read access to the HDF5 feature stores written by `extract`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch


class FeatureStore:
    """Batches of cached features by sample index, from memory when they fit, else from disk."""

    def __init__(self, path: str | Path, key: str = "feats", max_memory_gb: float = 8.0,
                 device: str | torch.device = "cpu") -> None:
        self.path, self.device = Path(path), torch.device(device)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"feature store {self.path} is unreadable ({err}); delete it and rerun: Snakemake "
                             "recomputes it (`--forcerun extract` if a gathered store points at lost shards)"
                             ) from err
        _check_sources(self._file, self.path)
        self._data = self._file[key]
        self.n, self.dim, self.h, self.w = self._data.shape
        self.attrs = dict(self._file.attrs)
        self.class_names = json.loads(self.attrs.get("class_names", "[]"))
        # Small enough stores are held whole, as float16, on the device that consumes them: batches then
        # cost no disk read and (on a GPU) no host-to-device copy.
        self._memory: torch.Tensor | None = None
        if self._data.size * 2 <= max_memory_gb * 2**30:
            self._memory = torch.from_numpy(self._data[...].astype(np.float16)).to(self.device)

    def digest(self, key: str = "pooled", rows_per_read: int = 65536) -> str:
        """SHA-256 of a dataset's values, read in slices (bounded memory). The pooled descriptors follow from
        every feature, so their digest identifies what a checkpoint was trained on."""
        h, data = hashlib.sha256(), self._file[key]
        for start in range(0, len(data), rows_per_read):
            h.update(np.ascontiguousarray(data[start:start + rows_per_read]).tobytes())
        return h.hexdigest()

    def has(self, key: str) -> bool:
        return key in self._file

    def dataset(self, key: str) -> h5py.Dataset:
        """An HDF5 dataset of the store, read lazily."""
        return self._file[key]

    def read(self, key: str, index: np.ndarray | None = None) -> np.ndarray:
        """Any dataset of the store, whole or at the given sample indices (in the given order)."""
        data = self._file[key]
        if index is None:
            return data[...]
        return _gather(data, np.asarray(index))

    def batch(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 [len(index), C, h, w] on the store's device."""
        index = np.asarray(index)
        if self._memory is not None:
            return self._memory[torch.from_numpy(index).to(self.device)].float()
        return torch.from_numpy(_gather(self._data, index).astype(np.float32)).to(self.device)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_sources(f: h5py.File, path: Path) -> None:
    """A gathered store reads its shard files through HDF5 virtual datasets, which return zeros for a missing
    source: refuse to open one whose shard files are missing instead."""
    missing = set()
    for data in f.values():
        if isinstance(data, h5py.Dataset) and data.is_virtual:
            for source in data.virtual_sources():
                shard = Path(source.file_name)
                if not shard.is_absolute():
                    shard = path.parent / shard
                if not os.path.isfile(shard):
                    missing.add(str(shard))
    if missing:
        raise ValueError(f"feature store {path} points at shard files that are missing: {', '.join(sorted(missing))}; "
                         f"rerun with `snakemake --forcerun gather_features <target>` (the missing shards are "
                         f"re-extracted), or delete {path}")


def _gather(data: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """h5py fancy indexing needs increasing unique indices: read sorted, then restore the order."""
    unique, inverse = np.unique(index, return_inverse=True)
    return data[unique][inverse]


def shard_range(n: int, shard: int, n_shards: int, align: int = 1) -> range:
    """Contiguous, near-equal slices of range(n) whose starts are multiples of `align`.

    Extraction aligns shards on its batch size, so that a sharded run feeds the backbone exactly the batches
    of an unsharded one: CPU kernels round differently for other batch compositions, and features must not
    depend on how a split was sharded. A shard may be empty when there are fewer batches than shards."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    if align < 1:
        raise ValueError(f"shard alignment must be at least 1, got {align}")
    n_blocks = -(-n // align)
    bounds = np.minimum(np.linspace(0, n_blocks, n_shards + 1).round().astype(int) * align, n)
    return range(bounds[shard], bounds[shard + 1])
