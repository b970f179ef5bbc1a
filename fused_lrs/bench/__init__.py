"""``fused-lrs bench``: how much faster is the optimizer step, on this machine.

Every scenario (``scenarios.py``) runs with every provider (``providers.py``) on fresh
parameters; ``measure.py`` times it; ``report.py`` prints the table and writes ``bench.json``
and ``bench.png``. A provider that fails (no CUDA-graph capture, out of memory) is reported with
its error and the run goes on.

    fused-lrs bench --quick                  # < 90 s on a 2-core CPU
    fused-lrs bench --scenarios S1,S3 --out bench-results/
    fused-lrs bench --quick --optimizer rmsprop   # any registry name, against its peer

The progress line on stderr shows the time left (``estimate.py``); on a CPU without ``--quick``
the run first says how long the GPU-sized scenarios will take there.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fused_lrs.algorithms import ALGORITHMS
from fused_lrs.bench import estimate, measure, providers, report
from fused_lrs.bench.scenarios import CNN, GROUPS, TRANSFORMER, select, with_optimizer

DEFAULT_STEPS = 200
# Where the GPU figures are: benchmarks/gpu_check.sh writes them, the benchmarks page shows them.
GPU_RESULTS = ("run `fused-lrs bench` on a GPU, or see the figures of benchmarks/gpu_check.sh "
               "in benchmarks/results/ and on the documentation's benchmarks page")
REPEATS = 3
# --quick: 10-step loops on CPU (3 x 10 = 30 timed steps of a reduced scenario, milliseconds
# each), 50 on a GPU (full-size scenarios, micro- to milliseconds a step).
QUICK_STEPS = {"cpu": 10, "cuda": 50}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="short loops; on CPU also reduced scenarios and no compiled "
                             "baseline (< 90 s)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--scenarios", default=",".join(GROUPS),
                        help=f"comma-separated subset of {','.join(GROUPS)} (default: all)")
    parser.add_argument("--steps", type=int,
                        help=f"steps per timed loop (default {DEFAULT_STEPS}; --quick: "
                             f"{QUICK_STEPS['cpu']} on CPU, {QUICK_STEPS['cuda']} on CUDA)")
    parser.add_argument("--optimizer", metavar="NAME",
                        help=f"a fused_lrs.algorithms name ({', '.join(ALGORITHMS)}) for "
                             "every scenario, against its peer (default: each scenario's "
                             f"recipe: {TRANSFORMER.label}; {CNN.label} for the ResNet-50 "
                             "scenario S3)")
    parser.add_argument("--providers",
                        help="comma-separated baselines to run next to fused_lrs (default: all "
                             "for the device; --quick on CPU: all but torch_compiled)")
    parser.add_argument("--out", default="bench-results",
                        help="directory for bench.json and bench.png (default bench-results/)")


def run(argv=None) -> int:
    """``fused-lrs bench`` with its own argument list (the CLI reaches ``execute`` directly)."""
    parser = argparse.ArgumentParser(prog="fused-lrs bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return execute(parser.parse_args(argv))


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: not a device: {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return device


def execute(args) -> int:
    device = _device(args.device)
    cpu = device.type == "cpu"
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    steps = args.steps or (QUICK_STEPS[device.type] if args.quick else DEFAULT_STEPS)
    repeats = REPEATS
    chosen = [s for s in with_optimizer(select(args.scenarios, args.quick, cpu),
                                        getattr(args, "optimizer", None))
              if not (cpu and s.gpu_only)]
    os.makedirs(args.out, exist_ok=True)
    json_path, png_path = (os.path.join(args.out, f) for f in ("bench.json", "bench.png"))
    if device.type == "cuda":
        torch.cuda.set_device(device)

    plan = (providers.named(args.providers, device) if args.providers
            else providers.for_device(device, args.quick))
    items = [(sc, provider) for sc in chosen for provider in plan]
    eta = estimate.Eta([(p.name, estimate.work(sc, p, steps, repeats, not cpu))
                        for sc, p in items])
    notes = _notes(args, cpu, steps, repeats, plan)
    if cpu and not args.quick and items:
        # Before the first scenario: the GPU sizes on a CPU take minutes to an hour.
        eta.prior = estimate.probe(plan, device)
        notes.append(_full_cpu_estimate(chosen, plan, eta))
    for n in notes:
        print(f"note: {n}", flush=True)

    progress = report.Progress(1 + len(items))
    progress.show("device-to-device copy", eta.left())
    copy = measure.copy_gbps(device, 2**30 if device.type == "cuda" else 2**27)
    progress.advance("copy", eta.left())
    env = report.environment(device)
    result = {"environment": env,
              "config": {"quick": args.quick, "device": str(device), "steps": steps,
                         "repeats": repeats, "scenarios": args.scenarios, "notes": notes},
              "copy_gbps": copy, "scenarios": []}
    for sc in chosen:
        entry = {"name": sc.name, "group": sc.group, "title": sc.title, "tensors": sc.tensors,
                 "params": sc.params, "dtype": sc.dtype, "optimizer": sc.recipe.optimizer,
                 "fused_class": sc.recipe.fused_class.__name__, "peer": sc.recipe.peer,
                 "bytes_per_param": sc.bytes_per_param, "reduced": sc.reduced,
                 "recipe": vars(sc.recipe), "results": []}
        result["scenarios"].append(entry)
        for provider in plan:
            progress.show(f"{sc.name} {provider.name}", eta.left())
            t0 = time.perf_counter()
            row = _measure(sc, provider, device, steps, repeats)
            eta.done(len(eta.seconds), time.perf_counter() - t0)     # items run in order
            basis = row.get("gpu_ms") or row.get("wall_ms")
            if basis:
                row["gbps"] = sc.bytes_per_step / (basis * 1e-3) / 1e9
                row["pct_copy"] = 100 * row["gbps"] / copy
            entry["results"].append(row)
            progress.advance(f"{sc.name} {provider.name}", eta.left())
        _speedups(entry["results"])
        # After every scenario, so that a run cut short (a time limit) keeps what it measured.
        report.write_json(result, json_path)
    progress.close()

    print(f"\n{env['device']}; torch {env['torch']}, triton {env['triton']}, "
          f"python {env['python']}; commit {env['commit']}; {env['date']}")
    print(f"device-to-device copy: {copy:.1f} GB/s; wall ms = median of {repeats} loops of "
          f"{steps} steps; GB/s from {'gpu' if not cpu else 'wall'} ms")
    print(report.table(result))
    report.write_json(result, json_path)
    why = report.write_chart(result, png_path)
    print(f"\nwrote {json_path}" + (f"; {why}" if why else f" and {png_path}"))
    return 0


def _notes(args, cpu: bool, steps: int, repeats: int, plan) -> list[str]:
    """What a reader of the figures must know about this run."""
    notes = []
    if cpu:
        notes.append("CPU: fused_lrs runs its CPU backend (impl='torch_fused': torch's fused "
                     "kernels, given lr(t) as a device tensor), so this table compares it with "
                     "torch on CPU. The Triton kernel's speed needs a GPU: " + GPU_RESULTS + ". "
                     "GPU time, kernels, syncs and peak memory are CUDA-only (n/a); GB/s is "
                     "from the wall clock, and above 100% of the copy when a working set fits "
                     "in the CPU's caches.")
        if not any(p.compiled for p in plan):
            notes.append("torch_compiled is left out (--quick on CPU); --providers "
                         "torch_foreach,torch_fused,torch_compiled runs it.")
        if any(s.gpu_only for s in select(args.scenarios)):
            notes.append("S2-llama (1.36B parameters) runs on GPU only.")
    if cpu and args.quick:
        notes.append(f"--quick on CPU: reduced scenarios (see each) and {repeats} loops of "
                     f"{steps} steps instead of {DEFAULT_STEPS}.")
    elif steps < DEFAULT_STEPS:
        notes.append(f"{repeats} loops of {steps} steps (the standard is {DEFAULT_STEPS}).")
    return notes


def _full_cpu_estimate(chosen, plan, eta) -> str:
    """The up-front note of a CPU run without --quick: how long, measured how, and --quick."""
    sizes = ", ".join(f"{sc.name} {sc.params / 1e6:.1f}M" for sc in chosen)
    compiled = [p.name for p in plan if p.compiled]
    return (f"CPU without --quick: the scenarios run at their GPU sizes ({sizes} parameters). "
            f"Estimated time: about {estimate.duration(eta.left())}, from the median of "
            f"{estimate.PROBE_STEPS} probe steps per provider on one GPT-2-small block, scaled by "
            "the bytes each scenario moves"
            + (f"; {', '.join(compiled)}'s compilation, tens of seconds a scenario on a CPU, "
               "comes on top" if compiled else "")
            + "; other jobs on the same cores make it longer. The progress line refines it as "
            "scenarios finish. --quick runs reduced sizes with 10-step loops instead (< 90 s on "
            "a 2-core CPU).")


def _measure(sc, provider, device, steps: int, repeats: int) -> dict:
    row = {"provider": provider.name, "subject": provider.subject, "graphed": provider.graphed,
           "status": "ok", **dict.fromkeys(("wall_ms", "gpu_ms", "host_us", "gbps", "pct_copy",
                                            "kernels_per_step", "syncs_per_step", "peak_mb"))}
    params = step = None
    try:
        measure.peak_memory_reset(device)
        params = providers.make_params(sc.shapes, device, getattr(torch, sc.dtype))
        step = provider.build(params, sc.recipe, device)
        # State, tables and compilation first, and for a compiled step past every schedule
        # boundary (its scheduler may recompile there): none of that belongs in a step's time.
        for _ in range(sc.recipe.last_boundary + 2 if provider.compiled else 2):
            step()
        row["wall_ms"], row["host_us"] = measure.wall_ms(step, device, steps, repeats)
        if device.type == "cuda":
            row["gpu_ms"] = measure.gpu_ms(step, device, steps, row["host_us"])
            row["kernels_per_step"] = measure.kernels_per_step(step, device)
            row["syncs_per_step"] = measure.syncs_per_step(step, device)
            row["peak_mb"] = measure.peak_mb(device)
    except providers.NotApplicable as e:
        row["status"] = f"n/a: {e}"
    except Exception as e:  # noqa: BLE001  one provider failing must not end the run
        message = " ".join(str(e).split())[:160]
        row["status"] = f"failed: {type(e).__name__}: {message}"
    finally:
        del params, step
        if provider.compiled:
            torch._dynamo.reset()      # frees the compiled code, its guards and their tensors
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    return row


def _speedups(rows: list[dict]) -> None:
    """fused_lrs rows get ``speedup_vs``: each baseline's time over theirs (> 1: faster)."""
    baselines = [r for r in rows if not r["subject"] and r["wall_ms"]]
    for row in rows:
        if row["subject"] and row["wall_ms"]:
            row["speedup_vs"] = {b["provider"]: b["wall_ms"] / row["wall_ms"] for b in baselines}
            if row["gpu_ms"]:
                row["gpu_speedup_vs"] = {b["provider"]: b["gpu_ms"] / row["gpu_ms"]
                                         for b in baselines if b["gpu_ms"]}
