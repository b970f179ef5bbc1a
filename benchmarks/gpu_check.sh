#!/usr/bin/env bash
# Everything that needs a GPU, in ONE call of the device tool: 7 minutes or less on an H200
# (Python 3.12, torch 2.11, triton 3.6 preinstalled, no network). Run from anywhere:
#
#   bash benchmarks/gpu_check.sh        # results in $OUT (default benchmarks/results)
#
# Steps, each under `timeout` and the whole run under a 415 s budget (a hung step costs its own
# limit, never the rest):
#   1. install: pip install --no-deps --no-build-isolation -e .
#   2. tests, in 8 processes (pytest-xdist where installed, else pytest_shards.py): every
#      gpu-marked test (test_gpu.py, test_cuda_graphs.py, test_schedules_triton.py,
#      test_lr_find_gpu.py) and the ahead-of-time resource checks; then the suites that run
#      the compiled kernel on CUDA against the reference (kernel_vs_reference, master_weights,
#      grad_scaler, scheduled_hyperparameters, per_group, compile, optim_vs_torch), every row
#      of the tests' table of optimizers in each;
#   3. bench_kernel.py: kernel-only time (do_bench_cudagraph), S1 10.8M/76, GPT-2 small, 1.36B
#      fp32 and 256M bf16 + masters, each as % of a copy of the same bytes;
#   4. bench_host.py: host us per eager step, launch stubbed, both gradient patterns vs torch;
#   5. bench_compile.py: compile cost; 6. bench_lr_find.py: lr_find's sweep, eager and captured
#      in a CUDA graph, ms per step against a plain training loop; 7. `fused-lrs bench` S1-S4
#      with short loops.
# Files written to $OUT (8, the device tool's limit; at most 2 folders down): gpu_check.log (it
# opens with the environment), tests.xml, bench_kernel.json, bench_host.json,
# bench_compile.json, bench_lr_find.json, suite/bench.json,
# suite/bench.png.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
: > "$LOG"
BUDGET=${BUDGET:-415}
START=$(date +%s)

run() {  # run NAME SECONDS COMMAND...: at most SECONDS, and never past the budget
    local name=$1 limit=$2 left
    shift 2
    left=$(( BUDGET - ($(date +%s) - START) ))
    if (( left < 10 )); then
        echo "=== $name skipped: budget spent" | tee -a "$LOG"
        return
    fi
    (( left < limit )) && limit=$left
    echo "=== $name (limit ${limit}s, at $(( $(date +%s) - START ))s)" | tee -a "$LOG"
    timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
    echo "=== $name rc=$? at $(( $(date +%s) - START ))s" | tee -a "$LOG"
}

{
    date -u
    git rev-parse HEAD 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__,
'triton', triton.__version__, torch.cuda.get_device_name())"
} >> "$LOG" 2>&1

run install 60 python3 -m pip install -q --no-deps --no-build-isolation -e .
# pytest-xdist and pytest-timeout are not among the GPU machine's packages (no network there).
# Without xdist, benchmarks/pytest_shards.py runs 8 pytest processes side by side, each on whole
# optimizers (their kernels compile on 8 cores rather than one: ~125 kernels of 1-3 s each).
# The gpu-marked tests go first, so that a slow compiled suite cannot take their place.
tests() {  # tests NAME SECONDS JUNIT_XML FILES... (the XML: "" for none)
    local name=$1 limit=$2 xml=()
    [[ -n $3 ]] && xml=(--junitxml="$3")
    shift 3
    if python3 -c "import xdist" 2>/dev/null; then
        run "$name" "$limit" python3 -m pytest -q -rs -p no:cacheprovider -n 8 "${xml[@]}" "$@"
    else
        run "$name" "$limit" python3 benchmarks/pytest_shards.py --shards 8 "${xml[@]}" -- -rs "$@"
    fi
}
# The compiled suites' results are in the log (each shard's line; a failing shard's output).
tests tests_gpu 120 "$OUT/tests.xml" tests/test_gpu.py tests/test_cuda_graphs.py \
    tests/test_schedules_triton.py tests/test_lr_find_gpu.py tests/test_kernels_aot.py
tests tests_compiled 150 "" tests/test_kernel_vs_reference.py tests/test_master_weights.py \
    tests/test_grad_scaler.py tests/test_scheduled_hyperparameters.py tests/test_per_group.py \
    tests/test_compile.py tests/test_optim_vs_torch.py
run bench_kernel 70 python3 benchmarks/bench_kernel.py --rep 100 --out "$OUT/bench_kernel.json"
run bench_host 40 python3 benchmarks/bench_host.py --rounds 5 --steps 100 \
    --out "$OUT/bench_host.json"
run bench_compile 50 python3 benchmarks/bench_compile.py --out "$OUT/bench_compile.json"
# 3 models x 3 sides (plain loop, eager sweep, captured sweep) x 6 runs (1 warm-up) of 200 steps.
run bench_lr_find 40 python3 benchmarks/bench_lr_find.py --device cuda --capture --rounds 5 \
    --steps 200 --json "$OUT/bench_lr_find.json"
run suite 80 python3 -m fused_lrs bench --scenarios S1,S2,S3,S4 --steps 20 --out "$OUT/suite"
echo "=== done at $(( $(date +%s) - START ))s" | tee -a "$LOG"
grep -E "^(FAILED|ERROR)|passed|failed" "$LOG" | tail -20
