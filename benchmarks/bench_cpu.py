"""The CPU backend against torch's fused CPU optimizers, side by side in one process.

    python benchmarks/bench_cpu.py [--rounds 15] [--steps 20] [--json out.json]

Issue 10's targets: fused_lrs (impl="auto", which on CPU is "torch_fused") takes at most 1.11x
the step time of torch's fused optimizer plus its torch scheduler, for

  adamw-0.7M   fp32 AdamW, warmup-cosine: 76 tensors, 0.70M (S1's list at width 96)
  adamw-7.1M   fp32 AdamW, warmup-cosine: 12 tensors, 7.1M (one GPT-2 small block)
  adamw-28M    fp32 AdamW, warmup-cosine: 50 tensors, 28.4M (four GPT-2 small blocks, ln_f)
  bf16-master  bf16 parameters with fp32 masters (7.1M), against torch fused stepping fp32
               copies, the gradients copied in and the parameters rounded out (as apex does)
  sgd-resnet50 SGD, momentum 0.9, weight decay, MultiStepLR: ResNet-50's 161 tensors, 25.6M

Timing: a round times ``--steps`` steps of each side back to back (the order alternates between
rounds), one round after another; the figure is the median over rounds of the per-round ratio,
so a neighbour's load that lasts a round moves both sides. Before timing, both sides take 25
identical steps from identical parameters and gradients, and every parameter and state tensor
is compared: |a - b| <= atol + rtol |b|, atol scaled by the tensor's largest magnitude (fp32:
rtol 1e-5, atol 1e-7; bf16 parameters: 2^-8, one bf16 ulp, for both).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from fused_lrs.bench.providers import fused_lrs_optimizer, torch_update
from fused_lrs.bench.scenarios import ADAMW, ADAMW_MASTER, SGD, gpt_shapes, resnet50_shapes

BLOCK = gpt_shapes(1, 768, 0, 0, embeddings=False)          # 12 tensors, 7,087,872
CASES = {
    "adamw-0.7M": (gpt_shapes(6, 96, 65, 256), torch.float32, ADAMW),
    "adamw-7.1M": (BLOCK, torch.float32, ADAMW),
    "adamw-28M": (BLOCK * 4 + [(768,), (768,)], torch.float32, ADAMW),
    "bf16-master": (BLOCK, torch.bfloat16, ADAMW_MASTER),
    "sgd-resnet50": (resnet50_shapes(), torch.float32, SGD),
}
TARGET = 1.11
CHECK_STEPS = 25          # past the warmup (10) and both SGD milestones (5, 10)


def make(shapes, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = (torch.randn(s, generator=gen) * 0.02).to(dtype).requires_grad_()
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(dtype)
        params.append(p)
    return params


def build(shapes, dtype, recipe):
    """(fused step, torch step, fused optimizer, torch optimizer, fused params, torch params)."""
    mine, theirs = make(shapes, dtype), make(shapes, dtype)
    fused = fused_lrs_optimizer(mine, recipe, torch.device("cpu"))
    update, sched = torch_update(theirs, recipe, torch.tensor(recipe.lr), fused=True)

    def torch_step():
        update()
        sched.step()
    return fused.step, torch_step, fused, sched.optimizer, mine, theirs


def check(shapes, dtype, recipe) -> float:
    """Take CHECK_STEPS steps on both sides with fresh gradients each step; return the worst
    error over params and states as a fraction of its tolerance (must be <= 1)."""
    fused_step, torch_step, fused, topt, mine, theirs = build(shapes, dtype, recipe)
    gen = torch.Generator().manual_seed(1)
    for _ in range(CHECK_STEPS):
        for p, q in zip(mine, theirs):
            g = (torch.randn(p.shape, generator=gen) * 1e-3).to(dtype)
            p.grad.copy_(g)
            q.grad.copy_(g)
        fused_step()
        torch_step()
    assert fused.impl == "torch_fused", fused.impl
    worst = 0.0
    tparams = topt.param_groups[0]["params"]       # torch's (fp32 copies under masters)
    for i, (p, q, tq) in enumerate(zip(mine, theirs, tparams)):
        pairs = [("param", p.detach(), q.detach(), dtype)]
        st, tst = fused.state[p], topt.state[tq]
        if "master" in st:
            pairs.append(("master", st["master"], tq.detach(), torch.float32))
        for k in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if k in tst:
                pairs.append((k, st[k], tst[k], torch.float32))
        for name, a, b, dt in pairs:
            a, b = a.float(), b.float()
            scale = b.abs().max().clamp_min(1e-30)
            rtol = 2.0**-8 if dt == torch.bfloat16 else 1e-5
            atol = (2.0**-8 if dt == torch.bfloat16 else 1e-7) * scale
            ratio = ((a - b).abs() / (atol + rtol * b.abs())).max().item()
            if not ratio <= 1.0:
                raise AssertionError(f"tensor {i} {name}: {ratio:.2f}x the tolerance")
            worst = max(worst, ratio)
    return worst


def time_steps(step, steps: int, clock) -> float:
    start = clock()
    for _ in range(steps):
        step()
    return (clock() - start) / steps * 1e3


def measure(shapes, dtype, recipe, rounds: int, steps: int, clock) -> dict:
    fused_step, torch_step, fused, *_ = build(shapes, dtype, recipe)
    for _ in range(3):                 # state, tables, the schedules' first boundary
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
            "dtype": str(dtype).removeprefix("torch."), "impl": fused.impl,
            "fused_lrs_ms": statistics.median(mine), "torch_fused_ms": statistics.median(theirs),
            "ratio": statistics.median(ratios),
            "ratio_quartiles": statistics.quantiles(ratios, n=4) if rounds > 1 else ratios,
            "target": TARGET}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time, for a machine others load (with "
                         "--threads 1, so no thread spins while it waits)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "date": time.strftime("%Y-%m-%d")}
    print(f"torch {env['torch']}, python {env['python']}, {env['threads']} threads, "
          f"{env['date']}; {args.clock} clock, median of {args.rounds} rounds of "
          f"{args.steps} steps")
    print(f"{'case':>13} {'tensors':>7} {'params':>11} {'fused_lrs ms':>12} {'torch ms':>9} "
          f"{'ratio':>6} {'IQR':>13} {'states':>7}  target <= {TARGET}")
    results, ok = {}, True
    for name in args.cases.split(","):
        shapes, dtype, recipe = CASES[name]
        margin = check(shapes, dtype, recipe)
        row = measure(shapes, dtype, recipe, args.rounds, args.steps, clock)
        row["state_error_of_tolerance"] = margin
        results[name] = row
        q = row["ratio_quartiles"]
        met = row["ratio"] <= TARGET
        ok &= met
        print(f"{name:>13} {row['tensors']:>7} {row['params']:>11,} {row['fused_lrs_ms']:>12.3f} "
              f"{row['torch_fused_ms']:>9.3f} {row['ratio']:>6.3f} {q[0]:>6.3f}-{q[-1]:<6.3f} "
              f"{margin:>7.2f}  {'met' if met else 'NOT met'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": vars(args), "results": results}, f,
                      indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
