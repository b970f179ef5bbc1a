"""ReduceLROnPlateau on the device: the ``plateau`` spec and the update ``opt.report(metric)``
makes.

The spec is one SCALE leaf, ``lr = v * scale``, whose scale is not a number of the spec but
run-time state: one value per parameter group, in the optimizer's table (the plateau's row of
each group's block, column ``STATE_COL``; 1.0 at the start). ``report`` updates it with torch
ops on device tensors (``torch.where``), so nothing is read back to the host, and under
``torch.compile`` a new metric is data, not a guard: no recompile. The kernel reads the scale
from the table like any leaf's number; the reference reads it through ``for_group(g, rows)``.

One ``report(metric)`` is one torch ``ReduceLROnPlateau.step(metric)``::

    better = metric < best * (1 - threshold)     mode="min", threshold_mode="rel"
             metric < best - threshold           mode="min", threshold_mode="abs"
             metric > best * (1 + threshold)     mode="max", threshold_mode="rel"
             metric > best + threshold           mode="max", threshold_mode="abs"
    best, bad = (metric, 0) if better else (best, bad + 1)
    if cooldown_counter > 0: cooldown_counter -= 1; bad = 0
    if bad > patience:
        for each group: new = max(lr * factor, min_lr); if lr - new > eps: lr = new
        cooldown_counter = cooldown; bad = 0

``lr`` there is the plateau's own lr, ``base_lr * scale``: for a plateau alone, what torch
leaves in ``group["lr"]`` (equal to torch's within an ulp: the scale is stored, not the lr).
Inside a composition the other schedules act on top: ``warmup(plateau(...), steps)`` ramps to
the base lr, then follows ``base_lr * scale``.

The rest of the state, ``[best, num_bad_epochs, cooldown_counter, last_epoch]``, is one float64
device tensor of the optimizer (floats hold those counts exactly up to 2^53).

After a report, ``opt.last_lr`` shows the new scale: the lr the next step will use (the one the
previous step used is not kept), as torch's ``group["lr"]`` after ``scheduler.step(metric)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from fused_lrs.kernels import kinds
from fused_lrs.schedules.base import (
    Leaf,
    Schedule,
    _children,
    check_choice,
    check_int,
    check_per_group,
    check_real,
    per_group,
)

BEST, BAD, COOLDOWN, LAST_EPOCH = range(4)


@dataclass(frozen=True, repr=False)
class Plateau(Schedule):
    factory = "plateau"
    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float | tuple[float, ...] = per_group(default=0.0)
    eps: float = 1e-8
    # The current scale: state, not an argument (1.0 in a fresh spec; a device tensor once
    # for_group(g, rows) read it from an optimizer's table).
    scale: float | torch.Tensor = field(default=1.0, repr=False, compare=False)

    def _lr(self, t, base):
        return base * self.scale + 0.0 * t

    def leaves(self):
        scale = 1.0 if isinstance(self.scale, torch.Tensor) else self.scale
        return (Leaf(kinds.SCALE, (scale,), tag="plateau"),)

    def _resolved(self, g, scale):
        spec = super()._resolved(g, scale)
        return spec if scale is None else dataclasses.replace(spec, scale=scale)


def plateau(mode: str = "min", factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
            threshold_mode: str = "rel", cooldown: int = 0, min_lr=0.0, eps: float = 1e-8
            ) -> Schedule:
    """torch ``ReduceLROnPlateau``, on the device: the lr is multiplied by ``factor`` when the
    metric has not improved for more than ``patience`` reports. Report the metric with
    ``opt.report(metric)`` (a 0-dim device tensor, or a float): one report is one torch
    ``ReduceLROnPlateau.step(metric)``, made on the device.

    ```text
    lr(t) = base_lr * scale,   scale <- max(scale * factor, min_lr / base_lr) on a plateau
    ```

    Args:
        mode: ``"min"``: the metric should decrease; ``"max"``: increase.
        factor: the multiplier of the lr at each reduction, in [0, 1).
        patience: the number of reports without improvement that are tolerated; the next one
            reduces the lr (>= 0).
        threshold: how much better than the best a metric must be to count as an improvement
            (>= 0).
        threshold_mode: ``"rel"``: better than ``best * (1 -/+ threshold)``; ``"abs"``:
            better than ``best -/+ threshold``.
        cooldown: reports to wait after a reduction before counting bad reports again (>= 0).
        min_lr: the lowest lr a reduction may reach (>= 0); a number, or one per parameter
            group.
        eps: a reduction smaller than ``eps`` is skipped (>= 0).
    """
    fn = "plateau"
    return Plateau(check_choice(fn, "mode", mode, ("min", "max")),
                   check_real(fn, "factor", factor, 0.0, 1.0, hi_open=True),
                   check_int(fn, "patience", patience, 0),
                   check_real(fn, "threshold", threshold, 0.0),
                   check_choice(fn, "threshold_mode", threshold_mode, ("rel", "abs")),
                   check_int(fn, "cooldown", cooldown, 0),
                   check_per_group(fn, "min_lr", min_lr, 0.0),
                   check_real(fn, "eps", eps, 0.0))


def find(spec: Schedule) -> Plateau | None:
    """The plateau inside ``spec`` (a schedule holds at most one), or None."""
    if isinstance(spec, Plateau):
        return spec
    for f in spec.__dataclass_fields__:
        for child in _children(getattr(spec, f)):
            found = find(child)
            if found is not None:
                return found
    return None


def initial_state(spec: Plateau, device) -> torch.Tensor:
    """``[best, num_bad_epochs, cooldown_counter, last_epoch]`` of a fresh torch scheduler."""
    best = math.inf if spec.mode == "min" else -math.inf
    return torch.tensor([best, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)


def report(spec: Plateau, metric: torch.Tensor, state: torch.Tensor, scales: torch.Tensor,
           bases: torch.Tensor, min_lrs: torch.Tensor) -> None:
    """One torch ``step(metric)``, in place on ``state`` and ``scales`` (a [groups] view of the
    table), all on the device. ``bases``, ``min_lrs``: float64 [groups]."""
    best, bad, cooldown, epoch = state.unbind()
    if spec.mode == "min":
        better = (metric < best * (1.0 - spec.threshold) if spec.threshold_mode == "rel"
                  else metric < best - spec.threshold)
    else:
        better = (metric > best * (spec.threshold + 1.0) if spec.threshold_mode == "rel"
                  else metric > best + spec.threshold)
    best = torch.where(better, metric, best)
    bad = torch.where(better, 0.0, bad + 1.0)
    cooling = cooldown > 0
    cooldown = torch.where(cooling, cooldown - 1.0, cooldown)
    bad = torch.where(cooling, 0.0, bad)
    reduce = bad > spec.patience
    lr = bases * scales
    new = torch.maximum(lr * spec.factor, min_lrs)
    scales.copy_(torch.where(reduce & (lr - new > spec.eps), new / bases, scales))
    cooldown = torch.where(reduce, float(spec.cooldown), cooldown)
    bad = torch.where(reduce, 0.0, bad)
    state.copy_(torch.stack([best, bad, cooldown, epoch + 1.0]))
