"""The HDF5 feature store of one split: its layout (defined here once), creation, gathering and reading.

Datasets of a store of N samples, C channels, a grid of g×g patches and resolution res:
- `feats` [N,C,g,g] float16 — patch features (last block after the final norm for ViTs); in a compact store
  (`store_dtype: int8`) int8 codes q with `feats_scale` [N,1,g,g] float16, one scale per token (patch), the
  features being q × scale (symmetric rounding to 127 levels of the token's largest absolute channel);
- `pooled` [N,C] float32 — their global average (the KNN descriptor), computed before rounding;
- `label` [N,res,res] int16 — class ids, −1 = ignore (only when the split has labels; compressed);
- evaluation splits also `feats_flip` [N,C,g,g] float16 (features of the horizontally flipped image, for
  flip test-time augmentation; int8 with `feats_flip_scale` in a compact store) and `image` [N,res,res,3]
  uint8 (for the CRF; compressed);
- `ids` — the sample ids; attrs: backbone, res, stride, split, n_classes, class_names.

`extract` writes one store per shard (a contiguous slice of the index, attrs `start`/`stop`); `gather` joins
the shards into one store of HDF5 virtual datasets that point at the shard files, so gathering copies nothing.
`plan` sizes the stores from the same layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from stego_steps.artifacts import atomic_path, open_h5
from stego_steps.errors import UserError

if TYPE_CHECKING:  # torch is imported where used: stages that read stores without a model start faster
    import torch


@dataclasses.dataclass(frozen=True)
class Array:
    """One dataset of a store: shape, dtype and HDF5 storage options."""

    shape: tuple[int, ...]
    dtype: type
    chunks: tuple[int, ...] | None = None
    compression: str | None = None

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes (an upper bound for compressed datasets)."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


STORE_DTYPES = ("float16", "int8")


def layout(n: int, channels: int, grid: int, res: int, *, evaluation: bool, labelled: bool,
           dtype: str = "float16") -> dict[str, Array]:
    """The datasets of a store (without the small `ids`), by name. `dtype` is how patch features are stored:
    float16, or int8 codes with a float16 scale per token (about half the bytes)."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    feats = Array((n, channels, grid, grid), np.dtype(dtype).type, chunks=(1, channels, grid, grid))
    scale = Array((n, 1, grid, grid), np.float16, chunks=(1, 1, grid, grid))
    arrays = {"feats": feats, "pooled": Array((n, channels), np.float32)}
    if dtype == "int8":
        arrays["feats_scale"] = scale
    if labelled:
        arrays["label"] = Array((n, res, res), np.int16, chunks=(1, res, res), compression="lzf")
    if evaluation:
        arrays["feats_flip"] = feats
        if dtype == "int8":
            arrays["feats_flip_scale"] = scale
        arrays["image"] = Array((n, res, res, 3), np.uint8, chunks=(1, res, res, 3), compression="lzf")
    return arrays


