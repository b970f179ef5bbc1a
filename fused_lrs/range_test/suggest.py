"""The suggestion: half a decade below the minimum of the range test's loss, smoothed without lag.

The method, and why:
  * **The minimum marks the edge.** Along the ramp the loss falls while each step gains more
    than it undoes; the minimum of the curve is the lr where that stops, the edge of stability
    of the model as the sweep has trained it. It is robust where a derivative is not: on a
    noisy curve the steepest descent (torch-lr-finder's and Lightning's rule) moves with the
    noise and with how fast the model learns at small lrs, not with where learning stops.
  * **Steady training is best below the edge.** Gradient descent on a quadratic of curvature
    ``c`` diverges above ``2 / c`` and converges fastest at ``1 / c``: half the edge. And the
    sweep sees the edge late: a loss takes a few steps to blow up while the lr keeps rising
    (at the default 12.5 steps a decade, 2 steps is a factor 1.45). Together, about a factor
    3: the suggestion is ``10 ** -0.5`` (1/3.16) times the lr at the minimum. fastai's first
    rule, a decade below the minimum, is the same idea with a larger margin.
  * **Smoothed without lag.** A moving average delays the curve by its window: fastai's and
    Lightning's ``beta = 0.98`` by ~49 steps, 4 decades at 12.5 steps a decade, and
    torch-lr-finder's 0.05 by ~19 steps, 1.5 decades, which moves a minimum (and a steepest
    point) to larger lrs. The suggestion uses a centred Gaussian over log10 lr instead, of
    ``SMOOTH_DECADES`` (0.4 decade; 5 steps at the default density), which locates the
    minimum to within the ~0.25 decade that matters, renormalised at both ends (no bias at
    the start, Lightning-AI/pytorch-lightning#14167), with the diverged step left out (its
    loss would drag the curve up around the minimum).
Measured against the best constant lr of 100-step trainings on the three problems of
tests/range_test_problems.py (an MLP with AdamW, a CNN with SGD and momentum, a transformer LM
with Adam), over 8 seeds each: 0.20 decade from it on average, torch-lr-finder's suggestion 0.37;
0.25 against 0.75 on the CNN (benchmarks/results/lr_find_suggestion_cpu.json). In the
exploratory runs that preceded it (3 seeds, ground truths of 100 to 300 steps), the other rules
were farther on average: the steepest descent of this curve 0.4-0.7 decade, a decade below the
minimum 0.45-0.8, the minimum itself 0.3-0.75.

The online smoothing that drives the divergence stop runs on the device during the sweep
(``tracker.py``); this one needs the whole curve, so it runs once, on the host, on the one
read of the losses.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

#: The Gaussian's standard deviation, in decades of lr.
SMOOTH_DECADES = 0.4
#: How far below the lr at the smoothed minimum the suggestion is, in decades.
BELOW_MINIMUM_DECADES = 0.5
#: Fewer points than this (before the diverged step) make no suggestion.
MIN_POINTS = 5


def smooth(lrs: list[float], raw: list[float], diverged_at: int | None) -> list[float]:
    """The losses smoothed by a centred Gaussian over log10 lr (``SMOOTH_DECADES``), one per
    entry of ``lrs``; the diverged step and any non-finite loss are left out of every
    average (a smoothed value there comes from its neighbours)."""
    y = np.asarray(raw, dtype=np.float64)
    n = len(y)
    valid = np.isfinite(y)
    if diverged_at is not None:
        valid[diverged_at:] = False
    if n < 2:
        return [float(v) if ok else math.nan for v, ok in zip(y, valid)]
    # The ramp is exponential: lrs are evenly spaced in log10, so the kernel is one array.
    spacing = (math.log10(lrs[-1]) - math.log10(lrs[0])) / (n - 1)
    sigma = SMOOTH_DECADES / spacing
    half = min(n - 1, math.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)

    def blur(v):
        return np.convolve(np.pad(v, half), kernel, mode="valid")
    weight = blur(valid.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = blur(np.where(valid, y, 0.0)) / weight
    return [float(v) for v in np.where(weight > 0, out, math.nan)]


def suggest(lrs: list[float], losses: list[float], diverged_at: int | None) -> float:
    """``10 ** -BELOW_MINIMUM_DECADES`` times the lr where the smoothed ``losses`` are lowest,
    looking only before the diverged step; NaN, with a warning, when fewer than
    ``MIN_POINTS`` steps came before it. Warns when the minimum sits at an end of the sweep
    (the range missed the edge)."""
    end = len(losses) if diverged_at is None else diverged_at
    curve = np.asarray(losses[:end], dtype=np.float64)
    if end < MIN_POINTS or not np.isfinite(curve).any():
        warnings.warn(f"lr_find: {end} steps before the loss diverged, too few to suggest an "
                      "lr; lower start_lr or run more steps", stacklevel=3)
        return math.nan
    best = int(np.nanargmin(curve))
    if best == end - 1 and diverged_at is None:
        warnings.warn(f"lr_find: the loss was still falling at end_lr={lrs[-1]:.3g}; the "
                      "suggestion may be too low, raise end_lr", stacklevel=3)
    elif best == 0:
        warnings.warn(f"lr_find: the loss never fell below its value at start_lr="
                      f"{lrs[0]:.3g}; lower start_lr, or check the model and loss_fn",
                      stacklevel=3)
    return lrs[best] * 10.0 ** -BELOW_MINIMUM_DECADES
