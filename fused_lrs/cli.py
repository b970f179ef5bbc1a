"""The ``fused-lrs`` command.

    fused-lrs bench --quick
    fused-lrs plot "warmup(cosine(T_max=900), steps=100)" --steps 1000 -o lr.png
    fused-lrs plot "warmup(cosine(T_max=900), steps=100)" --steps 1000 --base-lr 3e-3 \
        --range-test lr_find.json -o lr.png

``plot`` prints a table of the schedule (or, with ``-o``, draws it) for ``t = 0 .. steps - 1``,
the lrs the first ``steps`` optimizer steps use; with ``--range-test`` (a file that
``LRFindResult.save`` wrote) it also says where the schedule's peak lr sits on that range test,
or draws the schedule over its curve. ``bench`` times the optimizer step on real
models' parameter lists against torch's optimizers and schedulers (see fused_lrs/bench).

Every error is one line on stderr and exit code 2, never a traceback: the expression comes from
a user, and ``parse`` only walks it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap

import torch

from fused_lrs import bench as bench_command
from fused_lrs.range_test import LRFindResult, overlay
from fused_lrs.schedules import parse

MAX_STEPS = 10**7  # 80 MB of float64 per evaluation: plenty for a plot, and bounded
TABLE_ROWS = 20
T_MEANS = "t = optimizer steps completed (step k uses lr(k - 1))"


class CommandError(Exception):
    """A mistake in the command line or its environment, said in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit; we print one line
        raise CommandError(f"{message} (see {self.prog} --help)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fused-lrs", description="Fused LR schedule + optimizer tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plot = commands.add_parser("plot", help="tabulate or draw a schedule expression",
                               description="Evaluate a schedule at t = 0 .. steps - 1.")
    plot.add_argument("expr", help='a factory call, e.g. "warmup(cosine(T_max=900), steps=100)"')
    plot.add_argument("--steps", type=int, required=True, help="number of optimizer steps")
    plot.add_argument("--base-lr", type=float, default=1.0, help="group lr (default 1.0)")
    plot.add_argument("-o", "--output", help="write a plot here (PNG) instead of a table")
    plot.add_argument("--range-test", metavar="JSON",
                      help="an lr_find result (LRFindResult.save): place the schedule's peak "
                           "on it, or with -o draw the schedule over its curve")
    plot.add_argument("--triton", action="store_true",
                      help="evaluate with the Triton twin and report its difference to the "
                           "float64 reference")
    plot.set_defaults(run=_plot)

    bench = commands.add_parser("bench", help="time the fused step against torch's optimizers",
                                description="Time one optimizer step, fused_lrs against "
                                            "torch's optimizers and schedulers, on real "
                                            "models' parameter lists; writes bench.json and "
                                            "bench.png.")
    bench_command.add_arguments(bench)
    bench.set_defaults(run=bench_command.execute)
    return parser


def main(argv=None) -> int:
    if not torch.cuda.is_available():
        # The twin then runs in Triton's interpreter, which must be chosen before any kernel
        # module is imported (lr_triton imports fused_lrs.kernels.schedule lazily).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        args = _build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:  # noqa: BLE001  the contract: one line, exit 2, whatever went wrong
        known = isinstance(e, (CommandError, ValueError, TypeError, OSError))
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fused-lrs: error: {message if known else f'{type(e).__name__}: {message}'}",
              file=sys.stderr)
        return 2


def _plot(args) -> int:
    if not 1 <= args.steps <= MAX_STEPS:
        raise CommandError(f"--steps must be in [1, {MAX_STEPS}], got {args.steps}")
    if not math.isfinite(args.base_lr):
        raise CommandError(f"--base-lr must be finite, got {args.base_lr}")
    expr = args.expr.strip()
    spec = parse(expr)
    t = torch.arange(args.steps, dtype=torch.int64)
    lr = spec.lr(t, args.base_lr)
    note = None
    if args.triton:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        twin = spec.lr_triton(t.to(device), args.base_lr).cpu()
        # Relative to each value, but not below 1e-12 of the largest, so an exact 0 against a
        # 1e-18 residue does not read as a huge relative error.
        scale = lr.abs().clamp_min(1e-12 * float(lr.abs().max()) or 1e-300)
        rel = (twin - lr).abs() / scale
        at = int(rel.argmax())
        note = (f"triton ({device}) vs float64 reference: max relative difference "
                f"{float(rel[at]):.3g} at t={at}")
        lr = twin
    range_test = _range_test(args.range_test) if args.range_test else None
    if args.output:
        if range_test is not None:
            _matplotlib()
            overlay.draw_overlay(args.output, range_test, expr, t, lr, args.base_lr)
        else:
            _draw(args.output, expr, t, lr, args.base_lr, args.triton)
        print(f"wrote {args.output}")
    else:
        print(_table(expr, lr, args.base_lr))
    if range_test is not None:
        print("\n".join(overlay.describe(range_test, args.range_test, lr.tolist())))
    if note:
        print(note)
    return 0


def _table(expr: str, lr: torch.Tensor, base_lr: float) -> str:
    n = lr.numel()
    rows = sorted(set(torch.linspace(0, n - 1, min(n, TABLE_ROWS)).round().long().tolist()))
    lo, hi = int(lr.argmin()), int(lr.argmax())
    lines = [expr, f"base_lr = {base_lr:g}; {T_MEANS}", f"{'t':>10}  lr"]
    lines += [f"{i:>10}  {float(lr[i]):.8g}" for i in rows]
    lines += [f"{'min':>10}  {float(lr[lo]):.8g}  at t={lo}",
              f"{'max':>10}  {float(lr[hi]):.8g}  at t={hi}"]
    return "\n".join(lines)


def _range_test(path: str):
    try:
        return LRFindResult.load(path)
    except (KeyError, TypeError, ValueError) as e:   # json's errors are ValueErrors
        raise CommandError(f"--range-test {path}: not an lr_find result ({e})") from None


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("-o needs matplotlib: pip install 'fused-lrs[plot]'") from None


def _draw(path: str, expr: str, t, lr, base_lr: float, triton: bool) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError("-o needs matplotlib: pip install 'fused-lrs[plot]'") from None
    # A bare Figure on an Agg canvas: no pyplot, so no global backend or open-figure state.
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(t.numpy(), lr.numpy(), lw=1.2, label="triton" if triton else "reference (float64)")
    ax.set_title(textwrap.fill(expr, 100), fontsize=9)
    ax.set_xlabel(T_MEANS)
    ax.set_ylabel(f"lr (base_lr = {base_lr:g})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=120)
