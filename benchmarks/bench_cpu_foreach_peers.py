"""The CPU backend of the optimizers torch fuses none of (Adamax, NAdam, RAdam, Adadelta, ASGD)
against torch's foreach implementation of each plus its scheduler, side by side in one process.

    python benchmarks/bench_cpu_foreach_peers.py [--rounds 15] [--steps 20] [--json out.json]

Issue 18's target: fused_lrs (impl="auto", which on CPU is "torch_fused": foreach ops with the
lr and every step-dependent scalar as tensors) takes at most 1.1x the step time of torch's class
with ``foreach=True`` plus a torch scheduler (warmup then cosine), fp32, for

  0.7M   76 tensors, 0.70M parameters (S1's list at width 96)
  7.1M   12 tensors, 7.1M parameters (one GPT-2 small block)

Timing as ``bench_cpu.py``: a round times ``--steps`` steps of each side back to back (the order
alternates between rounds); the figure is the median over rounds of the per-round ratio. Before
timing, both sides take 25 identical steps and every parameter and state tensor is compared
(rtol 1e-5, atol 1e-7 of the tensor's largest magnitude: torch's foreach path rounds in another
order than the single-tensor path ours follows, and ASGD's foreach path computes eta in fp32).
The machine's load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.optim import lr_scheduler as tls

from fused_lrs import (
    FusedAdadeltaScheduled,
    FusedAdamaxScheduled,
    FusedASGDScheduled,
    FusedNAdamScheduled,
    FusedRAdamScheduled,
)
from fused_lrs.bench.scenarios import gpt_shapes
from fused_lrs.schedules import cosine, linear, sequential

SIZES = {"0.7M": gpt_shapes(6, 96, 65, 256), "7.1M": gpt_shapes(1, 768, 0, 0, embeddings=False)}
# Each class with the options that take part in its update (ASGD: averaging from step 5).
OPTIMIZERS = {
    "adamax": (FusedAdamaxScheduled, dict(lr=2e-3, weight_decay=0.01)),
    "nadam": (FusedNAdamScheduled, dict(lr=2e-3, weight_decay=0.01,
                                        decoupled_weight_decay=True)),
    "radam": (FusedRAdamScheduled, dict(lr=1e-3, weight_decay=0.01,
                                        decoupled_weight_decay=True)),
    "adadelta": (FusedAdadeltaScheduled, dict(lr=1.0, weight_decay=0.01)),
    "asgd": (FusedASGDScheduled, dict(lr=1e-2, weight_decay=0.01, t0=5)),
}
WARMUP, T_MAX = 10, 1000
TARGET = 1.1
CHECK_STEPS = 25


def make(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = (torch.randn(s, generator=gen) * 0.02).requires_grad_()
        p.grad = torch.randn(s, generator=gen) * 1e-3
        params.append(p)
    return params


def build(name, shapes):
    """(fused step, torch step, fused optimizer, torch optimizer, fused params, torch params)."""
    cls, options = OPTIMIZERS[name]
    mine, theirs = make(shapes), make(shapes)
    fused = cls(mine, schedule=sequential([linear(0.1, 1.0, WARMUP), cosine(T_MAX)], [WARMUP]),
                **options)
    topt = cls.algorithm.peer_class()(theirs, foreach=True, **options)
    sched = tls.SequentialLR(topt, [tls.LinearLR(topt, 0.1, 1.0, WARMUP),
                                    tls.CosineAnnealingLR(topt, T_MAX)], [WARMUP])

    def torch_step():
        topt.step()
        sched.step()
    return fused.step, torch_step, fused, topt, mine, theirs


def check(name, shapes) -> float:
    """CHECK_STEPS steps on both sides with fresh gradients; the worst error over parameters
    and states as a fraction of its tolerance (must be <= 1)."""
    fused_step, torch_step, fused, topt, mine, theirs = build(name, shapes)
    gen = torch.Generator().manual_seed(1)
    for _ in range(CHECK_STEPS):
        for p, q in zip(mine, theirs):
            g = torch.randn(p.shape, generator=gen) * 1e-3
            p.grad.copy_(g)
            q.grad.copy_(g)
        fused_step()
        torch_step()
    assert fused.impl == "torch_fused", fused.impl
    worst = 0.0
    for i, (p, q) in enumerate(zip(mine, theirs)):
        pairs = [("param", p.detach(), q.detach())] + [
            (k, fused.state[p][k], v) for k, v in topt.state[q].items() if k != "step"]
        for what, a, b in pairs:
            a, b = a.double(), b.double()
            scale = b.abs().max().clamp_min(1e-30)
            ratio = ((a - b).abs() / (1e-7 * scale + 1e-5 * b.abs())).max().item()
            if not ratio <= 1.0:
                raise AssertionError(f"{name} tensor {i} {what}: {ratio:.2f}x the tolerance")
            worst = max(worst, ratio)
    return worst


def time_steps(step, steps: int, clock) -> float:
    start = clock()
    for _ in range(steps):
        step()
    return (clock() - start) / steps * 1e3


def measure(name, shapes, rounds: int, steps: int, clock) -> dict:
    fused_step, torch_step, *_ = build(name, shapes)
    for _ in range(3):                 # state, buffers, the schedules' first steps
        fused_step()
        torch_step()
    mine, theirs, ratios = [], [], []
    for r in range(rounds):
        order = (fused_step, torch_step) if r % 2 == 0 else (torch_step, fused_step)
        times = {id(s): time_steps(s, steps, clock) for s in order}
        mine.append(times[id(fused_step)])
        theirs.append(times[id(torch_step)])
        ratios.append(mine[-1] / theirs[-1])
    return {"tensors": len(shapes), "params": sum(torch.Size(s).numel() for s in shapes),
            "dtype": "float32", "fused_lrs_ms": statistics.median(mine),
            "torch_foreach_ms": statistics.median(theirs), "ratio": statistics.median(ratios),
            "ratio_quartiles": statistics.quantiles(ratios, n=4) if rounds > 1 else ratios,
            "target": TARGET}


def environment(args) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": f"CPU ({platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores)",
            "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "clock": args.clock, "commit": commit or None,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time, for a machine others load (with "
                         "--threads 1, so no thread spins while it waits)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    env = environment(args)
    print(f"torch {env['torch']}, python {env['python']}, {env['threads']} threads, "
          f"{env['date']}, load {env['load_before']}; {args.clock} clock, median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'case':>14} {'tensors':>7} {'params':>11} {'fused_lrs ms':>12} {'foreach ms':>10} "
          f"{'ratio':>6} {'IQR':>13} {'states':>7}  target <= {TARGET}")
    results, ok = {}, True
    for name in args.optimizers.split(","):
        for size in args.sizes.split(","):
            shapes = SIZES[size]
            margin = check(name, shapes)
            row = measure(name, shapes, args.rounds, args.steps, clock)
            row["state_error_of_tolerance"] = margin
            results[f"{name}-{size}"] = row
            q = row["ratio_quartiles"]
            met = row["ratio"] <= TARGET
            ok &= met
            print(f"{name + '-' + size:>14} {row['tensors']:>7} {row['params']:>11,} "
                  f"{row['fused_lrs_ms']:>12.3f} {row['torch_foreach_ms']:>10.3f} "
                  f"{row['ratio']:>6.3f} {q[0]:>6.3f}-{q[-1]:<6.3f} {margin:>7.2f}  "
                  f"{'met' if met else 'NOT met'}", flush=True)
    env["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": vars(args), "results": results}, f,
                      indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
