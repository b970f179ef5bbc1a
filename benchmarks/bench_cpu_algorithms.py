"""Every optimizer of the registry on CPU against its peer's implementations, in one process.

    python benchmarks/bench_cpu_algorithms.py [--rounds 15] [--steps 20] [--json out.json]

For each algorithm of ``fused_lrs.algorithms`` (its options below, or its class's defaults):
fused_lrs with ``impl="auto"`` (on CPU the "torch_fused" backend) against each implementation
its peer has (``foreach=True``, ``fused=True`` with a tensor lr, the peer's only step when it has
neither, and lion_pytorch's foreach class), each plus torch's warmup-cosine scheduler
(``SequentialLR(LinearLR, CosineAnnealingLR)``, fused_lrs's ``warmup(cosine)``), fp32, for

  <algorithm>-0.7M   76 tensors, 0.70M parameters (the GPT shapes of bench_cpu.py's adamw-0.7M)
  <algorithm>-7.1M   12 tensors, 7.1M (one GPT-2 small block)

Issue 17's target: fused_lrs takes at most 1.1x the time of the faster of the peer's
implementations. Timing: a round times ``--steps`` steps of each side back to back (the order
rotates between rounds); a round's ratio is fused_lrs's time over the faster baseline's in that
round; the figure is the median of the rounds' ratios and their interquartile range, so a
neighbour's load that lasts a round moves every side. Before timing, fused_lrs and the peer as
the tests drive it (its default implementation) take 25 identical steps from identical
parameters and gradients, and every parameter and state tensor is compared: |a - b| <= atol +
rtol |b|, rtol 1e-5, atol 1e-7 times the tensor's largest magnitude.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from bench_cpu import BLOCK, CHECK_STEPS, make, time_steps

from fused_lrs.algorithms import ALGORITHMS, optimizer_class
from fused_lrs.bench.providers import fused_schedule, torch_scheduler
from fused_lrs.bench.scenarios import ADAMW, gpt_shapes

SIZES = {"0.7M": gpt_shapes(6, 96, 65, 256), "7.1M": BLOCK}
# What each algorithm steps with (anything else: its class's defaults); the lr is the base the
# warmup-cosine schedule scales.
OPTIONS = {
    "adam": dict(lr=3e-4),
    "adamw": dict(lr=3e-4, weight_decay=0.1),
    "sgd": dict(lr=0.1, momentum=0.9, weight_decay=1e-4),
    "rmsprop": dict(lr=1e-3, momentum=0.9, weight_decay=1e-4),
    "adagrad": dict(lr=1e-2, weight_decay=1e-4),
    "lion": dict(lr=1e-4, weight_decay=0.1),
}
# Implementations of a peer that live in another class of its package.
ALTERNATES = {"lion_pytorch.Lion": {"foreach": "lion_pytorch.foreach.Lion"}}
TARGET = 1.1
TOL = dict(rtol=1e-5, atol=1e-7)


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def implementations(record) -> dict:
    """The peer's implementations as {name: (class, extra options, tensor lr)}."""
    peer = record.peer_class()
    accepted = inspect.signature(peer).parameters
    found = {}
    if "foreach" in accepted:
        found["foreach"] = (peer, dict(foreach=True), False)
    if "fused" in accepted:
        found["fused"] = (peer, dict(fused=True), True)
    if not found:                       # the peer's only step (lion_pytorch.Lion's loop)
        found["step"] = (peer, {}, False)
    for name, path in ALTERNATES.get(record.peer, {}).items():
        found[name] = (_class(path), {}, False)
    return found


def build(name, shapes, impl=None):
    """(step, optimizer, params) of fused_lrs (``impl`` None) or of the peer's implementation
    ``impl`` (a value of ``implementations``), each with its schedule."""
    options = dict(OPTIONS.get(name, {}))
    lr = options.pop("lr", None)
    params = make(shapes, torch.float32)
    if impl is None:
        cls = optimizer_class(name)
        lr = lr if lr is not None else inspect.signature(cls).parameters["lr"].default
        opt = cls(params, lr=lr, schedule=fused_schedule(ADAMW), impl="auto", **options)
        return opt.step, opt, params
    cls, extra, tensor_lr = impl
    lr = lr if lr is not None else inspect.signature(cls).parameters["lr"].default
    opt = cls(params, lr=torch.tensor(lr) if tensor_lr else lr, **options, **extra)
    sched = torch_scheduler(opt, ADAMW)     # first: it wraps opt.step to check the call order

    def step():
        opt.step()
        sched.step()
    return step, opt, params


