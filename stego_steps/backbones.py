"""Frozen feature extractors: DINO / DINOv2 / DINOv3 ViTs and any timm model through timm, and an offline
EfficientNet-Lite0.

Every backbone is wrapped in a `FeatureExtractor`: it takes RGB images in [0, 1], normalises them itself,
runs the wrapped model frozen, in eval mode and without gradients, and returns dense float32 features
`[B, dim, H/stride, W/stride]`.

Weights never silently fall back to random values. A pretrained ViT loads either a file named in the config
(official DINO, DINOv2 and DINOv3 `.pth` files load as they are, as do timm's own files) or timm's hub
weights when they already sit in the local
Hugging Face cache; otherwise `WeightsUnavailable` says how to supply them. The `<name>_random` variants are
seeded random initialisations for tests and speed measurements only.

The static facts (names, strides, weights lookup) live in `backbone_specs`, which imports no torch, so the
workflow reads them for free; this module imports torch, and timm and safetensors only where needed.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stego_steps.backbone_specs import (  # noqa: F401 (the static facts, re-exported for the stages)
    BACKBONES,
    EFFNET_FILE,
    EFFNET_LITE0_STAGE_BLOCKS,
    EFFNET_PACKAGE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_SUFFIX,
    BackboneSpec,
    UnknownTimmModel,
    WeightsMismatch,
    WeightsUnavailable,
    backbone_id,
    backbone_info,
    cached_hub_weights,
    check_weights,
    effnet_package_file,
    spec,
    unavailable_message,
)
from stego_steps.errors import UserError

log = logging.getLogger("stego_steps")


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

    def __init__(self, name: str, stride: int, dim: int, model: nn.Module, weights_source: str,
                 multiple: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.stride = stride
        self.multiple = multiple or stride  # what an input side must be a multiple of
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
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"{self.name}: image size {h}x{w} (HxW) is not a multiple of the backbone stride "
                f"{self.multiple}; crop or resize to a multiple of {self.multiple}"
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
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

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
            # DINOv3: no position table; the RoPE angles are computed for this very grid.
            x = m.forward_features(images)
        x = x[:, m.num_prefix_tokens:]
        return x.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous()


class TimmFeatureExtractor(FeatureExtractor):
    """Any timm model: its `forward_intermediates` at the chosen feature_info layers (ViT tokens after the final
    norm, prefix tokens dropped, as maps; ConvNet stage outputs), coarser layers bilinearly upsampled to the
    finest grid and concatenated."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__(spec.name, spec.stride, spec.dim, model, weights_source, multiple=spec.input_multiple)
        self.layers = list(spec.layers or (-1,))
        self.vit = spec.vit
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"indices": self.layers, "intermediates_only": True, "output_fmt": "NCHW"}
        if self.vit:
            kwargs["norm"] = True  # the final norm on every chosen block's tokens
        maps = self.model.forward_intermediates(images, **kwargs)
        grid = (images.shape[-2] // self.stride, images.shape[-1] // self.stride)
        maps = [f if tuple(f.shape[-2:]) == grid else
                F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in maps]
        return torch.cat(maps, dim=1)


class EfficientNetFeatureExtractor(FeatureExtractor):
    """EfficientNet-Lite0: stride-8 (40 ch) ⊕ stride-16 (112 ch, bilinear to the stride-8 grid) = 152 ch."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__(spec.name, spec.stride, spec.dim, model, weights_source, multiple=spec.input_multiple)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (255.0 * images - 127.0) / 128.0  # the reference package's input scaling

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        f8, f16 = self.model(images)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f8, f16], dim=1)


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------


def dinov3_arch(s: BackboneSpec, state_dict: dict[str, torch.Tensor] | None) -> str:
    """timm's DINOv3 model for a state dict: `_qkvb` (q and v biases; Meta's files and timm's `_qkvb` files)
    unless the file has no attention bias at all (timm's plain `_dinov3` files, whose biases were zero)."""
    if state_dict is None or any(k.endswith(("qkv.bias", "q_bias")) for k in state_dict):
        return s.timm_name
    return s.timm_name.replace("_qkvb", "")


def _create_vit(s: BackboneSpec, init: bool = True, arch: str | None = None) -> nn.Module:
    """The timm ViT without pretrained weights; `init=False` skips timm's (slow) init before a load."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if not init and s.family != "dinov3":  # timm's EVA models (DINOv3) have no weight_init option
        kwargs["weight_init"] = "skip"
    if s.family in ("dinov2", "dinov3"):
        kwargs["dynamic_img_size"] = True
    model = timm.create_model(arch or s.timm_name, **kwargs)
    if s.family == "dino":
        model.patch_embed.strict_img_size = False  # any multiple of the patch size; pos-embed is ours
    return model


def _create_timm(s: BackboneSpec) -> nn.Module:
    """A `timm/<model>` network with random weights; ViTs take any input size the patch divides."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if s.vit:
        kwargs["dynamic_img_size"] = True
    try:
        return timm.create_model(s.timm_name, **kwargs)
    except TypeError:  # a ViT-like model without a dynamic-size option
        kwargs.pop("dynamic_img_size", None)
        return timm.create_model(s.timm_name, **kwargs)


def _load_strict(s: BackboneSpec, model: nn.Module, state_dict: dict[str, torch.Tensor], path: object) -> None:
    """Load every tensor of the network, or a `WeightsMismatch` naming what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshapen = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or misshapen:
        parts = [f"{what} {len(keys)} (e.g. {', '.join(keys[:3])})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                 if keys]
        raise WeightsMismatch(
            f"weights {path} do not fit backbone {s.name!r} (timm model {s.timm_name}): {'; '.join(parts)}. "
            "Is it the file of this very model (official or timm layout)?"
        )
    model.load_state_dict(state_dict, strict=True)


def _load_vit_weights(s: BackboneSpec, model: nn.Module, state_dict: dict[str, torch.Tensor], path: object) -> None:
    if s.family == "dinov2":
        # Official DINOv2 files name a few tensors differently (mask_token, register_tokens, w12/w3);
        # timm's own filter converts them and leaves timm-layout files alone.
        from timm.models.vision_transformer import checkpoint_filter_fn

        state_dict = checkpoint_filter_fn(state_dict, model)
    elif s.family == "dinov3":
        # Official DINOv3 files (storage_tokens, ls1.gamma, qkv.bias with a masked k part, rope periods, the
        # satellite model's local_cls_norm) become timm's EVA names in timm's own filter; timm-layout files
        # pass through it unchanged.
        from timm.models.eva import checkpoint_filter_fn

        periods = next((v for k, v in state_dict.items() if k.endswith("rope_embed.periods")), None)
        _load_strict(s, model, checkpoint_filter_fn(state_dict, model), path)
        if periods is not None:
            _load_rope_periods(s, model, periods, path)
        return
    _load_strict(s, model, state_dict, path)


def _load_rope_periods(s: BackboneSpec, model: nn.Module, periods: torch.Tensor, path: object) -> None:
    """Meta's files store the RoPE periods as trained, rounded to bfloat16; timm drops them and recomputes them
    in float32, which moves the features slightly off the official model's. Keep the file's."""
    rope = model.rope
    if periods.shape != rope.periods.shape:
        raise WeightsMismatch(f"weights {path} do not fit backbone {s.name!r}: RoPE periods of shape "
                              f"{tuple(periods.shape)}, the model has {tuple(rope.periods.shape)}")
    with torch.no_grad():
        rope.periods.copy_(periods.float())
        if getattr(rope, "pos_embed_cached", None) is not None and getattr(rope, "feat_shape", None):
            rope.pos_embed_cached.copy_(rope.get_embed(shape=list(rope.feat_shape)))


def _timm_filter(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model module's own `checkpoint_filter_fn` (other layouts of the same weights), where timm has one,
    and without the classifier's tensors (the features need none)."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as err:  # a filter for another layout: the strict load says what does not fit
            log.debug("timm's checkpoint filter for %s failed (%s); loading the keys as they are",
                      type(model).__name__, err)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    own = model.state_dict().keys()
    return {k: v for k, v in state_dict.items()
            if k in own or not any(k == h or k.startswith(h + ".") for h in heads if h)}


def _build_efficientnet(s: BackboneSpec, weights: str | os.PathLike | None) -> FeatureExtractor:
    import timm

    path = Path(weights).expanduser() if weights is not None else effnet_package_file()
    if path is None:
        raise WeightsUnavailable(unavailable_message(s))
    state_dict = convert_efficientnet_lite0_state_dict(read_state_dict(path))
    model = timm.create_model(s.timm_name, pretrained=False, features_only=True, out_indices=(2, 3))
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise WeightsMismatch(
            f"weights {path} lack {len(missing)} EfficientNet-Lite0 tensors, e.g. {missing[:3]}"
        )
    model.load_state_dict({k: state_dict[k] for k in wanted}, strict=True)
    return EfficientNetFeatureExtractor(s, model, f"file:{path}")


def build_backbone(name: str, weights: str | os.PathLike | None = None, seed: int = 0,
                   layers: list[int] | tuple[int, ...] | None = None) -> FeatureExtractor:
    """Build the frozen feature extractor `name` (see `BACKBONES`, or `timm/<model>[_random]`).

    `weights`: a checkpoint file (`.pth`/`.bin`/`.safetensors`; official DINO, DINOv2 and DINOv3 files load as
    they are, as do timm's). Without it, pretrained models use timm's weights from the local Hugging Face cache,
    or raise WeightsUnavailable. `seed` only affects the `_random` variants, which are built under a forked RNG
    (global state untouched). `layers`: the feature_info indices of a `timm/` model (default: the last).
    """
    s = spec(name, layers)
    check_weights(name, weights)
    if s.family == "efficientnet":
        return _build_efficientnet(s, weights)
    wrap = TimmFeatureExtractor if s.family == "timm" else ViTFeatureExtractor
    if s.random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create_timm(s) if s.family == "timm" else _create_vit(s)
        return wrap(s, model, f"random(seed={seed})")
    if weights is not None:
        path: str | os.PathLike = Path(weights).expanduser()
        source = f"file:{path}"
    else:
        cached = cached_hub_weights(name)
        if cached is None:  # removed since check_weights ran
            raise WeightsUnavailable(unavailable_message(s))
        path, source = cached, f"hf-cache:{cached}"
        if s.note:
            log.warning("%s: %s", name, s.note)
    state_dict = read_state_dict(path)
    if s.family == "timm":
        model = _create_timm(s)
        _load_strict(s, model, _timm_filter(model, state_dict), path)
    else:
        # Every tensor is overwritten by the strict load, so timm's init is skipped.
        model = _create_vit(s, init=False, arch=dinov3_arch(s, state_dict) if s.family == "dinov3" else None)
        _load_vit_weights(s, model, state_dict, path)
    log.info("backbone %s (%s) loaded from %s", name, s.timm_name, source)
    return wrap(s, model, source)


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
