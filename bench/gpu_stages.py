"""Every model stage on one device, timed, with CPU cross-checks: the GPU check of the pipeline.

    python bench/gpu_stages.py --out /tmp/gpu --n-train 512 --n-val 64          # on a GPU machine
    python bench/gpu_stages.py --out /tmp/cpu --n-train 16 --n-val 4 --steps 5  # a quick CPU rehearsal

Renders demo scenes, then per backbone: extract (train at 224, val at 320 with flips), KNN, train the head,
K-Means on codes and on backbone features, the linear probe and predict, all on `--device`; prints a table of
wall times and throughputs, the largest CPU-vs-device differences of the backbone features and of the loss,
and the measured ratio of a STEGO step from cached features to a step that runs the backbone twice (what the
official code does). The CRF is CPU-only and is measured by bench/stages.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stego_steps import feature_extraction, head_training, kmeans, linear_probe, loss, validate
from stego_steps.backbones import build_backbone
from stego_steps.codes import predict_codes
from stego_steps.index import read_index
from stego_steps.store import FeatureStore

TRAIN = {"code_dim": 90, "dropout": 0.1, "lr": 5e-4, "checkpoint_every": 10**9, "samples": 11, "negatives": 5,
         "spatial_centering": True, "zero_clamp": True, "weights": {"self": 0.1, "knn": 1.0, "random": 0.154},
         "shifts": {"self": 0.12, "knn": 0.2, "random": 1.0}, "neighbours": 7, "seed": 0}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(on: str, fn, *args, **kwargs):
    sync(on)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(on)
    return out, time.perf_counter() - start


def knn_table(pooled: np.ndarray, k: int) -> np.ndarray:
    try:
        from stego_steps.knn import knn_table as faiss_table

        return faiss_table(pooled, k)
    except ImportError:  # no FAISS on this machine: the same exact cosine top-k with torch
        x = torch.nn.functional.normalize(torch.from_numpy(pooled).double(), dim=1)
        sims = x @ x.T
        sims.fill_diagonal_(2.0)  # self first
        return sims.topk(k + 1, dim=1).indices.numpy()


def feature_agreement(name: str, index: pd.DataFrame, device: str) -> float:
    """Largest relative difference between CPU and device features of two training images."""
    from stego_steps import images

    imgs = torch.stack([torch.from_numpy(images.transform_image(images.read_image(p), 224))
                        for p in index["image"][:2]])
    x = feature_extraction.to_float(imgs)
    cpu = build_backbone(name, seed=0)(x)
    dev = build_backbone(name, seed=0).to(device)(x.to(device)).cpu()
    return float((cpu - dev).abs().max() / cpu.abs().max())


def loss_agreement(device: str) -> float:
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(8, 32, 28, 28, generator=g) for _ in range(4)]
    kw = dict(coords1=loss.random_coords(8, 11, g), coords2=loss.random_coords(8, 11, g),
              perms=[loss.negative_perm(8, g) for _ in range(5)], weights=TRAIN["weights"], shifts=TRAIN["shifts"])
    cpu = loss.stego_loss(*args, **kw)["total"]
    dev = loss.stego_loss(*[a.to(device) for a in args],
                          **{**kw, "coords1": kw["coords1"].to(device), "coords2": kw["coords2"].to(device),
                             "perms": [p.to(device) for p in kw["perms"]]})["total"].cpu()
    return float((cpu - dev).abs() / cpu.abs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbones", nargs="+", default=["dino_vits8_random", "dino_vitb8_random"])
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 throughout, as on CPU
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    settings = {"root": str(args.out / "data"), "five_crop": False, "crop_ratio": 0.5,
                "generator": {"n_train": args.n_train, "n_val": args.n_val, "height": 240, "width": 320, "seed": 0}}
    _, t = timed("cpu", validate.write_index, "demo", settings, args.out / "index")
    rows.append({"stage": "prepare (CPU)", "backbone": "-", "seconds": t, "throughput": args.n_train / t,
                 "unit": "scenes/s"})
    classes = json.loads((args.out / "index" / "classes.json").read_text())
    index = {s: read_index(args.out / "index" / f"{s}.csv") for s in ("train", "val")}
    checks = {"loss rel. diff CPU vs device": loss_agreement(dev)}
    for name in args.backbones:
        checks[f"{name} features rel. diff CPU vs device"] = feature_agreement(name, index["train"], dev)
        base = args.out / name
        for split, res in (("train", 224), ("val", 320)):
            _, t = timed(dev, feature_extraction.extract, index[split], classes, base / f"{split}.h5", backbone=name,
                         weights=None, res=res, evaluation=split == "val", batch_size=64, workers=8, device=dev,
                         split=split)
            n = len(index[split]) * (2 if split == "val" else 1)
            rows.append({"stage": f"extract {split} ({res}²)", "backbone": name, "seconds": t,
                         "throughput": n / t, "unit": "images/s"})
        store = FeatureStore(base / "train.h5", device=dev)
        table, t = timed("cpu", knn_table, store.read("pooled"), 7)
        rows.append({"stage": "knn (CPU)", "backbone": name, "seconds": t, "throughput": store.n / t,
                     "unit": "queries/s"})
        s = {**TRAIN, "batch_size": args.batch, "steps": args.steps}
        (head, log), t = timed(dev, head_training.train, store, table, s, device=dev)
        step_s = t / args.steps
        rows.append({"stage": f"train (batch {args.batch})", "backbone": name, "seconds": t,
                     "throughput": 1 / step_s, "unit": "steps/s"})
        # What one official step costs on top: two backbone forwards of the batch (anchors and positives).
        net = build_backbone(name, seed=0).to(dev)
        x = torch.rand(args.batch, 3, 224, 224, device=dev)
        timed(dev, net, x)
        _, fwd = timed(dev, lambda net=net, x=x: [net(x) for _ in range(5)])
        ratio = (step_s + 2 * fwd / 5) / step_s
        checks[f"{name}: step with 2 backbone forwards / cached step"] = ratio
        kw = dict(iterations=200, batch_images=32, init_images=64, n_init=3, seed=0, device=dev)
        _, t = timed(dev, kmeans.spherical_kmeans, store, head.to(dev), int(store.attrs["n_classes"]), **kw)
        rows.append({"stage": "cluster (head codes)", "backbone": name, "seconds": t, "throughput": 600 / t,
                     "unit": "iterations/s"})
        _, t = timed(dev, kmeans.spherical_kmeans, store, lambda f: f, int(store.attrs["n_classes"]), **kw)
        rows.append({"stage": "backbone_kmeans", "backbone": name, "seconds": t, "throughput": 600 / t,
                     "unit": "iterations/s"})
        _, t = timed(dev, linear_probe.train_probe, store, head, int(store.attrs["n_classes"]), steps=args.steps,
                     batch_size=args.batch, lr=5e-3, seed=0, device=dev)
        rows.append({"stage": "linear probe", "backbone": name, "seconds": t, "throughput": args.steps / t,
                     "unit": "steps/s"})
        store.close()
        with FeatureStore(base / "val.h5", max_memory_gb=0) as val:
            _, t = timed(dev, predict_codes, val, head, base / "codes.h5", device=dev)
        rows.append({"stage": "predict (flip TTA)", "backbone": name, "seconds": t, "throughput": args.n_val / t,
                     "unit": "images/s"})
    device_name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    print(f"device: {device_name}; torch {torch.__version__}; train {args.n_train}, val {args.n_val} scenes")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for key, value in checks.items():
        print(f"{key}: {value:.3g}")


if __name__ == "__main__":
    main()
