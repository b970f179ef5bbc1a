"""Host time per eager optimizer step, with the GPU work stubbed out: what a launch-bound model
pays on the CPU every step, whatever the GPU.

GPT-2 small's 148 parameter tensors (fp32), two gradient patterns:
  * same: the same gradient tensors every step (``zero_grad(set_to_none=False)``);
  * new: new gradient tensors every step, as torch's default ``zero_grad()`` (set_to_none=True)
    followed by backward gives (two sets of gradients, alternated: every step sees new
    addresses).
Providers:
  * fused_lrs: ``FusedAdamWScheduled(impl="triton")``, warmup + cosine, the kernel launch
    replaced by a no-op (everything before it, tables and uploads included, still runs);
  * torch_fused: ``torch.optim.AdamW(fused=True)`` + ``LambdaLR`` (HF's warmup-cosine lambda),
    ``torch._fused_adamw_`` and ``torch._foreach_add_`` (its two kernels) replaced by no-ops.
Timed: ``opt.step()`` (plus ``scheduler.step()`` for torch), not the gradient assignment.

The machine is shared, so the two providers alternate in rounds and the report gives medians
of per-round means and the ratio within each round. Triton's own launch overhead is not
included (it is the same for any table layout; on a GPU it adds roughly 10-30 us per launch).

    python benchmarks/bench_host.py --out bench-results/bench_host.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

# The Triton backend runs on CPU only interpreted; the launch is stubbed, so nothing interprets.
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fused_lrs import FusedAdamWScheduled  # noqa: E402
from fused_lrs import schedules as S  # noqa: E402
from fused_lrs.bench.scenarios import gpt2_small_shapes  # noqa: E402

WARMUP, TOTAL = 100, 10_000


class _NoLaunch:
    """Stands in for the jit kernel: ``kernel[grid](*args, **kwargs)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def make_params(seed=0):
    torch.manual_seed(seed)
    return [torch.zeros(s).requires_grad_() for s in gpt2_small_shapes()]


def grad_sets(params, pattern):
    """One set of gradients (same) or two to alternate (new addresses every step)."""
    sets = [[torch.zeros_like(p) for p in params] for _ in range(1 if pattern == "same" else 2)]
    return sets


def fused_lrs_provider(params):
    opt = FusedAdamWScheduled(params, lr=3e-4, weight_decay=0.1, impl="triton",
                              schedule=S.warmup(S.cosine(TOTAL - WARMUP), WARMUP))
    return opt, opt.step


def torch_provider(params):
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.1, fused=True)

    def lam(step):                                # HF get_cosine_schedule_with_warmup
        if step < WARMUP:
            return step / max(1, WARMUP)
        progress = (step - WARMUP) / max(1, TOTAL - WARMUP)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)

    def step():
        opt.step()
        sched.step()
    return opt, step


def time_steps(opt, step, params, sets, steps):
    """Mean host seconds per step over ``steps`` steps; gradients assigned outside the timing."""
    total = 0.0
    for k in range(steps):
        grads = sets[k % len(sets)]
        if len(sets) > 1:
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g
        start = time.perf_counter()
        step()
        total += time.perf_counter() - start
    return total / steps


def calibration(params, reps=2000):
    """Seconds for one Python pass reading 148 ``.grad`` attributes: how fast this host runs
    per-tensor Python (a fast desktop core: ~3 us; a loaded shared core: ~20 us)."""
    start = time.perf_counter()
    for _ in range(reps):
        [p.grad for p in params]                  # noqa: B018
    return (time.perf_counter() - start) / reps


def run(rounds, steps):
    from fused_lrs.kernels import optim as K

    real = K.fused_step_kernel, torch._fused_adamw_, torch._foreach_add_
    K.fused_step_kernel = _NoLaunch()
    torch._fused_adamw_ = lambda *a, **k: None
    torch._foreach_add_ = lambda *a, **k: None
    results = {}
    try:
        for pattern in ("same", "new"):
            runs = {}
            for name, make in (("fused_lrs", fused_lrs_provider), ("torch_fused", torch_provider)):
                params = make_params()
                sets = grad_sets(params, pattern)
                for p, g in zip(params, sets[0]):
                    p.grad = g
                opt, step = make(params)
                step()                            # state, tables
                runs[name] = (opt, step, params, sets)
            per_round = {name: [] for name in runs}
            for _ in range(rounds):
                for name, (opt, step, params, sets) in runs.items():
                    per_round[name].append(time_steps(opt, step, params, sets, steps))
            ratios = [t / f for f, t in zip(per_round["fused_lrs"], per_round["torch_fused"])]
            results[pattern] = {
                **{f"{name}_us": statistics.median(v) * 1e6 for name, v in per_round.items()},
                "torch_over_fused_lrs": statistics.median(ratios),
                "calibration_148_grad_reads_us": calibration(runs["fused_lrs"][2]) * 1e6}
            del runs
    finally:
        K.fused_step_kernel, torch._fused_adamw_, torch._foreach_add_ = real
    return results


def environment():
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    import triton
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": platform.processor(), "commit": commit,
            "tensors": len(gpt2_small_shapes())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100, help="steps per round")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = {"environment": environment(), "results": run(args.rounds, args.steps)}
    for pattern, r in report["results"].items():
        print(f"{pattern:5s} grads: fused_lrs {r['fused_lrs_us']:8.1f} us  torch_fused "
              f"{r['torch_fused_us']:8.1f} us  ratio {r['torch_over_fused_lrs']:5.1f}x  "
              f"(148 .grad reads: {r['calibration_148_grad_reads_us']:.1f} us)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
