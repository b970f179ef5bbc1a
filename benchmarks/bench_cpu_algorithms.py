"""Every optimizer of the registry on CPU against its peer's implementations, in one process.

    python benchmarks/bench_cpu_algorithms.py [--rounds 15] [--steps 20] [--json out.json]

For each algorithm of ``fused_lrs.algorithms`` (its options below, or its class's defaults):
fused_lrs with ``impl="auto"`` (on CPU the "torch_fused" backend) against each implementation
its peer has (``foreach=True``, ``fused=True`` with a tensor lr, the peer's only step when it has
neither, and lion_pytorch's foreach class), each plus torch's warmup-cosine scheduler
(``SequentialLR(LinearLR, CosineAnnealingLR)``, fused_lrs's ``warmup(cosine)``), fp32, for

  <algorithm>-0.7M   76 tensors, 0.70M parameters (the GPT shapes of bench_cpu.py's adamw-0.7M)
  <algorithm>-7.1M   12 tensors, 7.1M (one GPT-2 small block)

The target: fused_lrs takes at most 1.1x the time of the faster of the peer's implementations.
Timing as ``side_by_side.rounds``: a round's ratio is fused_lrs's time over the faster
baseline's in that round, and the figure is the median of the rounds' ratios. Before timing,
fused_lrs and the peer as the tests drive it (its default implementation, on CPU the
single-tensor loop) take 25 identical steps from identical parameters and gradients, and every
parameter and state tensor is compared: |a - b| <= atol + rtol |b|, rtol 1e-5, atol 1e-7 times
the tensor's largest magnitude.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys

import torch
from bench_cpu import BLOCK
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

from fused_lrs.algorithms import ALGORITHMS, optimizer_class
from fused_lrs.bench.providers import fused_schedule, torch_scheduler
from fused_lrs.bench.scenarios import TRANSFORMER, gpt_shapes

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
    "adamax": dict(lr=2e-3, weight_decay=0.01),
    "nadam": dict(lr=2e-3, weight_decay=0.01, decoupled_weight_decay=True),
    "radam": dict(lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True),
    "adadelta": dict(lr=1.0, weight_decay=0.01),
    "asgd": dict(lr=1e-2, weight_decay=0.01, t0=5),     # averaging from step 5
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
        opt = cls(params, lr=lr, schedule=fused_schedule(TRANSFORMER), impl="auto", **options)
        return opt.step, opt, params
    cls, extra, tensor_lr = impl
    lr = lr if lr is not None else inspect.signature(cls).parameters["lr"].default
    opt = cls(params, lr=torch.tensor(lr) if tensor_lr else lr, **options, **extra)
    sched = torch_scheduler(opt, TRANSFORMER)     # first: it wraps opt.step to check the call order

    def step():
        opt.step()
        sched.step()
    return step, opt, params


def check(name, shapes) -> float:
    """The worst error over params and states after CHECK_STEPS steps of fused_lrs and of the
    peer as the tests drive it (default options), as a fraction of TOL."""
    record = ALGORITHMS[name]
    peer = (record.peer_class(), {}, False)
    (ours, opt, mine), (theirs, topt, their_params) = build(name, shapes), build(name, shapes,
                                                                                 peer)
    step_together([ours, theirs], mine, their_params)
    assert opt.impl == "torch_fused", opt.impl
    worst = 0.0
    for i, (p, q) in enumerate(zip(mine, their_params)):
        pairs = [("param", p, q)]
        pairs += [(k, opt.state[p][k], v) for k, v in topt.state[q].items()
                  if isinstance(v, torch.Tensor) and v.dim() > 0]
        for what, a, b in pairs:
            worst = max(worst, error_of_tolerance(f"{name} tensor {i} {what}", a, b, **TOL))
    return worst


def measure(name, shapes, n: int, steps: int, clock) -> dict:
    record = ALGORITHMS[name]
    impls = implementations(record)
    sides = {"fused_lrs": build(name, shapes)[0]}
    sides.update({impl: build(name, shapes, value)[0] for impl, value in impls.items()})
    timed = rounds(sides, "fused_lrs", n, steps, clock)
    baselines = {b: timed["ms"][b] for b in impls}
    return {"algorithm": name, "peer": record.peer, "options": OPTIONS.get(name, {}),
            "tensors": len(shapes), "params": sum(torch.Size(s).numel() for s in shapes),
            "dtype": "float32", "impl": "torch_fused", "ours_ms": timed["ms"]["fused_lrs"],
            "baselines_ms": baselines, "best_baseline": min(baselines, key=baselines.get),
            "ratio": timed["ratio"], "ratio_quartiles": timed["ratio_quartiles"],
            "target": TARGET}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--sizes", default=",".join(SIZES))
    add_timing_arguments(ap)
    args = ap.parse_args(argv)
    clock = clock_of(args)
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
    save(args, env, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
