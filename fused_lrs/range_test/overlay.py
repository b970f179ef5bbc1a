"""A schedule set against a range test (``fused-lrs plot EXPR --range-test result.json``):
where the schedule's peak lr sits on the range test's curve and against its suggestion."""

from __future__ import annotations

import math

import numpy as np

from fused_lrs.range_test.result import LRFindResult, draw


def _loss_at(result: LRFindResult, lr: float) -> float | None:
    """The range test's smoothed loss at ``lr`` (interpolated in log lr), or None outside."""
    lrs = np.log10(result.lrs)
    losses = np.asarray(result.losses, dtype=np.float64)
    if not lrs[0] <= math.log10(lr) <= lrs[-1]:
        return None
    return float(np.interp(math.log10(lr), lrs, losses))


def describe(result: LRFindResult, source: str, lr: list[float]) -> list[str]:
    """Lines that place the schedule's peak lr (the largest of ``lr``) on the range test."""
    peak = max(lr)
    lines = [f"range test {source}: {len(result.lrs)} steps, lr {result.lrs[0]:.3g} .. "
             f"{result.lrs[-1]:.3g}"
             + (f", diverged at step {result.diverged_at}" if result.diverged_at is not None
                else "")]
    if peak <= 0:
        return lines + ["the schedule's lr is never above 0"]
    where = f"schedule peak lr {peak:.4g}"
    if math.isfinite(result.suggestion):
        ratio = peak / result.suggestion
        where += (f" = {ratio:.3g}x the suggestion {result.suggestion:.4g} "
                  f"({math.log10(ratio):+.2f} decades)")
    lines.append(where)
    finite = [(v, x) for v, x in zip(result.losses, result.lrs) if math.isfinite(v)]
    at = _loss_at(result, peak)
    if at is None:
        lines.append(f"the peak lies outside the range test's lrs ({result.lrs[0]:.3g} .. "
                     f"{result.lrs[-1]:.3g})")
    elif finite:
        low, low_lr = min(finite)
        lines.append(f"range-test loss (smoothed) at the peak: {at:.4g}; lowest {low:.4g} at lr "
                     f"{low_lr:.4g}")
    return lines


def draw_overlay(path: str, result: LRFindResult, expr: str, t, lr, base_lr: float):
    """The range test's curve, and the schedule on a second y axis (step ``t`` against the lr
    it uses), so the lrs the schedule visits and its peak read off one lr axis. Writes the
    figure to ``path`` and returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(result, ax)
    steps = ax.twinx()
    lr = np.asarray(lr, dtype=np.float64)
    t = np.asarray(t)
    shown = lr > 0                          # a log axis has no place for lr = 0
    steps.plot(lr[shown], t[shown], color="C2", lw=1.2, label=f"schedule (base_lr {base_lr:g})")
    peak = float(lr.max())
    if peak > 0:
        ax.axvline(peak, color="C2", lw=1.0, ls=":", label=f"schedule peak {peak:.3g}")
    steps.set_ylabel("step t (schedule)")
    ax.set_xscale("log")
    handles = ax.get_legend_handles_labels()
    more = steps.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="best", fontsize=8)
    fig.suptitle(expr, fontsize=9)
    fig.savefig(path, dpi=120)
    return fig
