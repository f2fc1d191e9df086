"""Extraction images/s against the bare backbone forward on in-memory batches of the same size and
precision (the limit), side by side in one run.

    python bench/extract.py                                   # ViT-S/8 (random weights) on CPU, 96 images at 64²
    python bench/extract.py --device cuda --backbone dino_vitb8_random --res 224 --n 2048 --batch 64 --workers 8

For each precision: `extract` of a split of rendered demo scenes (read, decode, resize in DataLoader workers,
forward, write to HDF5 in the writer thread) against `backbone(x)` on the same batches already in memory as
float tensors on the device. Prints a table and writes results/bench/extract.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from stego_steps import feature_extraction, images, validate
from stego_steps.backbones import build_backbone
from stego_steps.index import read_index


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_forward(net: torch.nn.Module, batches: list[torch.Tensor], device: str, precision: str) -> float:
    """Seconds of the forward passes alone over batches already on the device."""
    feature_extraction.features_of(net, batches[0], device, precision)  # warm-up
    sync(device)
    start = time.perf_counter()
    for x in batches:
        dtype = feature_extraction.PRECISIONS[precision]
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            net(x)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dino_vits8_random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch compute threads")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--work", type=Path, default=Path("results/bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work / "extract_scenes"
    settings = {"root": str(work / "data"), "five_crop": False, "crop_ratio": 0.5,
                "generator": {"n_train": args.n, "n_val": 1, "height": 240, "width": 320, "seed": 0}}
    validate.write_index("demo", settings, work / "index")
    index = read_index(work / "index" / "train.csv")
    classes = json.loads((work / "index" / "classes.json").read_text())
    net = build_backbone(args.backbone, seed=0).to(args.device)
    imgs = [torch.from_numpy(images.transform_image(images.read_image(p), args.res)) for p in index["image"]]
    batches = [feature_extraction.to_float(torch.stack(imgs[i:i + args.batch])).to(args.device)
               for i in range(0, len(imgs), args.batch)]
    rows = []
    for precision in args.precisions:
        out = work / f"{precision}.h5"
        kw = dict(backbone=args.backbone, weights=None, res=args.res, evaluation=False, batch_size=args.batch,
                  workers=args.workers, device=args.device, precision=precision, split="train")
        feature_extraction.extract(index.iloc[: 2 * args.batch], classes, work / "warmup.h5", **kw)  # warm-up, workers
        bare = bare_forward(net, batches, args.device, precision)
        sync(args.device)
        start = time.perf_counter()
        feature_extraction.extract(index, classes, out, **kw)
        sync(args.device)
        full = time.perf_counter() - start
        rows.append({"precision": precision, "extract_images_per_s": args.n / full,
                     "bare_forward_images_per_s": args.n / bare, "ratio": bare / full})
        for path in (out, work / "warmup.h5"):
            path.unlink()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    table = pd.DataFrame(rows)
    print(f"{args.backbone} on {device}: {args.n} images at {args.res}², batch {args.batch}, {args.workers} "
          f"DataLoader workers, torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    args.work.mkdir(parents=True, exist_ok=True)
    table.assign(backbone=args.backbone, device=device, res=args.res, batch=args.batch, n=args.n).to_csv(
        args.work / "extract.csv", index=False)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
