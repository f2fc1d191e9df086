"""Are this workflow's DINOv3 features DINOv3's? Compare them with Meta's own implementation.

    python bench/dinov3_equivalence.py /path/to/dinov3-checkout [--models ...] [--sizes 224x224 320x480]

The official code is loaded at run time from the checkout given (github.com/facebookresearch/dinov3; nothing of
it is copied here). For each model, the official network is built without pretrained weights, its tensors are
replaced by seeded random values (also the layer-scale gammas, the q/v biases and the masked k bias, so that
every block matters), and its state dict is saved in the official layout, the layout of Meta's `.pth` files.
That file is then loaded by `stego_steps.backbones.build_backbone(<name>, weights=file)`, and the features this
workflow extracts (patch tokens of the last block after the final norm, class and register tokens dropped, as a
map) are compared with the official `forward_features(x)["x_norm_patchtokens"]` on the same images, at each
input size. Prints and writes a CSV of the maximum absolute difference (float32; TF32 off on a GPU). As a
control, the CSV also has the difference of timm's model loaded through timm's filter alone, which recomputes
the RoPE periods in float32 where Meta's files hold them rounded to bfloat16 (the file's are kept here).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stego_steps.backbones import BACKBONES, build_backbone  # noqa: E402

# Our name → the official hub function and its keyword arguments (the satellite ViT-L unties a norm).
OFFICIAL = {
    "dinov3_vits16": ("dinov3_vits16", {}),
    "dinov3_vitsplus16": ("dinov3_vits16plus", {}),
    "dinov3_vitb16": ("dinov3_vitb16", {}),
    "dinov3_vitl16": ("dinov3_vitl16", {}),
    "dinov3_vitl16_sat": ("dinov3_vitl16", {"weights": "SAT493M"}),
}


def official_model(checkout: Path, name: str) -> torch.nn.Module:
    """The official network of `name`, built from the checkout's code without downloading anything."""
    sys.path.insert(0, str(checkout))
    hub = importlib.import_module("dinov3.hub.backbones")
    function, kwargs = OFFICIAL[name]
    if kwargs.get("weights") == "SAT493M":
        kwargs = {**kwargs, "weights": hub.Weights.SAT493M}
    return getattr(hub, function)(pretrained=False, **kwargs)


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values for every learnt tensor of the official model (buffers such as the RoPE periods and
    the k-bias mask keep theirs); returns the state dict in the official layout."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if key.endswith("gamma"):  # layer scale (1e-5 at init would make every block a no-op)
                p.copy_(0.3 + 0.1 * noise)
            elif "norm" in key and key.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:  # weights, biases (the masked k bias too), class and storage tokens
                p.copy_(0.05 * noise)
        # Meta's files hold the RoPE periods rounded to bfloat16 (as trained); the official model uses them.
        model.rope_embed.periods.copy_(model.rope_embed.periods.bfloat16().float())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["rope_embed.periods"] = state["rope_embed.periods"].bfloat16()
    return state


def timm_as_is(name: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """timm's model with the file through timm's own filter and nothing else (RoPE periods recomputed in float32):
    the control that shows what keeping the file's periods changes."""
    import timm
    from timm.models.eva import checkpoint_filter_fn

    model = timm.create_model(BACKBONES[name].timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    model.load_state_dict(checkpoint_filter_fn(dict(state), model))
    return model.eval()


def compare(checkout: Path, name: str, sizes: list[tuple[int, int]], seed: int, device: str,
            folder: Path) -> list[dict]:
    spec = BACKBONES[name]
    official = official_model(checkout, name)
    state = randomise(official, seed)
    path = folder / f"{spec.official_file or name + '.pth'}"
    torch.save(state, path)
    official = official.to(device).eval()
    ours = build_backbone(name, weights=str(path)).to(device)
    plain = timm_as_is(name, state).to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    rows = []
    for h, w in sizes:
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed + h * 7 + w)).to(device)
        with torch.no_grad():
            tokens = official.forward_features((x - mean) / std)["x_norm_patchtokens"]
            want = tokens.reshape(2, h // 16, w // 16, -1).permute(0, 3, 1, 2).float()
            got = ours(x)
            control = plain.forward_features((x - mean) / std)[:, plain.num_prefix_tokens:]
            control = control.reshape(2, h // 16, w // 16, -1).permute(0, 3, 1, 2)
        assert got.shape == want.shape, (got.shape, want.shape)
        diff = (got - want).abs().max().item()
        rows.append({"model": name, "height": h, "width": w, "grid": f"{h // 16}x{w // 16}", "channels": got.shape[1],
                     "max_abs_diff": f"{diff:.3g}", "max_abs_feature": f"{want.abs().max().item():.3g}",
                     "timm_float32_periods_max_abs_diff": f"{(control - want).abs().max().item():.3g}",
                     "device": device, "seed": seed})
        print(", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/facebookresearch/dinov3")
    parser.add_argument("--models", nargs="+", default=list(OFFICIAL), choices=list(OFFICIAL))
    parser.add_argument("--sizes", nargs="+", default=["224x224", "320x480"],
                        help="input sizes HxW, multiples of 16 (default: the native 224² and a non-square one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "dinov3_equivalence.csv")
    args = parser.parse_args(argv)
    if not (args.checkout / "dinov3" / "hub" / "backbones.py").is_file():
        parser.error(f"{args.checkout} is not a checkout of facebookresearch/dinov3 (no dinov3/hub/backbones.py)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += compare(args.checkout, name, sizes, args.seed, args.device, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    worst = max(float(r["max_abs_diff"]) for r in rows)
    print(f"maximum absolute difference over {len(rows)} comparisons: {worst:.3g} "
          f"({time.perf_counter() - t0:.0f} s); wrote {args.out}")


if __name__ == "__main__":
    main()
