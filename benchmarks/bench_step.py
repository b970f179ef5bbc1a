"""One optimizer step, fused_lrs against torch: fp32 AdamW with warmup-cosine.

Sizes: single tensors of 1M, 16M, 256M and 1B parameters, and the GPT-2-small list (148 tensors,
124M parameters). Providers:
  * fused_lrs      FusedAdamWScheduled: schedule + update in one launch;
  * torch_fused    torch.optim.AdamW(fused=True), tensor lr, + the torch scheduler each step;
  * torch_foreach  torch.optim.AdamW(foreach=True) + the torch scheduler each step.

Per provider and size:
  * gpu_ms      triton.testing.do_bench median of one step (warm-up first, L2 flushed);
  * wall_ms     wall clock per step over a loop of 200 steps with one sync at the end, so host
                overhead counts when the GPU is faster than the host;
  * host_us     median host time to issue one step (no sync): the launch-bound cost;
  * gbps        28 bytes per parameter (read p, g, m, v; write p, m, v) / gpu_ms;
  * pct_copy    gbps against a device-to-device copy measured in the same run.

    python benchmarks/bench_step.py --out benchmarks/results/bench_step.json
    python benchmarks/bench_step.py --device cpu --quick      # smoke test, interpreter, no GPU

This is the single-step micro benchmark; ``fused-lrs bench`` (fused_lrs/bench) compares whole
scenarios against more baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from fused_lrs.bench.scenarios import gpt2_small_shapes

BYTES_PER_PARAM = 28
# bf16 parameters and gradients, fp32 master, exp_avg, exp_avg_sq: read 2+2+4+4+4, write 2+4+4+4.
BYTES_PER_PARAM_MASTER = 30
SIZES = {"1M": [2**20], "16M": [2**24], "256M": [2**28], "1B": [2**30]}


def make_params(shapes, device, dtype=torch.float32):
    params = [torch.zeros(s, device=device, dtype=dtype).normal_(0, 0.02).requires_grad_()
              for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def fused_lrs(params, warmup_steps, total, **kwargs):
    from fused_lrs import FusedAdamWScheduled
    from fused_lrs.schedules import cosine, warmup

    opt = FusedAdamWScheduled(params, lr=3e-4, weight_decay=0.1, impl="triton",
                              schedule=warmup(cosine(total - warmup_steps), warmup_steps),
                              **kwargs)
    return opt.step


def torch_adamw(params, warmup_steps, total, **kwargs):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    lr = torch.tensor(3e-4, device=params[0].device) if kwargs.get("fused") else 3e-4
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1, **kwargs)
    sched = SequentialLR(opt, [LinearLR(opt, 1e-8, 1.0, warmup_steps),
                               CosineAnnealingLR(opt, total - warmup_steps)], [warmup_steps])

    def step():
        opt.step()
        sched.step()
    return step


PROVIDERS = {
    "fused_lrs": fused_lrs,
    "torch_fused": lambda p, w, t: torch_adamw(p, w, t, fused=True),
    "torch_foreach": lambda p, w, t: torch_adamw(p, w, t, foreach=True),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def gpu_ms(step, device, quick):
    if device.type == "cuda":
        from triton.testing import do_bench
        return do_bench(step, warmup=25 if quick else 100, rep=100 if quick else 500,
                        return_mode="median")
    times = []
    for _ in range(3 if quick else 20):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def loop_ms_and_host_us(step, device, steps):
    sync(device)
    host = []
    t0 = time.perf_counter()
    for _ in range(steps):
        h = time.perf_counter()
        step()
        host.append((time.perf_counter() - h) * 1e6)
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / steps, statistics.median(host)


def copy_gbps(device, nbytes, quick):
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / (gpu_ms(lambda: dst.copy_(src), device, quick) * 1e-3) / 1e9


def environment(device):
    import platform
    import subprocess

    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = ""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    cases = ({"64K": [2**16], "gpt2-layer": gpt2_small_shapes()[2:14]} if args.quick
             else {**SIZES, "gpt2-small": gpt2_small_shapes()})
    copy = copy_gbps(device, 2**30 if device.type == "cuda" else 2**24, args.quick)
    results = {"environment": environment(device), "copy_gbps": copy, "cases": []}
    print(f"{results['environment']}\ndevice-to-device copy: {copy:.0f} GB/s")
    print(f"{'case':>11} {'provider':>16} {'params':>11} {'gpu_ms':>9} {'wall_ms':>9} "
          f"{'host_us':>8} {'GB/s':>7} {'%copy':>6}")
    runs = [(name, shapes, provider, make, torch.float32, BYTES_PER_PARAM)
            for name, shapes in cases.items() for provider, make in PROVIDERS.items()]
    # Mixed precision: bf16 parameters with fp32 master weights, in the same single launch.
    master_size = [2**16] if args.quick else [2**28]
    runs.append(("256M-bf16" if not args.quick else "64K-bf16", master_size, "fused_lrs+master",
                 lambda p, w, t: fused_lrs(p, w, t, master_weights=True), torch.bfloat16,
                 BYTES_PER_PARAM_MASTER))
    for name, shapes, provider, make, dtype, bytes_per_param in runs:
        params = make_params(shapes, device, dtype)
        n = sum(p.numel() for p in params)
        try:
            step = make(params, 100, 1000)
            step()                                      # state, tables, compile
            ms = gpu_ms(step, device, args.quick)
            wall, host = loop_ms_and_host_us(step, device, 5 if args.quick else 200)
        except torch.OutOfMemoryError:
            print(f"{name:>11} {provider:>16} out of memory")
            continue
        finally:
            del params
            if device.type == "cuda":
                torch.cuda.empty_cache()
        gbps = bytes_per_param * n / (ms * 1e-3) / 1e9
        row = dict(case=name, provider=provider, params=n, tensors=len(shapes), gpu_ms=ms,
                   wall_ms=wall, host_us=host, gbps=gbps, pct_copy=100 * gbps / copy)
        results["cases"].append(row)
        print(f"{name:>11} {provider:>16} {n:>11,} {ms:>9.4f} {wall:>9.4f} {host:>8.1f} "
              f"{gbps:>7.0f} {row['pct_copy']:>5.1f}%", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
