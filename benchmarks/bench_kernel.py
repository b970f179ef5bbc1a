"""Kernel-only time of one fused step on CUDA, as a share of a device-to-device copy of the same
bytes measured in the same run.

``triton.testing.do_bench_cudagraph`` captures ``opt.step()`` (one launch: tables are built
before, eagerly) in a CUDA graph and times its replays, so host gaps between launches do not
count (``bench_step.py``'s ``do_bench`` includes them at small sizes).

Cases (bytes a step must move per parameter: fp32 AdamW 28, bf16 with fp32 masters 30):
  * S1: nanoGPT's character-level GPT, 10.8M parameters in 76 tensors, fp32;
  * GPT-2 small: 124M in 148 tensors, fp32;
  * 1.3B: the LLaMA-shaped 1.36B list (219 tensors), fp32;
  * 256M bf16 + masters: one 2^28-element bf16 tensor with fp32 master weights and states.

    python benchmarks/bench_kernel.py --out bench-results/bench_kernel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fused_lrs import FusedAdamWScheduled  # noqa: E402
from fused_lrs import schedules as S  # noqa: E402
from fused_lrs.bench.scenarios import gpt2_small_shapes, gpt_shapes, llama_shapes  # noqa: E402

CASES = {
    "S1-10.8M-76": (lambda: gpt_shapes(6, 384, 65, 256), torch.float32, False, 28),
    "gpt2-small-124M-148": (gpt2_small_shapes, torch.float32, False, 28),
    "llama-1.36B-219": (llama_shapes, torch.float32, False, 28),
    "bf16-masters-256M": (lambda: [(2**28,)], torch.bfloat16, True, 30),
}


def bench_case(name, rep_ms):
    import triton.testing

    shapes_fn, dtype, masters, bytes_per_param = CASES[name]
    params = [torch.zeros(s, device="cuda", dtype=dtype).normal_(0, 0.02).requires_grad_()
              for s in shapes_fn()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n = sum(p.numel() for p in params)
    opt = FusedAdamWScheduled(params, lr=3e-4, weight_decay=0.1, master_weights=masters,
                              schedule=S.warmup(S.cosine(10_000), 100))
    opt.step()                                    # state, tables, compile, grid
    torch.cuda.synchronize()
    step_ms = triton.testing.do_bench_cudagraph(opt.step, rep=rep_ms)
    nbytes = n * bytes_per_param
    # The same bytes through a copy: read nbytes / 2, write nbytes / 2.
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench_cudagraph(lambda: dst.copy_(src), rep=rep_ms)
    backend = opt._cache.backend
    result = {"tensors": len(params), "params": n, "bytes": nbytes, "step_us": step_ms * 1e3,
              "copy_us": copy_ms * 1e3, "step_gbps": nbytes / step_ms / 1e6,
              "copy_gbps": nbytes / copy_ms / 1e6, "pct_of_copy": 100 * copy_ms / step_ms,
              "programs": backend.n_programs, "blocks_per_program": backend.blocks_per_program,
              "programs_per_sm": backend.programs_per_sm}
    del opt, params, backend
    src = dst = None        # the lambda above holds them; free before empty_cache
    torch.cuda.empty_cache()
    return result


def environment():
    import triton
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(),
            "commit": commit.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                             time.gmtime())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rep", type=float, default=200, help="ms of replays per timing")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    report = {"environment": environment(), "results": {}}
    for name in args.cases.split(","):
        r = report["results"][name] = bench_case(name, args.rep)
        print(f"{name:22s} {r['step_us']:9.1f} us  {r['step_gbps']:7.0f} GB/s  "
              f"{r['pct_of_copy']:5.1f}% of copy ({r['copy_gbps']:.0f} GB/s)  "
              f"{r['programs']} programs x {r['blocks_per_program']} blocks, "
              f"{r['programs_per_sm']}/SM", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
