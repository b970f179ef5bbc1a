"""What the CPU benchmarks share: identical parameters for each side, a check that two sides
agree, rounds that time every side back to back, and the machine's description.

A round times ``steps`` steps of each side, one side after another; the order rotates between
rounds, and a round's ratio is fused_lrs's time over the faster baseline's in that same round.
The figure is the median of the rounds' ratios, so a neighbour's load that lasts a round moves
every side of it together.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import torch

CHECK_STEPS = 25          # past the 10-step warmup and both SGD milestones (5, 10)
WARM_STEPS = 3            # state allocated, tables built, the schedules' first boundary


def make(shapes, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    """Leaf parameters (N(0, 0.02)) with gradients (N(0, 1e-3)), the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = (torch.randn(s, generator=gen) * 0.02).to(dtype).requires_grad_()
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(dtype)
        params.append(p)
    return params


def step_together(steps, mine, theirs, dtype=torch.float32, seed: int = 1) -> None:
    """Call each of ``steps`` CHECK_STEPS times, the same fresh gradients in both lists first."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(CHECK_STEPS):
        for p, q in zip(mine, theirs):
            g = (torch.randn(p.shape, generator=gen) * 1e-3).to(dtype)
            p.grad.copy_(g)
            q.grad.copy_(g)
        for step in steps:
            step()


def error_of_tolerance(what: str, a: torch.Tensor, b: torch.Tensor, rtol: float,
                       atol: float) -> float:
    """max |a - b| / (atol * max|b| + rtol * |b|): at most 1 when ``a`` matches ``b``. The atol
    scales with the tensor's largest magnitude, so a state near zero is judged on its own scale."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().clamp_min(1e-30)
    ratio = ((a - b).abs() / (atol * scale + rtol * b.abs())).max().item()
    if not ratio <= 1.0:
        raise AssertionError(f"{what}: {ratio:.2f}x the tolerance")
    return ratio


def time_steps(step, steps: int, clock) -> float:
    """Milliseconds per call of ``step`` over ``steps`` calls."""
    start = clock()
    for _ in range(steps):
        step()
    return (clock() - start) / steps * 1e3


def rounds(sides: dict, ours: str, n: int, steps: int, clock) -> dict:
    """Time every side of ``sides`` ({name: step}) in ``n`` rotating rounds. Returns each
    side's median ms, the ratio (median over rounds of ``ours`` over the round's fastest other
    side) and the ratios' quartiles."""
    for step in sides.values():
        for _ in range(WARM_STEPS):
            step()
    order = list(sides)
    times = {side: [] for side in sides}
    ratios = []
    for r in range(n):
        for side in order[r % len(order):] + order[:r % len(order)]:
            times[side].append(time_steps(sides[side], steps, clock))
        ratios.append(times[ours][-1] / min(t[-1] for s, t in times.items() if s != ours))
    return {"ms": {side: statistics.median(t) for side, t in times.items()},
            "ratio": statistics.median(ratios),
            "ratio_quartiles": statistics.quantiles(ratios, n=4) if n > 1 else ratios}


def environment() -> dict:
    """The machine, the versions, the commit and the load average when the run begins."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = ""
    return {"device": f"CPU: {platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores",
            "device_type": "cpu", "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "cores": os.cpu_count(), "commit": commit or None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_before": list(os.getloadavg())}


def save(args, env: dict, results: dict) -> None:
    """Write ``--json`` (when given): the environment with the load average at the end, the
    arguments, the results."""
    env["load_average_after"] = list(os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": vars(args), "results": results}, f,
                      indent=1)
            f.write("\n")


def add_timing_arguments(ap) -> None:
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time, for a machine others load (with "
                         "--threads 1, so no thread spins while it waits)")
    ap.add_argument("--json")


def clock_of(args):
    """Apply ``--threads`` and return the clock ``--clock`` names."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return time.perf_counter if args.clock == "wall" else time.process_time
