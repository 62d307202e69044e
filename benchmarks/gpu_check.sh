#!/usr/bin/env bash
# GPU checks of issue 17, ready to run on one H100/H200 (random weights: timings need no checkpoint).
# About 3-6 minutes. From the repository root, with the project installed:
#     bash benchmarks/gpu_check.sh [PRESET]      # default wan2.1-t2v-1.3b; 480p x 81 frames (latents 21x60x104)
# 1. the training step alone (benchmarks/train_step.py --synthetic): bf16, forward + backward + AdamW, with
#    and without activation checkpointing: step time, video tokens/s, MFU (989 TFLOPS bf16 dense), peak memory;
# 2. one sampling step (benchmarks/sample_step.py): diffusers' WanTransformer3DModel vs ours, references off
#    (residual stream in bf16 as diffusers keeps it, and in fp32 as Wan's code and our default do) and on, with
#    the largest output difference to diffusers.
# Paste both tables into BENCHMARKS.md with the GPU model, driver and date (nvidia-smi prints them first).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET="${1:-wan2.1-t2v-1.3b}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo
echo "## Training step ($PRESET, bf16, 480p x 81 frames, 1 identity x 5 views + MFI)"
python -m benchmarks.train_step --synthetic --preset "$PRESET" --device cuda --dtype bf16 --steps 10 --warmup 3
echo
echo "## Sampling step ($PRESET, bf16, 480p x 81 frames)"
python -m benchmarks.sample_step --preset "$PRESET" --device cuda --dtype bf16 --steps 10 --warmup 3