def quantize(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """float features [B,C,h,w] → (int8 codes [B,C,h,w], float16 scales [B,1,h,w]): per token, the largest
    absolute channel maps to ±127. The scale is rounded to float16 before the codes are computed, so that
    codes × stored scale is the reconstruction (error at most half a level, 0.4% of the token's largest
    channel)."""
    import torch

    amax = feats.float().abs().amax(dim=1, keepdim=True)
    scale = (amax / 127.0).clamp_min(1e-8).half()
    q = torch.round(feats.float() / scale.float()).clamp_(-127, 127).to(torch.int8)
    return q.numpy(), scale.numpy()


def write_features(f: h5py.File, key: str, start: int, feats: torch.Tensor) -> None:
    """Write features [B,C,h,w] at rows start.. of dataset `key`, in the store's dtype."""
    stop = start + len(feats)
    if f[key].dtype == np.int8:
        q, scale = quantize(feats)
        f[key][start:stop] = q
        f[f"{key}_scale"][start:stop] = scale
    else:
        f[key][start:stop] = feats.half().numpy()


def create(f: h5py.File, arrays: dict[str, Array]) -> None:
    """Create the (empty) datasets of a layout in an open HDF5 file. An empty shard (fewer batches than
    shards) gets empty, unchunked datasets: HDF5 chunks cannot be larger than the data."""
    for name, a in arrays.items():
        empty = a.shape[0] == 0
        f.create_dataset(name, a.shape, a.dtype, chunks=None if empty else a.chunks,
                         compression=None if empty else a.compression)



# A store whose features take at most this many GB (as stored) is held in memory (on the consuming device);
# the environment variable STEGO_MAX_MEMORY_GB overrides it (e.g. to force streaming in a benchmark). The
# budget decides where features are read from, never their values: `batch` returns bitwise the same tensors
# from memory and from disk, and training draws the same batches either way (`batches.StepDraws`).
MAX_MEMORY_GB = 8.0


def memory_budget_gb() -> float:
    """The memory budget for a store: STEGO_MAX_MEMORY_GB if set, else MAX_MEMORY_GB (speed and memory only)."""
    value = os.environ.get("STEGO_MAX_MEMORY_GB")
    return float(value) if value else MAX_MEMORY_GB


class FeatureStore:
    """Batches of cached features by sample index, from memory when they fit, else from disk."""

    def __init__(self, path: str | Path, key: str = "feats", max_memory_gb: float | None = None,
                 device: str | torch.device = "cpu") -> None:
        import torch

        self.path, self.device = Path(path), torch.device(device)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise UserError(f"feature store {self.path} is unreadable ({err}); delete it and rerun: Snakemake "
                             "recomputes it (`--forcerun extract` if a gathered store points at lost shards)"
                             ) from err
        _check_sources(self._file, self.path)
        self._data = self._file[key]
        # int8 stores carry a float16 scale per token next to the codes.
        self._scale = self._file[f"{key}_scale"] if self._data.dtype == np.int8 else None
        self.n, self.dim, self.h, self.w = self._data.shape
        self.attrs = dict(self._file.attrs)
        self.class_names = json.loads(self.attrs.get("class_names", "[]"))
        self.budget_gb = memory_budget_gb() if max_memory_gb is None else max_memory_gb
        # Small enough stores are held whole, as stored (float16, or int8 codes and scales), on the device
        # that consumes them: batches then cost no disk read and (on a GPU) no host-to-device copy.
        self._memory: torch.Tensor | None = None
        self._memory_scale: torch.Tensor | None = None
        if self.nbytes <= self.budget_gb * 2**30:
            values = self._data[...]
            if values.dtype != np.int8:
                values = values.astype(np.float16, copy=False)
            self._memory = torch.from_numpy(values).to(self.device)
            if self._scale is not None:
                self._memory_scale = torch.from_numpy(self._scale[...]).to(self.device)

    @property
    def nbytes(self) -> int:
        """Bytes of the features as stored (codes and scales for int8)."""
        scale = 0 if self._scale is None else self._scale.size * 2
        return int(self._data.size * self._data.dtype.itemsize + scale)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one sample's features as stored."""
        return -(-self.nbytes // max(self.n, 1))

    @property
    def in_memory(self) -> bool:
        """Whether the features are held in memory (else `train` streams them from disk)."""
        return self._memory is not None

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
        import torch

        index = np.asarray(index)
        if self._memory is not None:
            at = torch.from_numpy(index).to(self.device)
            scale = None if self._memory_scale is None else self._memory_scale[at]
            return decode(self._memory[at], scale)
        return decode(*self.raw(index)).to(self.device)

    def raw(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stored values (and int8 scales) at sample indices, read from disk, as CPU tensors."""
        import torch

        index = np.asarray(index)
        scale = None if self._scale is None else torch.from_numpy(_gather(self._scale, index))
        return torch.from_numpy(_gather(self._data, index)), scale

    def raw_rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stored values (and int8 scales) of the contiguous rows start..stop: one read of whole chunks."""
        import torch

        scale = None if self._scale is None else torch.from_numpy(self._scale[start:stop])
        return torch.from_numpy(self._data[start:stop]), scale

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode(values: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Stored features → float32: float16 as is, int8 codes times their per-token scale."""
    if scale is None:
        return values.float()
    return values.float().mul_(scale.float())


def as_stored(feats: torch.Tensor, dtype: str) -> torch.Tensor:
    """Features [B,C,h,w] as a store of `dtype` gives them back (`write_features`, then `decode`): code that
    computes features itself (segmenting new images) sees the values the run's stages saw."""
    import torch

    # Contiguous, as read from HDF5: kernels can round differently on other memory layouts.
    if dtype == "int8":
        q, scale = quantize(feats.cpu())
        return decode(torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(np.ascontiguousarray(scale)))
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    return decode(feats.cpu().half().contiguous())


def _check_sources(f: h5py.File, path: Path) -> None:
    """A gathered store reads its shard files through HDF5 virtual datasets, which return zeros for a missing
    source: refuse to open one whose shard files are missing instead."""
    missing, opened = set(), set()
    for data in f.values():
        if isinstance(data, h5py.Dataset) and data.is_virtual:
            for source in data.virtual_sources():
                shard = Path(source.file_name)
                if not shard.is_absolute():
                    shard = path.parent / shard
                if not os.path.isfile(shard):
                    missing.add(str(shard))
                elif shard not in opened:  # a truncated shard would read as zeros, or fail deep in a stage
                    opened.add(shard)
                    open_h5(shard, "feature shard").close()
    if missing:
        raise UserError(f"feature store {path} points at shard files that are missing: {', '.join(sorted(missing))}; "
                         f"rerun with `snakemake --forcerun gather_features <target>` (the missing shards are "
                         f"re-extracted), or delete {path}")


def _gather(data: h5py.Dataset, index: np.ndarray) -> np.ndarray:
    """Rows at arbitrary indices: each run of consecutive sorted indices is read as one slice, then the order
    is restored. (h5py's fancy indexing builds a selection point by point; for 16 chunked feature rows it took
    180 ms where 16 slices take under 1 ms.)"""
    unique, inverse = np.unique(np.asarray(index).reshape(-1), return_inverse=True)
    if len(unique) == 0:
        return data[unique][inverse]
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(unique)]])
    out = np.empty((len(unique), *data.shape[1:]), data.dtype)
    for a, b in zip(starts, stops, strict=True):
        out[a:b] = data[int(unique[a]):int(unique[b - 1]) + 1]
    return out[inverse]


def gather(shards: list[Path], out: Path) -> None:
    """One store over all shards: virtual datasets whose sources are the shard files (relative paths, so
    the folder can move), plus the small `ids`. Checks that the shards tile the split exactly."""
    metas = []
    for path in shards:
        with open_h5(path, "feature shard") as f:
            metas.append((int(f.attrs["start"]), int(f.attrs["stop"]), path,
                          {k: (f[k].shape, f[k].dtype) for k in f if k != "ids"}, dict(f.attrs), f["ids"][...]))
    metas.sort(key=lambda m: (m[0], m[1]))  # an empty shard sorts before the one it abuts
    stops = [m[1] for m in metas]
    if [m[0] for m in metas] != [0, *stops[:-1]]:
        raise UserError(f"feature shards do not tile the split: {[(m[0], m[1], str(m[2])) for m in metas]}; "
                         "rerun the extract jobs of the missing shards")
    n, first = stops[-1], metas[0]
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        for key, (shape, dtype) in first[3].items():
            virtual = h5py.VirtualLayout(shape=(n, *shape[1:]), dtype=dtype)
            for start, stop, path, datasets, _, _ in metas:
                if datasets.get(key, (None,))[0] != (stop - start, *shape[1:]):
                    raise UserError(f"shard {path} has no dataset '{key}' of the expected shape; delete it and rerun "
                                    "(extract re-makes it)")
                if stop == start:  # an empty shard contributes nothing
                    continue
                source = os.path.relpath(path, out.parent)
                virtual[start:stop] = h5py.VirtualSource(source, key, shape=(stop - start, *shape[1:]))
            f.create_virtual_dataset(key, virtual)
        f.create_dataset("ids", data=np.concatenate([m[5] for m in metas]))
        f.attrs.update({k: v for k, v in first[4].items() if k not in ("start", "stop", "done", "fingerprint")})
        f.attrs["shards"] = len(metas)


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
