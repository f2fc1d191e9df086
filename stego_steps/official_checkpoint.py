"""Read a released STEGO checkpoint and convert it to this workflow's own artifacts.

The official checkpoints (`cocostuff27_vit_base_5.ckpt`, `cityscapes_vit_base_1.ckpt`, `potsdam_test.ckpt`)
are PyTorch Lightning checkpoints of the official `LitUnsupervisedSegmenter`. Their `state_dict` holds:

- `net.model.*`: the frozen DINO ViT. Its names are DINO's own (`cls_token`, `pos_embed`,
  `patch_embed.proj.*`, `blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`), which are
  also timm's, so with the prefix removed they form a weights file that `backbones.build_backbone` loads as
  it loads an official DINO `.pth` (the tensors are those of the DINO release the run started from).
- `net.cluster1.0.*`: the head's linear branch (1×1 conv C→D); `net.cluster2.{0,2}.*`: its nonlinear branch
  (1×1 conv C→C, ReLU, 1×1 conv C→D). They become `linear.*` and `nonlinear.{0,2}.*` of `SegmentationHead`,
  which computes the same sum of the two branches.
- `cluster_probe.clusters` `[K+extra, D]`: the cluster probe's centroids.
- `linear_probe.{weight,bias}`: the linear probe, a 1×1 conv D→K.
- other entries (`train_cluster_probe`, `decoder`, loss modules) are not used at evaluation and are skipped.

`hyper_parameters` holds `n_classes` and the run's Hydra config `cfg` (model_type, dino_patch_size, dim,
extra_clusters, ...), pickled as OmegaConf objects; they are read without importing Lightning or OmegaConf
(see `read_checkpoint`).

Cluster convention: the official probe at evaluation is `log_softmax(alpha · cos(code, clusters))` with
alpha = 2, both the code vectors and the cluster vectors L2-normalised (eps 1e-12) — the same formula as
`head.cluster_log_probs` with its default temperature 2. The imported centroids are written as unit rows
(as the cluster stage writes them); since the probe normalises them again, that changes nothing but float
rounding (≤ 1e-6 in the log-probabilities).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stego_steps.artifacts import atomic_path, write_json, write_npy
from stego_steps.backbones import backbone_id
from stego_steps.errors import UserError
from stego_steps.head import SegmentationHead, save_head, save_probe

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "net.model."
HEAD_KEYS = {  # official name → SegmentationHead name
    "net.cluster1.0.weight": "linear.weight",
    "net.cluster1.0.bias": "linear.bias",
    "net.cluster2.0.weight": "nonlinear.0.weight",
    "net.cluster2.0.bias": "nonlinear.0.bias",
    "net.cluster2.2.weight": "nonlinear.2.weight",
    "net.cluster2.2.bias": "nonlinear.2.bias",
}
CLUSTERS_KEY = "cluster_probe.clusters"
LINEAR_KEYS = {"linear_probe.weight": "weight", "linear_probe.bias": "bias"}
# (official model_type, patch size) → this workflow's backbone name
BACKBONES = {("vit_small", 8): "dino_vits8", ("vit_small", 16): "dino_vits16",
             ("vit_base", 8): "dino_vitb8", ("vit_base", 16): "dino_vitb16"}
MODEL_TYPES = {384: "vit_small", 768: "vit_base"}
HEAD_DROPOUT = 0.1  # the official featurizer's Dropout2d(p=0.1)
OUTPUTS = {"backbone": "backbone.pth", "head": "head.pt", "centroids": "centroids.npy", "linear": "linear.pt",
           "hyper_parameters": "hyper_parameters.json"}


# ----------------------------------------------------------------------------------------------------------
# Reading a Lightning checkpoint without Lightning or OmegaConf
# ----------------------------------------------------------------------------------------------------------


class Placeholder:
    """Stands for an object of a class the loader does not import; keeps whatever pickle hands it."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = super().__new__(cls)
        obj.__dict__.update(_args=args, _state=None, _items={}, _list=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(values)


_ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode"),
            ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "set"),
            ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray")}
_ALLOWED_PACKAGES = ("torch", "numpy")


class _Unpickler(pickle.Unpickler):
    """Torch, NumPy and a few builtins as usual; every other class (Lightning's AttributeDict, OmegaConf's
    DictConfig and nodes, typing objects) becomes an inert `Placeholder` subclass of the same name."""

    _placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or module.split(".")[0] in _ALLOWED_PACKAGES:
            return super().find_class(module, name)
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type(name, (Placeholder,), {"qualname": f"{module}.{name}"})
        return self._placeholders[key]


class _PickleModule:
    """What `torch.load(pickle_module=...)` needs: `Unpickler` and `load`."""

    Unpickler = _Unpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _Unpickler(file, **kwargs).load()


