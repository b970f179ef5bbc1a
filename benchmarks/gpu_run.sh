#!/usr/bin/env bash
# Everything that needs a GPU, in two calls of the device tool (each well under 10 minutes):
#   bash benchmarks/gpu_run.sh tests   # install; gpu-marked tests and the compiled suites
#   bash benchmarks/gpu_run.sh bench   # install; step and compile-cost benchmarks
#   bash benchmarks/gpu_run.sh suite S1,S3   # install; `fused-lrs bench` on those scenarios
#   bash benchmarks/gpu_run.sh suite S2,S4   #   (split so that each call stays under 10 min)
# Logs and JSON go to $OUT (default benchmarks/results); commit them under benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
case "${1:-tests}" in
  tests)
    # Files that need hypothesis or transformers (absent on the GPU machines) are left out.
    timeout 540 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py \
        tests/test_cuda_graphs.py tests/test_compile.py tests/test_kernel_vs_reference.py \
        tests/test_optim_vs_torch.py 2>&1 | tee "$OUT/gpu_tests.log" ;;
  bench)
    timeout 300 python3 benchmarks/bench_step.py --out "$OUT/bench_step.json" 2>&1 \
        | tee "$OUT/bench_step.log"
    timeout 240 python3 benchmarks/bench_compile.py --out "$OUT/bench_compile.json" 2>&1 \
        | tee "$OUT/bench_compile.log" ;;
  suite)
    # The issue-7 suite: bench.json (and bench.png where matplotlib is installed) per call.
    scenarios=${2:-S1,S2,S3,S4}
    dir="$OUT/bench-${scenarios//,/-}"
    timeout 560 python3 -m fused_lrs bench --scenarios "$scenarios" --out "$dir" 2>&1 \
        | tee "$dir.log" ;;
  *) echo "usage: $0 tests|bench|suite [S1,S2,S3,S4]"; exit 2 ;;
esac
