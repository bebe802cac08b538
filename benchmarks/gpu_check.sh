#!/usr/bin/env bash
# Everything GPU-specific in one run, for a machine with a CUDA GPU, torch and triton installed
# (no package index needed). The whole run stops within ${BUDGET:-290} seconds: each step gets its
# own limit, cut to what is left, most valuable first. Writes logs and JSON under ${OUT:-gpu-out}.
#   bash benchmarks/gpu_check.sh              # everything
#   QUICK=1 bash benchmarks/gpu_check.sh      # triton tests and benchmark only
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   # another interpreter than python3
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
py=${PYTHON:-python3}
status=0
budget=${BUDGET:-290}
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.txt, remember failures
    local name=$1 limit=$2; shift 2
    local left=$((budget - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped, the ${budget}s budget is spent" | tee "$out/$name.txt"; status=1; return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (limit ${limit}s): $*" | tee "$out/$name.txt"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$out/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}
step info 30 "$py" - <<'PY'
import torch, moekit.kernels as k
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
try:
    import triton
    print("triton", triton.__version__)
except ImportError as err:
    print("triton not importable:", err)
from moekit.kernels.moe_triton import triton_status
for dt in (torch.float32, torch.bfloat16):
    print(dt, k.available_backends("cuda", dt), "| moe_triton:", triton_status("cuda", dt))
PY
# 1. correctness on the device: the Triton kernels first (real sizes, bf16, CUDA graphs, inductor)
step pytest_triton_gpu 120 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_moe_triton.py
# 2. speed, memory, decode bandwidth of the Triton kernels beside torch._grouped_mm and dense
step bench_triton 110 "$py" benchmarks/bench_triton.py --json "$out/bench_triton.json"
if [ -z "${QUICK:-}" ]; then
    # 3. the other gpu-marked tests (layers, peers)
    step pytest_gpu 60 "$py" -m pytest -q -p no:cacheprovider -m gpu tests --ignore=tests/kernels/test_moe_triton.py
    # 4. the layer benchmark (moekit's backends beside transformers' blocks and a dense FFN)
    if [ -f benchmarks/bench_layer.py ]; then
        step bench_layer 120 "$py" benchmarks/bench_layer.py --device cuda --json "$out/bench_layer_cuda.json"
    else
        echo "benchmarks/bench_layer.py is not in this checkout; layer benchmark skipped" | tee "$out/bench_layer.txt"
    fi
fi
exit $status
