#!/usr/bin/env bash
# GPU benchmark (issue 9): training images/s with and without mixed precision, and inference
# latency, for the small CNN and ResNet-50 at 224 px; about five minutes on one GPU. Writes
# bench/results/gpu.json, which bench/report.py puts beside the CPU results, labelled with the
# device. Without a GPU (CI, this project's 2-core machine) it says so and exits 0.
#
# Usage: bench/gpu.sh [--quick]      (PYTHON=... to use another interpreter than .venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "bench/gpu.sh: no GPU here (no nvidia-smi on PATH); nothing measured, bench/results/gpu.json left as it is."
  exit 0
fi
if ! nvidia-smi -L >/dev/null 2>&1 || [ -z "$(nvidia-smi -L 2>/dev/null)" ]; then
  echo "bench/gpu.sh: nvidia-smi finds no usable GPU; nothing measured, bench/results/gpu.json left as it is."
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# the Python side checks that TensorFlow itself sees the GPU (a CPU-only build does not)
exec timeout "${CXRFLOW_GPU_BENCH_TIMEOUT:-900}" "$PY" bench/gpu.py "$@"
