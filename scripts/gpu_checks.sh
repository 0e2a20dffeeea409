#!/usr/bin/env bash
# Run ON the GPU machine (device `run`, carry: [".whl", "Testing/Benchmarks/data"]) after scripts/gpu_prepare.sh:
#   bash scripts/gpu_checks.sh
# 1. the CUDA tests (Testing/Python/test_cuda.py and the device/precision tests);
# 2. issue 13's GPU rows: click latency (goal < 50 ms) and a 300-slice propagation at 512 px (goal < 3 s), on the
#    released-model path (a MedSAM2-shaped hiera-t file, random weights: timing only), at bf16 (auto) and fp32.
# Writes logs and JSON under $OUT (default ./gpu_out). About 3-5 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/MedVLSAM2Slicer PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider Testing/Python/test_cuda.py Testing/Python/test_device_and_cache.py \
  2>&1 | tee "$OUT/cuda_tests.log"
status=${PIPESTATUS[0]}
cd Testing/Benchmarks
for precision in auto fp32; do
  python3 interactive.py --device cuda --precision "$precision" --model /tmp/medsam2_shaped.pt --write-medsam2-shaped \
    --image data/head_ct.npz --window brain --resample-slices 300 --latency-clicks 50 \
    --out "$OUT/gpu_300_$precision.json" 2>&1 | tail -n 40
done
exit "$status"