def check(name, shapes) -> float:
    """CHECK_STEPS steps of fused_lrs and of the peer as the tests drive it (default options),
    fresh gradients each step; the worst error over params and states, as a fraction of TOL."""
    record = ALGORITHMS[name]
    peer = (record.peer_class(), {}, False)
    (ours, opt, mine), (theirs, topt, their_params) = build(name, shapes), build(name, shapes,
                                                                                 peer)
    gen = torch.Generator().manual_seed(1)
    for _ in range(CHECK_STEPS):
        for p, q in zip(mine, their_params):
            g = torch.randn(p.shape, generator=gen) * 1e-3
            p.grad.copy_(g)
            q.grad.copy_(g)
        ours()
        theirs()
    assert opt.impl == "torch_fused", opt.impl
    worst = 0.0
    for i, (p, q) in enumerate(zip(mine, their_params)):
        pairs = [("param", p.detach(), q.detach())]
        pairs += [(k, opt.state[p][k], v) for k, v in topt.state[q].items()
                  if isinstance(v, torch.Tensor) and v.dim() > 0]
        for what, a, b in pairs:
            scale = b.abs().max().clamp_min(1e-30)
            ratio = ((a - b).abs() / (TOL["atol"] * scale + TOL["rtol"] * b.abs())).max().item()
            if not ratio <= 1.0:
                raise AssertionError(f"{name} tensor {i} {what}: {ratio:.2f}x the tolerance")
            worst = max(worst, ratio)
    return worst


def measure(name, shapes, rounds: int, steps: int, clock) -> dict:
    record = ALGORITHMS[name]
    impls = implementations(record)
    sides = {"fused_lrs": build(name, shapes)[0]}
    sides.update({impl: build(name, shapes, value)[0] for impl, value in impls.items()})
    for step in sides.values():
        for _ in range(3):             # state, tables, the schedules' first boundary
            step()
    times = {side: [] for side in sides}
    ratios = []
    order = list(sides)
    for r in range(rounds):
        for side in order[r % len(order):] + order[:r % len(order)]:
            times[side].append(time_steps(sides[side], steps, clock))
        ratios.append(times["fused_lrs"][-1] / min(times[b][-1] for b in impls))
    medians = {side: statistics.median(t) for side, t in times.items()}
    best = min(impls, key=lambda b: medians[b])
    return {"algorithm": name, "peer": record.peer, "options": OPTIONS.get(name, {}),
            "tensors": len(shapes), "params": sum(torch.Size(s).numel() for s in shapes),
            "dtype": "float32", "impl": "torch_fused", "ours_ms": medians["fused_lrs"],
            "baselines_ms": {b: medians[b] for b in impls}, "best_baseline": best,
            "ratio": statistics.median(ratios),
            "ratio_quartiles": statistics.quantiles(ratios, n=4) if rounds > 1 else ratios,
            "target": TARGET}


def environment() -> dict:
    import triton
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = None
    return {"device": f"CPU: {platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores",
            "device_type": "cpu", "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "commit": commit or None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_before": list(os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    env = environment()
    print(f"{env['device']}; torch {env['torch']}, python {env['python']}; {env['date']}; "
          f"load {env['load_average_before'][0]:.2f}; median of {args.rounds} rounds of "
          f"{args.steps} steps, {args.clock} clock")
    print(f"{'case':>14} {'tensors':>7} {'params':>10} {'fused_lrs ms':>12} {'best peer':>18} "
          f"{'ratio':>6} {'IQR':>13} {'states':>6}  target <= {TARGET}")
    results, ok = {}, True
    for name in args.algorithms.split(","):
        for size in args.sizes.split(","):
            shapes = SIZES[size]
            margin = check(name, shapes)
            row = measure(name, shapes, args.rounds, args.steps, clock)
            row["state_error_of_tolerance"] = margin
            case = f"{name}-{size}"
            results[case] = row
            q = row["ratio_quartiles"]
            met = row["ratio"] <= TARGET
            ok &= met
            best = row["best_baseline"]
            print(f"{case:>14} {row['tensors']:>7} {row['params']:>10,} {row['ours_ms']:>12.3f} "
                  f"{best + ' ' + format(row['baselines_ms'][best], '.3f'):>18} "
                  f"{row['ratio']:>6.3f} {q[0]:>6.3f}-{q[-1]:<6.3f} {margin:>6.2f}  "
                  f"{'met' if met else 'NOT met'}", flush=True)
    env["load_average_after"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": vars(args), "results": results}, f,
                      indent=1)
            f.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
