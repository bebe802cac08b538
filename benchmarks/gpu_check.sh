#!/usr/bin/env bash
# Everything GPU-specific in one run, for a machine with a CUDA GPU and torch installed
# (no package index needed beyond what is there). Writes logs and JSON under ${OUT:-gpu-out}.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/info.txt"
import torch, moekit.kernels as k
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for dt in (torch.float32, torch.bfloat16):
    print(dt, k.available_backends("cuda", dt))
PY
# 1. correctness on the device: gpu-marked tests, plus the layer/peer suites run on CUDA tensors
python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/pytest_gpu.txt"
# 2. speed and memory beside transformers' blocks and a dense FFN, full-size shapes, bf16
python3 benchmarks/bench_layer.py --device cuda --json "$out/bench_layer_cuda.json" 2>&1 | tee "$out/bench_layer_cuda.txt"
python3 benchmarks/bench_layer.py --device cuda --balanced --shapes olmoe,qwen3 \
    --json "$out/bench_layer_cuda_balanced.json" 2>&1 | tee "$out/bench_layer_cuda_balanced.txt"
