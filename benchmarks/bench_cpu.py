"""The CPU backend against torch's fused CPU optimizers, side by side in one process.

    python benchmarks/bench_cpu.py [--rounds 15] [--steps 20] [--json out.json]

The target: fused_lrs (impl="auto", which on CPU is "torch_fused") takes at most 1.11x the step
time of torch's fused optimizer plus its torch scheduler, for

  adamw-0.7M   fp32 AdamW, warmup-cosine: 76 tensors, 0.70M (S1's list at width 96)
  adamw-7.1M   fp32 AdamW, warmup-cosine: 12 tensors, 7.1M (one GPT-2 small block)
  adamw-28M    fp32 AdamW, warmup-cosine: 50 tensors, 28.4M (four GPT-2 small blocks, ln_f)
  bf16-master  bf16 parameters with fp32 masters (7.1M), against torch fused stepping fp32
               copies, the gradients copied in and the parameters rounded out (as apex does)
  sgd-resnet50 SGD, momentum 0.9, weight decay, MultiStepLR: ResNet-50's 161 tensors, 25.6M

Timing as ``side_by_side.rounds``: the median over rotating rounds of the per-round ratio.
Before timing, both sides take 25 identical steps from identical parameters and gradients, and
every parameter and state tensor is compared: |a - b| <= atol + rtol |b|, atol scaled by the
tensor's largest magnitude (fp32: rtol 1e-5, atol 1e-7; bf16 parameters: 2^-8, one bf16 ulp,
for both).
"""

from __future__ import annotations

import argparse
import sys

import torch
from side_by_side import (
    add_timing_arguments,
    clock_of,
    environment,
    error_of_tolerance,
    make,
    rounds,
    save,
    step_together,
)

from fused_lrs.bench.providers import fused_lrs_optimizer, torch_update
from fused_lrs.bench.scenarios import (
    CNN,
    TRANSFORMER,
    TRANSFORMER_MASTER,
    gpt_shapes,
    resnet50_shapes,
)

BLOCK = gpt_shapes(1, 768, 0, 0, embeddings=False)          # 12 tensors, 7,087,872
CASES = {
    "adamw-0.7M": (gpt_shapes(6, 96, 65, 256), torch.float32, TRANSFORMER),
    "adamw-7.1M": (BLOCK, torch.float32, TRANSFORMER),
    "adamw-28M": (BLOCK * 4 + [(768,), (768,)], torch.float32, TRANSFORMER),
    "bf16-master": (BLOCK, torch.bfloat16, TRANSFORMER_MASTER),
    "sgd-resnet50": (resnet50_shapes(), torch.float32, CNN),
}
TARGET = 1.11


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
    """The worst error over params and states after CHECK_STEPS steps, as a fraction of its
    tolerance (at most 1, or AssertionError)."""
    fused_step, torch_step, fused, topt, mine, theirs = build(shapes, dtype, recipe)
    step_together([fused_step, torch_step], mine, theirs, dtype)
    assert fused.impl == "torch_fused", fused.impl
    worst = 0.0
    tparams = topt.param_groups[0]["params"]       # torch's (fp32 copies under masters)
    for i, (p, q, tq) in enumerate(zip(mine, theirs, tparams)):
        pairs = [("param", p, q, dtype)]
        st, tst = fused.state[p], topt.state[tq]
        if "master" in st:
            pairs.append(("master", st["master"], tq, torch.float32))
        pairs += [(k, st[k], tst[k], torch.float32)
                  for k in ("exp_avg", "exp_avg_sq", "momentum_buffer") if k in tst]
        for name, a, b, dt in pairs:
            tol = 2.0**-8 if dt == torch.bfloat16 else None
            worst = max(worst, error_of_tolerance(f"tensor {i} {name}", a, b,
                                                  rtol=tol or 1e-5, atol=tol or 1e-7))
    return worst


def measure(shapes, dtype, recipe, n: int, steps: int, clock) -> dict:
    fused_step, torch_step, fused, *_ = build(shapes, dtype, recipe)
    timed = rounds({"fused_lrs": fused_step, "torch": torch_step}, "fused_lrs", n, steps, clock)
    return {"tensors": len(shapes), "params": sum(torch.Size(s).numel() for s in shapes),
            "dtype": str(dtype).removeprefix("torch."), "impl": fused.impl,
            "fused_lrs_ms": timed["ms"]["fused_lrs"], "torch_fused_ms": timed["ms"]["torch"],
            "ratio": timed["ratio"], "ratio_quartiles": timed["ratio_quartiles"],
            "target": TARGET}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    add_timing_arguments(ap)
    args = ap.parse_args(argv)
    clock = clock_of(args)
    env = environment()
    print(f"{env['device']}; torch {env['torch']}, python {env['python']}, {env['threads']} "
          f"threads; {env['date']}; load {env['load_average_before'][0]:.2f}; {args.clock} "
          f"clock, median of {args.rounds} rounds of {args.steps} steps")
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
    save(args, env, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
