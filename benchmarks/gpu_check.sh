#!/usr/bin/env bash
# One call on a lent GPU machine (see ../shared/GPU.md): build for Hopper, run the GPU tests,
# compute-sanitizer on the CUDA kernels' GPU tests, the benchmarks, and collect everything
# under $OUT (logs, JSON, markdown, PNG). Usage from the repo root:  bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/kdfast-gpu}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$OUT/build.log"
python3 -m kdfast.cli info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/info.txt"
python3 -m pytest -q -m gpu tests 2>&1 | tail -40 | tee "$OUT/gpu-tests.log"
# memcheck + racecheck on the GPU tests of each CUDA op family (small shapes)
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --print-limit 20 python3 -m pytest -q -x -m gpu tests \
    -k "gpu and not low_precision" 2>&1 | tail -15 | tee "$OUT/sanitizer-$tool.log"
done
for suite in losses intermediate bilstm etd; do
  python3 -m kdfast.cli bench "$suite" --out "$OUT" 2>&1 | tail -30 | tee "$OUT/bench-$suite.log"
done
ls -la "$OUT"
