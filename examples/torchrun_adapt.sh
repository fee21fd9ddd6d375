#!/usr/bin/env bash
# Distributed supernet adaptation with DDP: 2 processes on this machine (gloo on CPU, nccl on GPUs).
# Every rank samples the same config each step; rank 0 alone writes files. --batch is per process.
#   bash examples/torchrun_adapt.sh [NPROC] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${1:-2}
OUT=${2:-runs/ddp_adapt}
.venv/bin/torchrun --standalone --nproc_per_node "$NPROC" -m sparsesearch adapt \
    --config-file examples/adapt.yaml --steps 40 --batch 4 --val-samples 16 --out "$OUT" --overwrite
# a killed run continues where it stopped, with the same losses as an uninterrupted one:
#   .venv/bin/torchrun --standalone --nproc_per_node "$NPROC" -m sparsesearch adapt --out "$OUT" --resume