def plain(obj: Any) -> Any:
    """Placeholders (OmegaConf containers and value nodes, Lightning's AttributeDict) → dicts, lists, values."""
    if isinstance(obj, type) and issubclass(obj, Placeholder):
        return obj.qualname
    if isinstance(obj, Placeholder):
        state = obj.__dict__.get("_state")
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict) and "_content" in state:  # OmegaConf DictConfig / ListConfig
            return plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # OmegaConf value node
            return plain(state["_val"])
        if obj.__dict__.get("_items"):
            return plain(obj.__dict__["_items"])
        if obj.__dict__.get("_list"):
            return plain(obj.__dict__["_list"])
        return plain(state) if state is not None else type(obj).qualname
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The `state_dict` of a Lightning checkpoint and its `hyper_parameters` as plain Python values ({} when
    absent). Only torch, NumPy and builtin types are constructed; objects of other classes are read as
    plain data, so neither Lightning nor OmegaConf needs to be installed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: download it first (e.g. `snakemake "
                        f"resources/stego/{path.name}`) or give the right path to --ckpt")
    try:
        blob = torch.load(path, map_location="cpu", pickle_module=_PickleModule, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({err}); download it again") from err
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        found = sorted(blob)[:10] if isinstance(blob, dict) else type(blob).__name__
        raise UserError(f"{path} is not a PyTorch Lightning checkpoint: expected a dict with a 'state_dict' "
                        f"entry, found {found}")
    state = {k: v for k, v in blob["state_dict"].items() if isinstance(v, torch.Tensor)}
    hparams = plain(blob.get("hyper_parameters") or {})
    return state, hparams if isinstance(hparams, dict) else {}


# ----------------------------------------------------------------------------------------------------------
# Converting
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Imported:
    """A released checkpoint in this workflow's terms."""

    backbone: str  # backbone name (backbones.BACKBONES)
    backbone_state: dict[str, torch.Tensor]  # DINO/timm key names
    head: SegmentationHead  # eval mode
    clusters: torch.Tensor  # [K+extra, D], as stored (not normalised)
    linear: nn.Conv2d  # eval mode
    hyper_parameters: dict[str, Any]

    @property
    def centroids(self) -> np.ndarray:
        """Unit rows [K+extra, D] float32, as the cluster stage writes them."""
        return F.normalize(self.clusters.double(), dim=1).float().numpy()


def _cfg(hparams: dict[str, Any]) -> dict[str, Any]:
    """The official run's config: `hyper_parameters['cfg']`, or the hyper-parameters themselves."""
    cfg = hparams.get("cfg", hparams)
    return cfg if isinstance(cfg, dict) else {}


def _layout_error(source: str, missing: list[str], state: dict[str, torch.Tensor]) -> UserError:
    expected = [f"{BACKBONE_PREFIX}* (the DINO ViT)", *HEAD_KEYS, CLUSTERS_KEY, *LINEAR_KEYS]
    found = sorted(state)
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} in all)" if len(found) > 12 else "")
    return UserError(
        f"{source} is not a STEGO checkpoint of the layout this importer knows (the official "
        f"LitUnsupervisedSegmenter with a DINO ViT and the nonlinear head); missing: {', '.join(missing)}\n"
        f"expected: {', '.join(expected)}\n"
        f"found: {shown or 'no tensors'}\n"
        "Fix: pass one of the released checkpoints (cocostuff27_vit_base_5.ckpt, cityscapes_vit_base_1.ckpt, "
        "potsdam_test.ckpt) or a checkpoint trained with the official code's `arch: dino`, "
        "`projection_type: nonlinear`")


def backbone_name(state: dict[str, torch.Tensor], hparams: dict[str, Any], source: str) -> str:
    """This workflow's name of the checkpoint's DINO ViT, from its tensors, checked against the
    hyper-parameters where they say something."""
    embed = state.get(BACKBONE_PREFIX + "patch_embed.proj.weight")
    if embed is None or embed.ndim != 4:
        raise _layout_error(source, [BACKBONE_PREFIX + "patch_embed.proj.weight"], state)
    width, patch = embed.shape[0], embed.shape[-1]
    model_type = MODEL_TYPES.get(width)
    if (model_type, patch) not in BACKBONES:
        raise UserError(f"{source}: a ViT of width {width} and patch size {patch} is none of the official DINO "
                        f"backbones ({', '.join(f'{t}/{p}' for t, p in BACKBONES)})")
    cfg = _cfg(hparams)
    for key, value in (("model_type", model_type), ("dino_patch_size", patch)):
        if cfg.get(key) not in (None, value):
            raise UserError(f"{source}: hyper-parameter {key}={cfg[key]!r} contradicts the stored ViT "
                            f"({value!r}); the checkpoint is inconsistent, download it again")
    if cfg.get("dino_feat_type", "feat") != "feat":
        raise UserError(f"{source}: dino_feat_type={cfg['dino_feat_type']!r}; only 'feat' (the last block's "
                        "tokens, which the extract stage computes) can be imported")
    return BACKBONES[(model_type, patch)]


