"""Backbones: shapes, freezing, DINO's pos-embed interpolation, weight loading, EfficientNet-Lite0.

Building a randomly initialised ViT costs about a second of CPU (timm's init), so models are built once per
module through `_built` and never modified.
"""

from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from stego_steps import backbones as bb
from stego_steps.backbones import (
    BACKBONES,
    FeatureExtractor,
    WeightsUnavailable,
    backbone_info,
    build_backbone,
    check_weights,
)
from stego_steps.errors import UserError

DINOV3_NAMES = ["dinov3_vits16", "dinov3_vitsplus16", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vitl16_sat"]
VIT_NAMES = [
    "dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16",
    "dinov2_vits14", "dinov2_vitb14", "dinov2_vits14_reg", "dinov2_vitb14_reg",
    *DINOV3_NAMES,
]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def offline_empty_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, and an empty Hugging Face cache whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf_home"


@functools.cache
def _built(name: str, seed: int = 0) -> FeatureExtractor:
    """Shared, read-only instances (random variants and the packaged EfficientNet need no HF cache)."""
    return build_backbone(name, seed=seed)


@pytest.fixture()
def vits8() -> FeatureExtractor:
    return _built("dino_vits8_random")


@pytest.fixture()
def vits16() -> FeatureExtractor:
    return _built("dino_vits16_random")


@pytest.fixture()
def lite0() -> FeatureExtractor:
    return _built("efficientnet_lite0")


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# Static table
# ----------------------------------------------------------------------------------------------------------


def test_table_names_and_static_info_match_timm() -> None:
    assert set(BACKBONES) == set(VIT_NAMES) | {n + "_random" for n in VIT_NAMES} | {"efficientnet_lite0"}
    for name in VIT_NAMES:
        spec = BACKBONES[name]
        assert BACKBONES[name + "_random"].timm_name == spec.timm_name
        # hub id of the static table = timm's pretrained config; dim and patch size = the architecture
        assert timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id == spec.hf_hub_id
        with torch.device("meta"):
            model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        info = backbone_info(name)
        assert (info["stride"], info["dim"]) == (model.patch_embed.patch_size[0], model.embed_dim)
        assert info["prefix_tokens"] == model.num_prefix_tokens
        assert backbone_info(name + "_random")["random"] is True
    lite0 = backbone_info("efficientnet_lite0")
    assert (lite0["stride"], lite0["dim"]) == (8, 152)
    with pytest.raises(ValueError, match="valid names: .*dino_vits8"):
        backbone_info("dino_vitz8")


# ----------------------------------------------------------------------------------------------------------
# Shapes, determinism, freezing
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "h", "w"),
    [
        ("dino_vits8_random", 32, 48),
        ("dino_vits16_random", 32, 64),
        ("dinov2_vits14_random", 28, 42),
        ("dinov2_vits14_reg_random", 42, 28),
        ("efficientnet_lite0", 40, 64),
    ],
)
def test_output_shapes(name: str, h: int, w: int) -> None:
    fx = _built(name)
    info = backbone_info(name)
    assert isinstance(fx, FeatureExtractor)
    assert (fx.name, fx.stride, fx.dim) == (name, info["stride"], info["dim"])
    out = fx(_images(2, h, w))
    assert out.shape == (2, info["dim"], h // info["stride"], w // info["stride"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_dinov2_equals_timm_forward_features_without_prefix_tokens() -> None:
    fx = _built("dinov2_vits14_reg_random")
    x = _images(1, 28, 42)
    tokens = fx.model.forward_features((x - MEAN) / STD)
    assert tokens.shape[1] == 5 + 2 * 3  # CLS + 4 registers + patches
    want = tokens[:, 5:].reshape(1, 2, 3, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(fx(x), want, rtol=0, atol=0)


def test_seeded_random_is_deterministic_and_leaves_global_rng_alone(vits8: FeatureExtractor) -> None:
    state = torch.get_rng_state()
    again = build_backbone("dino_vits8_random", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    other = _built("dino_vits8_random", seed=1)
    sd0, sd1, sd2 = vits8.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert not torch.equal(sd0["model.pos_embed"], sd2["model.pos_embed"])
    x = _images(1, 16, 24)
    assert torch.equal(vits8(x), again(x))


def test_frozen_and_train_mode_changes_nothing(lite0: FeatureExtractor) -> None:
    vit = _built("dino_vits8_random", seed=1)
    # a live dropout would make outputs random if train mode reached the wrapped model
    vit.model.pos_drop = torch.nn.Dropout(0.5)
    try:
        _check_frozen(vit, _images(2, 16, 16))
    finally:
        vit.model.pos_drop = torch.nn.Dropout(0.0)
    _check_frozen(lite0, _images(2, 32, 32))


def _check_frozen(fx: FeatureExtractor, x: torch.Tensor) -> None:
    """Parameters frozen; `.train()` switches nothing on; no graph; BatchNorm statistics unchanged."""
    assert not any(p.requires_grad for p in fx.parameters())
    before = fx(x)
    buffers = {k: v.clone() for k, v in fx.state_dict().items()}
    assert fx.train() is fx
    assert not fx.training and not any(m.training for m in fx.modules())
    x_grad = x.clone().requires_grad_(True)
    after = fx(x_grad)
    assert not after.requires_grad
    assert torch.equal(before, after)
    assert torch.equal(fx(x), before)
    assert all(torch.equal(buffers[k], v) for k, v in fx.state_dict().items())


@pytest.mark.parametrize("name", ["dino_vits8_random", "dinov2_vits14_random", "efficientnet_lite0"])
def test_sizes_not_multiple_of_stride_raise(name: str) -> None:
    fx = _built(name)
    s = fx.stride
    for h, w in ((2 * s + 2, 2 * s), (2 * s, 3 * s - 1)):
        with pytest.raises(ValueError, match=f"not a multiple of the backbone stride {s}"):
            fx(_images(1, h, w))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        fx(torch.rand(1, 1, 2 * s, 2 * s))
    with pytest.raises(ValueError, match="float"):
        fx(torch.zeros(1, 3, 2 * s, 2 * s, dtype=torch.uint8))


# ----------------------------------------------------------------------------------------------------------
# DINO positional-embedding interpolation
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["vits8", "vits16"])
def test_native_grid_equals_plain_timm_forward(fixture: str, request: pytest.FixtureRequest) -> None:
    fx = request.getfixturevalue(fixture)
    x = _images(1, 224, 224)
    want = fx.model.forward_features((x - MEAN) / STD)[:, 1:]
    g = 224 // fx.stride
    want = want.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(fx(x), want, rtol=0, atol=0)


def _dino_reference(model: torch.nn.Module, x: torch.Tensor, patch: int) -> torch.Tensor:
    """DINO's prepare_tokens / interpolate_pos_encoding + get_intermediate_layers(n=1), written out."""
    B, nc, w, h = x.shape  # DINO's naming: "w" is dim 2
    t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat((model.cls_token.expand(B, -1, -1), t), dim=1)
    npatch = t.shape[1] - 1
    N = model.pos_embed.shape[1] - 1
    if npatch == N and w == h:
        pos = model.pos_embed
    else:
        class_pos_embed = model.pos_embed[:, 0]
        patch_pos_embed = model.pos_embed[:, 1:]
        dim = t.shape[-1]
        w0, h0 = w // patch + 0.1, h // patch + 0.1
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
            mode="bicubic",
        )
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        pos = torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)
    t = t + pos
    for blk in model.blocks:
        t = blk(t)
    t = model.norm(t)
    # STEGO: feat[:, 1:].reshape(B, H // p, W // p, -1).permute(0, 3, 1, 2)
    return t[:, 1:].reshape(B, w // patch, h // patch, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("fixture", "h", "w"),
    [
        ("vits8", 64, 64),  # square, smaller than native 28x28
        ("vits8", 48, 80),  # non-square: checks the row/column order of the scale factors
        ("vits16", 112, 448),  # 7x28 = 196 patches = native count, but not the native grid
        ("vits16", 320, 320),  # larger than native (20x20)
    ],
)
def test_non_native_grid_uses_dino_interpolation(
    fixture: str, h: int, w: int, request: pytest.FixtureRequest
) -> None:
    fx = request.getfixturevalue(fixture)
    x = _images(1, h, w)
    with torch.no_grad():
        want = _dino_reference(fx.model, (x - MEAN) / STD, fx.stride)
    got = fx(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # and it is not timm's own resampling (size + antialias, no +0.1 offset)
    g = (h // fx.stride, w // fx.stride)
    timm_pos = timm.layers.resample_abs_pos_embed(fx.model.pos_embed, new_size=g, num_prefix_tokens=1)
    assert not torch.allclose(fx.dino_pos_embed(*g), timm_pos)


# ----------------------------------------------------------------------------------------------------------
# Loading weights
# ----------------------------------------------------------------------------------------------------------

# The key set of DINO's official VisionTransformer (dino/vision_transformer.py, num_classes=0), block index
# replaced by N: the official `.pth` files hold exactly these.
DINO_OFFICIAL_KEY_PATTERNS = {
    "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
    *(
        f"blocks.N.{m}.{p}"
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    ),
}


def test_timm_dino_keys_are_the_official_dino_keys(vits8: FeatureExtractor) -> None:
    keys = {re.sub(r"^blocks\.\d+\.", "blocks.N.", k) for k in vits8.model.state_dict()}
    assert keys == DINO_OFFICIAL_KEY_PATTERNS


@pytest.mark.parametrize("layout", ["plain", "teacher", "state_dict", "safetensors"])
def test_official_layout_round_trip(layout: str, tmp_path: Path) -> None:
    ref = _built("dino_vits8_random", seed=1)
    sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    path = tmp_path / "dino_deitsmall8_300ep_pretrain.pth"
    if layout == "plain":
        torch.save(sd, path)
    elif layout == "teacher":  # DINO's full training checkpoint
        head = {  # the DINO projection head sits beside the backbone and must be dropped
            "module.head.mlp.0.weight": torch.zeros(4, 3),
            "module.head.last_layer.weight_g": torch.ones(1),
        }
        torch.save(
            {
                "teacher": {**{"module.backbone." + k: v for k, v in sd.items()}, **head},
                "student": {"module.backbone." + k: torch.zeros_like(v) for k, v in sd.items()},
                "epoch": 300,
            },
            path,
        )
    elif layout == "state_dict":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(sd, str(path))
    check_weights("dino_vits8", str(path))
    fx = build_backbone("dino_vits8", weights=str(path))
    assert fx.weights_source == f"file:{path}"
    x = _images(2, 40, 24)
    assert torch.equal(fx(x), ref(x))


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_official_dinov2_layout_loads(name: str, tmp_path: Path) -> None:
    """DINOv2's own files carry mask_token (and register_tokens, with the CLS position inside pos_embed)."""
    ref = _built(name + "_random")
    sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    official = {"mask_token": torch.zeros(1, sd["cls_token"].shape[-1])}
    if "reg_token" in sd:
        cls_pos = torch.randn(1, 1, sd["cls_token"].shape[-1])
        official["register_tokens"] = sd.pop("reg_token")
        official["cls_token"] = sd.pop("cls_token") - cls_pos[:, 0]
        official["pos_embed"] = torch.cat([cls_pos, sd.pop("pos_embed")], dim=1)
    path = tmp_path / f"{name}_pretrain.pth"
    torch.save({**sd, **official}, path)
    x = _images(1, 28, 42)
    torch.testing.assert_close(build_backbone(name, weights=str(path))(x), ref(x), rtol=1e-6, atol=1e-6)


def test_file_for_another_architecture_is_rejected(vits16: FeatureExtractor, tmp_path: Path) -> None:
    path = tmp_path / "vits16.pth"
    torch.save(vits16.model.state_dict(), path)
    with pytest.raises(UserError, match="do not fit backbone 'dino_vits8'"):
        build_backbone("dino_vits8", weights=str(path))


def test_weights_from_local_hf_cache(offline_empty_hf_cache: Path) -> None:
    from safetensors.torch import save_file

    ref = _built("dino_vits16_random")
    repo = offline_empty_hf_cache / "hub" / "models--timm--vit_small_patch16_224.dino"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(ref.model.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    check_weights("dino_vits16", None)
    fx = build_backbone("dino_vits16")
    assert fx.weights_source.startswith("hf-cache:")
    x = _images(1, 32, 48)
    assert torch.equal(fx(x), ref(x))


@pytest.mark.parametrize(
    ("name", "official"),
    [
        ("dino_vitb8", "dino_vitbase8_pretrain.pth"),
        ("dino_vits8", "dino_deitsmall8_300ep_pretrain.pth"),
        ("dinov2_vits14_reg", "dinov2_vits14_reg4_pretrain.pth"),
    ],
)
def test_missing_weights_raise_helpful_error(name: str, official: str) -> None:
    t0 = time.perf_counter()
    for call in (lambda: check_weights(name, None), lambda: build_backbone(name)):
        with pytest.raises(WeightsUnavailable) as info:
            call()
        msg = str(info.value)
        assert isinstance(info.value, RuntimeError)
        assert f"'{name}'" in msg
        assert f"backbones: {{{name}: {{weights: /path/to/{official}}}}}" in msg
        assert "config/config.yaml" in msg
        assert "network access" in msg and "timm cache" in msg
        assert f"'{name}_random'" in msg and "tests" in msg
    assert time.perf_counter() - t0 < 5  # fails before building anything


def test_check_weights_other_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vit_huge'.*dino_vits8.*efficientnet_lite0"):
        check_weights("vit_huge", None)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        check_weights("dino_vits8", str(missing))
    with pytest.raises(FileNotFoundError):
        build_backbone("dino_vits8", weights=str(missing))
    with pytest.raises(ValueError, match="never loads weights"):
        check_weights("dino_vits8_random", str(missing))
    check_weights("dino_vits8_random", None)
    check_weights("efficientnet_lite0", None)


# ----------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ----------------------------------------------------------------------------------------------------------


def _pad_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (extra pixel at the bottom/right)."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def _lite0_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """EfficientNet-Lite0 written out from the lukemelas-style file: logits and each stage's output."""

    def conv(x: torch.Tensor, name: str, stride: int = 1, depthwise: bool = False) -> torch.Tensor:
        w = sd[name + ".weight"]
        groups = x.shape[1] if depthwise else 1
        return F.conv2d(_pad_same(x, w.shape[-1], stride), w, stride=stride, groups=groups)

    def bn(x: torch.Tensor, name: str, act: bool = True) -> torch.Tensor:
        mean, var = sd[name + ".running_mean"], sd[name + ".running_var"]
        y = F.batch_norm(x, mean, var, sd[name + ".weight"], sd[name + ".bias"], training=False, eps=1e-3)
        return F.relu6(y) if act else y

    x = bn(conv(x, "_conv_stem", 2), "_bn0")
    stages, index = [], 0
    for n, stage_stride in zip((1, 2, 2, 3, 3, 4, 1), (1, 2, 2, 2, 1, 2, 1), strict=True):
        for j in range(n):
            p, stride, inp = f"_blocks.{index}.", stage_stride if j == 0 else 1, x
            if p + "_expand_conv.weight" in sd:
                x = bn(conv(x, p + "_expand_conv"), p + "_bn0")
            x = bn(conv(x, p + "_depthwise_conv", stride, depthwise=True), p + "_bn1")
            x = bn(conv(x, p + "_project_conv"), p + "_bn2", act=False)
            if stride == 1 and x.shape == inp.shape:
                x = x + inp
            index += 1
        stages.append(x)
    x = bn(conv(x, "_conv_head"), "_bn1")
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"]), stages


@pytest.fixture(scope="module")
def lite0_file_state_dict() -> dict[str, torch.Tensor]:
    path = bb.effnet_package_file()
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_lite0_keys_map_onto_timm_and_logits_match_reference(lite0_file_state_dict: dict) -> None:
    mapped = bb.convert_efficientnet_lite0_state_dict(lite0_file_state_dict)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert set(mapped) == set(full.state_dict())  # every key maps, one to one
    full.load_state_dict(mapped, strict=True)  # and shapes match
    x = (255 * _images(2, 72, 88) - 127) / 128  # sizes that need asymmetric SAME padding
    with torch.no_grad():
        want, _ = _lite0_reference(lite0_file_state_dict, x)
        got = full(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unexpected EfficientNet-Lite0 key"):
        bb.convert_efficientnet_lite0_state_dict({"_blocks.0._expand_conv.weight": torch.zeros(1)})


def test_lite0_features_are_stride8_plus_upsampled_stride16(
    lite0: FeatureExtractor, lite0_file_state_dict: dict
) -> None:
    images = _images(2, 40, 56)
    with torch.no_grad():
        _, stages = _lite0_reference(lite0_file_state_dict, (255 * images - 127) / 128)
    f8, f16 = stages[2], stages[4]
    assert (f8.shape[1], f16.shape[1]) == (40, 112) and f8.shape[-2:] == (5, 7) and f16.shape[-2:] == (3, 4)
    want = torch.cat([f8, F.interpolate(f16, size=(5, 7), mode="bilinear", align_corners=False)], dim=1)
    torch.testing.assert_close(lite0(images), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# DINOv3
# ----------------------------------------------------------------------------------------------------------


def official_dinov3_layout(timm_sd: dict[str, torch.Tensor], periods: torch.Tensor, seed: int = 1
                           ) -> dict[str, torch.Tensor]:
    """A timm `_qkvb` DINOv3 state dict in the key layout of Meta's files: storage_tokens, ls1/ls2.gamma, one
    qkv.bias with its (masked) k part and bias_mask, SwiGLU w1/w2/w3, mask_token and the RoPE periods; the k
    bias is random, as the official model masks it."""
    g = torch.Generator().manual_seed(seed)
    swiglu = any(".mlp.fc1_g." in k for k in timm_sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in timm_sd.items():
        if k.endswith("attn.v_bias"):
            continue
        if k.endswith("attn.q_bias"):
            q, vb = v, timm_sd[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([q, torch.randn(q.shape, generator=g), vb])
            out[k.replace("q_bias", "qkv.bias_mask")] = torch.cat([torch.ones_like(q), torch.zeros_like(q),
                                                                   torch.ones_like(q)])
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if swiglu:
            k = k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.").replace("mlp.fc2.", "mlp.w3.")
        out[k] = v
    dim = timm_sd["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = periods.bfloat16()  # Meta's files: the periods as trained, in bfloat16
    return out


def test_dinov3_tokens_are_the_last_blocks_patch_tokens_after_the_final_norm() -> None:
    """Features = timm's forward_features (final norm) less the class token and the 4 registers, as a map, at
    square and non-square sizes (no position table: RoPE is computed for each grid)."""
    fx = _built("dinov3_vits16_random")
    assert (fx.stride, fx.dim, fx.model.num_prefix_tokens) == (16, 384, 5)
    assert fx.model.reg_token.shape[1] == 4 and fx.model.cls_token.shape[1] == 1
    for h, w in ((32, 48), (64, 32)):
        x = _images(2, h, w)
        out = fx(x)
        assert out.shape == (2, 384, h // 16, w // 16)
        with torch.no_grad():
            tokens = fx.model.forward_features((x - MEAN) / STD)
        assert tokens.shape[1] == 5 + (h // 16) * (w // 16)
        ref = tokens[:, 5:].reshape(2, h // 16, w // 16, 384).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, ref)


def test_dinov3_satellite_model_normalises_with_its_own_statistics() -> None:
    from stego_steps.backbone_specs import SAT493M_MEAN, SAT493M_STD

    sat = BACKBONES["dinov3_vitl16_sat"]
    assert (sat.mean, sat.std) == (SAT493M_MEAN, SAT493M_STD)
    assert timm.models.get_pretrained_cfg(sat.timm_name).mean == SAT493M_MEAN
    assert BACKBONES["dinov3_vitl16"].mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vitsplus16"])
def test_dinov3_loads_the_official_and_the_timm_layout(name: str, tmp_path: Path) -> None:
    ref = _built(name + "_random")
    sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.02 if k.endswith(("q_bias", "v_bias")) else v)
          for k, v in sd.items()}  # non-zero q/v biases, as in Meta's files
    timm_model = timm.create_model(ref.model.pretrained_cfg["architecture"], pretrained=False, num_classes=0)
    timm_model.load_state_dict(sd)
    x = _images(1, 48, 32)

    def features() -> torch.Tensor:
        with torch.no_grad():
            return timm_model.forward_features((x - MEAN) / STD)[:, 5:].reshape(1, 3, 2, -1).permute(0, 3, 1, 2)

    want = features()  # timm's layout: timm's float32 RoPE periods
    periods = timm_model.rope.periods.bfloat16()
    with torch.no_grad():
        timm_model.rope.periods.copy_(periods.float())
    want_official = features()  # Meta's layout: the file's bfloat16 periods, which the official model uses
    assert not torch.equal(want, want_official)
    official = official_dinov3_layout(sd, periods)
    assert "storage_tokens" in official and "blocks.0.attn.qkv.bias" in official
    for layout, state, expected in (("official", official, want_official), ("timm", sd, want)):
        path = tmp_path / f"{layout}.pth"
        torch.save(state, path)
        fx = build_backbone(name, weights=str(path))
        torch.testing.assert_close(fx(x), expected, rtol=1e-5, atol=1e-5, msg=layout)
        if layout == "official":
            assert torch.equal(fx.model.rope.periods, periods.float())
    # safetensors in timm's layout too (the hub's format)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(build_backbone(name, weights=str(tmp_path / "model.safetensors"))(x), want,
                               rtol=1e-5, atol=1e-5)


def test_dinov3_timm_files_without_qkv_bias_load_into_timms_plain_model(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0).eval()
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    fx = build_backbone("dinov3_vits16", weights=str(path))
    assert not any(k.endswith("q_bias") for k in fx.model.state_dict())
    x = _images(1, 32, 32)
    with torch.no_grad():
        want = plain.forward_features((x - MEAN) / STD)[:, 5:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(fx(x), want)


def test_weights_that_do_not_fit_dinov3_are_a_named_error(vits16: FeatureExtractor, tmp_path: Path) -> None:
    path = tmp_path / "dino_vits16.pth"
    torch.save(vits16.model.state_dict(), path)  # DINO v1 ViT-S/16: abs. position table, no registers
    with pytest.raises(bb.WeightsMismatch, match=r"do not fit backbone 'dinov3_vits16'.*missing.*unexpected"):
        build_backbone("dinov3_vits16", weights=str(path))


def test_missing_dinov3_file_says_how_to_get_the_gated_weights(tmp_path: Path) -> None:
    missing = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    with pytest.raises(FileNotFoundError) as info:
        check_weights("dinov3_vits16", str(missing))
    msg = str(info.value)
    assert "dinov3-downloads" in msg and "licence" in msg
    assert "resources/dinov3/dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in msg and "downloads:" in msg
    with pytest.raises(WeightsUnavailable, match="dinov3-downloads"):
        check_weights("dinov3_vitl16_sat", None)


# ----------------------------------------------------------------------------------------------------------
# Any timm model by name
# ----------------------------------------------------------------------------------------------------------


def test_timm_convnet_facts_come_from_the_model() -> None:
    last = backbone_info("timm/resnet18_random")
    assert (last["stride"], last["dim"], last["input_multiple"], last["prefix_tokens"]) == (32, 512, 32, 0)
    two = backbone_info("timm/resnet18_random", [2, -2])
    assert (two["stride"], two["dim"], two["input_multiple"], two["layers"]) == (8, 128 + 256, 16, (2, 3))
    assert backbone_info("timm/resnet18")["hf_hub_id"] == timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    fx = build_backbone("timm/resnet18_random", layers=[2, 3])
    out = fx(_images(2, 48, 32))
    assert out.shape == (2, 384, 6, 4)
    with pytest.raises(ValueError, match="not a multiple of the backbone stride 16"):
        fx(_images(1, 40, 32))
    with torch.no_grad():
        stage2 = fx.model.forward_intermediates((_images(2, 48, 32) - MEAN) / STD, indices=[2],
                                                intermediates_only=True)[0]
    torch.testing.assert_close(out[:, :128], stage2)


def test_timm_vit_reads_prefix_tokens_and_returns_normed_patch_tokens() -> None:
    info = backbone_info("timm/vit_tiny_patch16_224_random")
    assert (info["stride"], info["dim"], info["prefix_tokens"], info["vit"]) == (16, 192, 1, True)
    fx = build_backbone("timm/vit_tiny_patch16_224_random")
    x = _images(1, 32, 64)
    out = fx(x)
    assert out.shape == (1, 192, 2, 4)
    assert tuple(fx.mean.flatten().tolist()) == timm.models.get_pretrained_cfg("vit_tiny_patch16_224").mean
    with torch.no_grad():
        tokens = fx.model.forward_features((x - fx.mean) / fx.std)  # the model's own normalisation
    torch.testing.assert_close(out, tokens[:, 1:].reshape(1, 2, 4, 192).permute(0, 3, 1, 2))


def test_timm_named_errors(tmp_path: Path) -> None:
    with pytest.raises(bb.UnknownTimmModel, match="has no model 'resnet_nonexistent'"):
        backbone_info("timm/resnet_nonexistent")
    with pytest.raises(UserError, match="5 feature layers.*out of range"):
        backbone_info("timm/resnet18", [7])
    with pytest.raises(UserError, match="`layers` applies to `timm/<model>` backbones only"):
        backbone_info("dino_vits8", [1])
    other = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), other)
    with pytest.raises(bb.WeightsMismatch, match="do not fit backbone 'timm/resnet18'"):
        build_backbone("timm/resnet18", weights=str(other))


def test_timm_weights_file_with_classifier_loads(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        full = timm.create_model("resnet18", pretrained=False).eval()  # with its fc classifier
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    fx = build_backbone("timm/resnet18", weights=str(path))
    x = _images(1, 64, 64)
    with torch.no_grad():
        want = full.forward_features((x - MEAN) / STD)
    torch.testing.assert_close(fx(x), want)


def test_timm_names_become_safe_folder_names() -> None:
    from stego_steps.config import safe_name

    assert safe_name("timm/vit_base_patch16_clip_224.openai") == "timm-vit_base_patch16_clip_224-openai"
    assert safe_name("dinov3_vitb16") == "dinov3_vitb16"
