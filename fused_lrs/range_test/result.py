"""``LRFindResult``: what a range test found, as Python lists, with its plot and a JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass


@dataclass
class LRFindResult:
    """The range test's curve and its suggestion.

    Attributes:
        lrs: the lr each step used, up to and with the first diverged step.
        losses: the losses smoothed for the suggestion (``suggest.smooth``: centred, so the
            curve does not lag behind the lr), one per entry of ``lrs``.
        raw_losses: each step's loss as computed (averaged over the ranks under DDP).
        suggestion: the suggested lr (``suggest.py`` says how it is chosen), or NaN when the
            curve is too short to choose one.
        diverged_at: the step at which the loss diverged (the last entry of ``lrs``), or None
            when it never did.
        start_lr, end_lr, steps: the sweep that was asked for.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float
    diverged_at: int | None
    start_lr: float
    end_lr: float
    steps: int

    def save(self, path: str) -> None:
        """Write the result as JSON (``fused-lrs plot --range-test PATH`` reads it). A NaN
        (a suggestion that could not be made, a NaN loss) is written as null."""
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else v
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        with open(path, "w") as f:
            json.dump({k: clean(v) for k, v in asdict(self).items()}, f, indent=1,
                      allow_nan=True)

    @classmethod
    def load(cls, path: str) -> LRFindResult:
        """Read a result that ``save`` wrote."""
        with open(path) as f:
            data = json.load(f)
        missing = [k for k in cls.__dataclass_fields__ if k not in data]
        if missing:
            raise ValueError(f"{path}: not an lr_find result (no {', '.join(missing)})")

        def num(v):
            return math.nan if v is None else float(v)
        return cls(lrs=[num(x) for x in data["lrs"]], losses=[num(x) for x in data["losses"]],
                   raw_losses=[num(x) for x in data["raw_losses"]],
                   suggestion=num(data["suggestion"]), diverged_at=data["diverged_at"],
                   start_lr=float(data["start_lr"]), end_lr=float(data["end_lr"]),
                   steps=int(data["steps"]))

    def plot(self, path: str | None = None, ax=None):
        """Draw the loss against the lr on a log axis, raw and smoothed, the suggestion
        marked. ``path``: also write the figure there (PNG, or any format matplotlib knows by
        the extension). ``ax``: draw into these axes instead of a new figure. Returns the
        axes. Needs matplotlib (``pip install 'fused-lrs[plot]'``)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if ax is None:
            # A bare Figure on an Agg canvas: no pyplot, so no global backend or figure state.
            fig = Figure(figsize=(7, 4.5), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
        draw(self, ax)
        if path is not None:
            ax.figure.savefig(path, dpi=120)
        return ax


def draw(result: LRFindResult, ax) -> None:
    """The range-test curve on ``ax``: raw losses faint, smoothed losses, the suggestion."""
    ax.plot(result.lrs, result.raw_losses, lw=0.8, alpha=0.35, color="C0", label="loss (raw)")
    ax.plot(result.lrs, result.losses, lw=1.6, color="C0", label="loss (smoothed)")
    if math.isfinite(result.suggestion):
        ax.axvline(result.suggestion, color="C3", lw=1.2, ls="--",
                   label=f"suggestion {result.suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:
        # A diverged tail would squash the curve: the axis ends half the curve's descent
        # above the highest of its first tenth.
        low, top = min(finite), max(finite[: max(1, len(finite) // 10)])
        ax.set_ylim(low - 0.05 * (top - low), top + 0.5 * (top - low) + 1e-12)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    title = f"lr range test: {len(result.lrs)} of {result.steps} steps"
    if result.diverged_at is not None:
        title += f", diverged at step {result.diverged_at}"
    ax.set_title(title, fontsize=9)