def convert(state: dict[str, torch.Tensor], hparams: dict[str, Any] | None = None,
            source: str = "checkpoint") -> Imported:
    """Split an official state dict into backbone weights, head, centroids and linear probe."""
    hparams = hparams or {}
    missing = [k for k in (*HEAD_KEYS, CLUSTERS_KEY, *LINEAR_KEYS) if k not in state]
    if missing or not any(k.startswith(BACKBONE_PREFIX) for k in state):
        raise _layout_error(source, missing or [BACKBONE_PREFIX + "*"], state)
    name = backbone_name(state, hparams, source)
    backbone_state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}

    w1 = state["net.cluster1.0.weight"]
    code_dim, in_dim = w1.shape[:2]
    head = SegmentationHead(in_dim, code_dim, HEAD_DROPOUT)
    try:
        head.load_state_dict({ours: state[theirs] for theirs, ours in HEAD_KEYS.items()}, strict=True)
    except RuntimeError as err:
        raise UserError(f"{source}: the head tensors (net.cluster1/net.cluster2) do not form a "
                        f"{in_dim}→{code_dim} STEGO head: {err}") from err
    if in_dim != backbone_state["patch_embed.proj.weight"].shape[0]:
        raise UserError(f"{source}: the head reads {in_dim} channels but the ViT has "
                        f"{backbone_state['patch_embed.proj.weight'].shape[0]}; the checkpoint is inconsistent")

    clusters = state[CLUSTERS_KEY].float()
    weight, bias = state["linear_probe.weight"], state["linear_probe.bias"]
    if clusters.ndim != 2 or clusters.shape[1] != code_dim or weight.shape[1] != code_dim:
        raise UserError(f"{source}: cluster probe {tuple(clusters.shape)} or linear probe {tuple(weight.shape)} "
                        f"does not fit the head's code dimension {code_dim}")
    linear = nn.Conv2d(code_dim, weight.shape[0], 1)
    linear.load_state_dict({"weight": weight.reshape(weight.shape[0], code_dim, 1, 1), "bias": bias})
    n_classes, extra = hparams.get("n_classes"), _cfg(hparams).get("extra_clusters", 0) or 0
    if n_classes is not None and (weight.shape[0] != n_classes or len(clusters) != n_classes + extra):
        raise UserError(f"{source}: n_classes={n_classes}, extra_clusters={extra} but the probes have "
                        f"{weight.shape[0]} classes and {len(clusters)} clusters")
    return Imported(name, backbone_state, head.eval(), clusters, linear.eval(), hparams)


def check_same_backbone(state: dict[str, torch.Tensor], weights: str | Path, source: str) -> None:
    """Refuse a checkpoint whose backbone tensors differ from the weights file the features come from."""
    from stego_steps.backbones import read_state_dict

    reference = read_state_dict(weights)
    missing = sorted(set(state) - set(reference))
    differ = [k for k in sorted(set(state) & set(reference))
              if state[k].shape != reference[k].shape or not torch.equal(state[k].float(), reference[k].float())]
    if missing or differ:
        raise UserError(f"the backbone of {source} is not the one in {weights} (keys missing there: "
                        f"{missing[:5]}, tensors that differ: {differ[:5]}); point the backbone's `weights` in "
                        "the config at the DINO file the checkpoint was trained on")


def write_artifacts(imported: Imported, out_dir: str | Path, *, weights: str | None = None, seed: int = 0,
                    source: str = "") -> dict[str, Path]:
    """Write backbone.pth, head.pt, centroids.npy, linear.pt and hyper_parameters.json into `out_dir`.

    `weights` is the backbone weights path exactly as the config will name it (default: the written
    backbone.pth) and `seed` the dataset's seed: together with the backbone name they make the `backbone_id`
    that the extract stage stamps on feature stores, and the head is refused by stores with another one.
    """
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in OUTPUTS.items()}
    if weights and Path(weights).is_file():
        # The released models were trained on the frozen official DINO weights: features extracted with that
        # file are the ones the head expects, so no copy of the backbone is written.
        check_same_backbone(imported.backbone_state, weights, source)
        del paths["backbone"]
    else:
        weights = weights or str(paths["backbone"])
        with atomic_path(paths["backbone"]) as tmp:
            torch.save(imported.backbone_state, tmp)
    meta = {"backbone": imported.backbone, "backbone_id": backbone_id(imported.backbone, weights, seed),
            "backbone_weights": weights, "source": source, "settings": imported.hyper_parameters}
    save_head(paths["head"], imported.head, meta)
    write_npy(paths["centroids"], imported.centroids)
    save_probe(paths["linear"], imported.linear, {"source": source})
    write_json(paths["hyper_parameters"], {**meta, "n_clusters": len(imported.clusters)})
    return paths
