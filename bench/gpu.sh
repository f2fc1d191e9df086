#!/usr/bin/env bash
# The GPU benchmarks in one go (under 8 minutes on an H200-class card), with the card's name:
#   bash bench/gpu.sh            # from the repository root, with the project's environment active
# 1. extraction (ViT-B/8, 224², batch 64, 8 DataLoader workers) against the bare forward, float32 and bfloat16;
# 2. head training from a store streamed from disk against the store held on the GPU (ViT-B/8 shapes);
# 3. every model stage on the GPU with CPU cross-checks and the ratio to the official recipe's step;
# 4. the exact KNN search on the GPU (FAISS) at up to 200,000 crops, and the COCO-Stuff estimate.
# Tables go to stdout and CSV files to results/bench/; the whole output also to results/bench/gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
mkdir -p results/bench
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/card: /'
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo; echo "== extraction vs bare forward (dino_vitb8_random, 224², batch 64)"
  timeout 180 python bench/extract.py --device cuda --backbone dino_vitb8_random --res 224 --n 2048 --batch 64 \
    --workers 8 --threads 8 --precisions float32 bfloat16 2>/dev/null
  echo; echo "== training steps/s: streamed from disk vs held on the GPU (ViT-B/8 shapes, batch 32)"
  timeout 150 python bench/streaming.py --device cuda --dim 768 --n 1500 --batch 32 --steps 200 --rounds 2 \
    --threads 8 2>/dev/null
  echo; echo "== every model stage on the GPU (bench/gpu_stages.py, ViT-B/8)"
  timeout 150 python bench/gpu_stages.py --out /tmp/stego-gpu-bench --n-train 512 --n-val 64 --steps 200 \
    --backbones dino_vitb8_random 2>/dev/null
  echo; echo "== exact KNN search with faiss-gpu (768 channels), extrapolated to COCO's 488,510 crops"
  timeout 90 python bench/knn.py --gpu --n 50000 100000 200000 2>/dev/null \
    || echo "not measured: this FAISS build has no GPU support (install faiss-gpu)"
  echo; echo "== COCO-Stuff end to end from these rates: rerun bench/coco_estimate.py with the ViT-B/8 figures above"
  python bench/coco_estimate.py
} 2>&1 | tee results/bench/gpu.txt
