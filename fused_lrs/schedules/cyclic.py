"""Cyclical rates: torch's CyclicLR and OneCycleLR. Both set absolute lrs, ignoring the group's
lr, as their torch peers do. As torch's, they take one value per group where torch does
(``cyclic``'s ``base_lr`` and ``max_lr``, ``one_cycle``'s ``max_lr``): see ``per_group`` in
``base.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fused_lrs.kernels import kinds
from fused_lrs.schedules.base import (
    INF,
    Leaf,
    Schedule,
    check_bool,
    check_choice,
    check_int,
    check_per_group,
    check_real,
    checked_groups,
    per_group,
)
from fused_lrs.schedules.decay import anneal_leaf

_MODES = {"triangular": kinds.MODE_TRIANGULAR, "triangular2": kinds.MODE_TRIANGULAR2,
          "exp_range": kinds.MODE_EXP_RANGE}


@dataclass(frozen=True, repr=False)
class Cyclic(Schedule):
    factory = "cyclic"
    base_lr: float | tuple[float, ...] = per_group()
    max_lr: float | tuple[float, ...] = per_group()
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0

    @property
    def _sizes(self) -> tuple[float, float]:
        down = self.step_size_up if self.step_size_down is None else self.step_size_down
        total = float(self.step_size_up + down)
        return total, self.step_size_up / total

    def _lr(self, t, base):
        total, ratio = self._sizes
        cycle = torch.floor(1 + t / total)
        x = 1.0 + t / total - cycle
        scale = torch.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        if self.mode == "triangular":
            amplitude = torch.ones_like(t)
        elif self.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:  # exp_range scales by gamma ** iterations
            amplitude = self.gamma ** t
        return self.base_lr + (self.max_lr - self.base_lr) * scale * amplitude + 0.0 * base

    def leaves(self):
        total, ratio = self._sizes
        return (Leaf(kinds.CYCLIC, (self.base_lr, self.max_lr, total, ratio, _MODES[self.mode],
                                    math.log(self.gamma))),)


def cyclic(base_lr: float, max_lr: float, step_size_up: int = 2000,
           step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0
           ) -> Schedule:
    """torch ``CyclicLR``: the lr cycles between ``base_lr`` and ``max_lr``, absolute values
    that ignore the group's lr, as torch's do. Built-in modes only: a custom ``scale_fn`` has no
    device twin.

    ```text
    cycle = floor(1 + t / (step_size_up + step_size_down))
    x     = 1 + t / (step_size_up + step_size_down) - cycle      (position in the cycle, 0..1)
    r     = step_size_up / (step_size_up + step_size_down)
    scale = x / r if x <= r else (x - 1) / (r - 1)                (0 -> 1 -> 0)
    lr(t) = base_lr + (max_lr - base_lr) * scale * amplitude
    amplitude = 1 (triangular), 1 / 2 ** (cycle - 1) (triangular2), gamma ** t (exp_range)
    ```

    Args:
        base_lr: the lower bound of the cycle (>= 0); a number, or a list with one per
            parameter group.
        max_lr: the upper bound of the cycle (>= 0); a number, or one per parameter group.
        step_size_up: the steps from ``base_lr`` up to ``max_lr`` (>= 1).
        step_size_down: the steps from ``max_lr`` back down (>= 1); default
            ``step_size_up``.
        mode: ``"triangular"``, ``"triangular2"`` (the amplitude halves every cycle) or
            ``"exp_range"`` (the amplitude decays as ``gamma ** t``).
        gamma: the decay of the amplitude per step in ``"exp_range"`` mode (> 0).
    """
    fn = "cyclic"
    if step_size_down is not None:
        check_int(fn, "step_size_down", step_size_down, 1)
    return checked_groups(Cyclic(
        check_per_group(fn, "base_lr", base_lr, 0.0),
        check_per_group(fn, "max_lr", max_lr, 0.0),
        check_int(fn, "step_size_up", step_size_up, 1), step_size_down,
        check_choice(fn, "mode", mode, tuple(_MODES)),
        check_real(fn, "gamma", gamma, 0.0, INF, lo_open=True)))



class _Phased(Schedule):
    """torch's OneCycleLR machinery: phases of annealing between absolute values. A subclass
    gives ``values()`` (the value at each phase boundary), ``total_steps``, ``pct_start``,
    ``three_phase`` and ``anneal_strategy``."""

    def phases(self) -> list[tuple[float, float, float]]:
        """(end_step, start value, end value) per phase, as torch's OneCycleLR builds them."""
        values = self.values()
        return [(end, a, b) for end, a, b in zip(self.ends(), values, values[1:])]

    def ends(self) -> list[float]:
        """The step each phase ends at, as torch's OneCycleLR computes them."""
        up_end = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            return [up_end, float(2 * self.pct_start * self.total_steps) - 2,
                    self.total_steps - 1]
        return [up_end, self.total_steps - 1]

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr(self, t, base):
        # torch raises past total_steps; the spec holds the last value torch would give.
        t = torch.clamp(t, max=self.total_steps)
        lr = torch.zeros_like(t)
        start = 0.0
        chosen = torch.zeros_like(t, dtype=torch.bool)
        for i, (end, start_lr, end_lr) in enumerate(self.phases()):
            here = ~chosen & ((t <= end) | (i == len(self.phases()) - 1))
            lr = torch.where(here, self._anneal(start_lr, end_lr, (t - start) / (end - start)), lr)
            chosen |= here
            start = end
        return lr + 0.0 * base

    def leaves(self):
        shape = kinds.SHAPE_COS if self.anneal_strategy == "cos" else kinds.SHAPE_LINEAR
        phases = self.phases()
        out, start = [], 0.0
        for i, (end, start_lr, end_lr) in enumerate(phases):
            last = i == len(phases) - 1
            # Phase i owns the integer steps start < t <= end (torch's `step_num <= end_step`).
            out.append(anneal_leaf(
                start_lr, end_lr, end - start, shape, relative=False,
                pct_max=(self.total_steps - start) / (end - start) if last else 1.0,
                lo=math.floor(start) + 1 if i else -INF,
                hi=INF if last else math.floor(end) + 1, shift=start))
            start = end
        return tuple(out)


@dataclass(frozen=True, repr=False)
class OneCycle(_Phased):
    factory = "one_cycle"
    max_lr: float | tuple[float, ...] = per_group()
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def values(self) -> list[float]:
        initial = self.max_lr / self.div_factor
        minimum = initial / self.final_div_factor
        if self.three_phase:
            return [initial, self.max_lr, initial, minimum]
        return [initial, self.max_lr, minimum]


@dataclass(frozen=True, repr=False)
class OneCycleMomentum(_Phased):
    factory = "one_cycle_momentum"
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    three_phase: bool = False

    def values(self) -> list[float]:
        # The momentum runs against the lr: max -> base -> max (-> max), torch's phases.
        lo, hi = self.base_momentum, self.max_momentum
        return [hi, lo, hi, hi] if self.three_phase else [hi, lo, hi]


def _check_phases(fn: str, spec: _Phased) -> _Phased:
    start = 0.0
    for end in spec.ends():
        if not end > start:
            raise ValueError(f"{fn}: pct_start={spec.pct_start} with total_steps="
                             f"{spec.total_steps} leaves a phase of no length (ends at step "
                             f"{end}, starts after {start}); every phase needs at least one step")
        start = end
    return spec


def one_cycle_momentum(total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
                       base_momentum: float = 0.85, max_momentum: float = 0.95,
                       three_phase: bool = False) -> Schedule:
    """The momentum of torch's ``OneCycleLR(cycle_momentum=True)``, for an optimizer's
    ``momentum_schedule=`` (Adam's beta1, SGD's momentum). Absolute values: from
    ``max_momentum`` down to ``base_momentum`` while the lr rises, and back up while it falls,
    over the phases of ``one_cycle`` with the same arguments:

    ```text
    momentum(t) = anneal(max_momentum, base_momentum, t / e1)                for t <= e1
                  anneal(base_momentum, max_momentum, (t - e1) / (e2 - e1))  after
    ```

    with ``e1``, ``e2`` and ``anneal`` as in ``one_cycle``.

    Args:
        total_steps: the length of the cycle in steps (>= 1); the last value holds after it.
        pct_start: the fraction of ``total_steps`` spent on the first phase, in [0, 1].
        anneal_strategy: ``"cos"`` or ``"linear"`` annealing within each phase.
        base_momentum: the momentum at the peak of the lr, in [0, 1].
        max_momentum: the momentum at the start and the end, in [0, 1].
        three_phase: torch's three-phase cycle (down, up, then held at ``max_momentum``).
    """
    fn = "one_cycle_momentum"
    return _check_phases(fn, OneCycleMomentum(
        check_int(fn, "total_steps", total_steps, 1),
        check_real(fn, "pct_start", pct_start, 0.0, 1.0),
        check_choice(fn, "anneal_strategy", anneal_strategy, ("cos", "linear")),
        check_real(fn, "base_momentum", base_momentum, 0.0, 1.0),
        check_real(fn, "max_momentum", max_momentum, 0.0, 1.0),
        check_bool(fn, "three_phase", three_phase)))


def cyclic_momentum(base_momentum: float = 0.8, max_momentum: float = 0.9,
                    step_size_up: int = 2000, step_size_down: int | None = None,
                    mode: str = "triangular", gamma: float = 1.0) -> Schedule:
    """The momentum of torch's ``CyclicLR(cycle_momentum=True)``, for ``momentum_schedule=``:
    the momentum falls while the lr rises.

    ```text
    momentum(t) = max_momentum - (max_momentum - base_momentum) * scale * amplitude
    ```

    with ``scale`` and ``amplitude`` as in ``cyclic``: it is ``cyclic`` run from
    ``max_momentum`` towards ``base_momentum``.

    Args:
        base_momentum: the momentum at the peak of the lr, in [0, 1].
        max_momentum: the momentum at the bottom of the lr, in [0, 1].
        step_size_up: the steps of the lr's rise, the momentum's fall (>= 1).
        step_size_down: the steps of the lr's fall (>= 1); default ``step_size_up``.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``, as in ``cyclic``.
        gamma: the amplitude's decay per step in ``"exp_range"`` mode (> 0).
    """
    fn = "cyclic_momentum"
    if step_size_down is not None:
        check_int(fn, "step_size_down", step_size_down, 1)
    return cyclic(check_real(fn, "max_momentum", max_momentum, 0.0, 1.0),
                  check_real(fn, "base_momentum", base_momentum, 0.0, 1.0),
                  check_int(fn, "step_size_up", step_size_up, 1), step_size_down,
                  check_choice(fn, "mode", mode, tuple(_MODES)),
                  check_real(fn, "gamma", gamma, 0.0, INF, lo_open=True))


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3,
              anneal_strategy: str = "cos", div_factor: float = 25.0,
              final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """torch ``OneCycleLR``: the 1cycle policy, absolute values that ignore the group's lr, as
    torch's do. The lr rises from ``initial = max_lr / div_factor`` to ``max_lr`` over the
    first ``pct_start * total_steps`` steps, then anneals down to ``initial /
    final_div_factor`` at ``total_steps - 1``:

    ```text
    phase ends  e1 = pct_start * total_steps - 1,  e2 = total_steps - 1
    lr(t) = anneal(initial, max_lr, t / e1)                      for t <= e1
            anneal(max_lr, initial / final_div_factor,
                   (t - e1) / (e2 - e1))                          after
    anneal(a, b, p) = b + (a - b) * (1 + cos(pi * p)) / 2         ("cos")
                      a + (b - a) * p                             ("linear")
    ```

    With ``three_phase`` the lr goes up, back down to ``initial`` by ``2 * pct_start *
    total_steps - 2``, then down to the minimum. Past ``total_steps`` (where torch raises) the
    last value holds.

    Args:
        max_lr: the peak lr (> 0); a number, or a list with one per parameter group.
        total_steps: the length of the cycle in steps (>= 1).
        pct_start: the fraction of ``total_steps`` spent rising, in [0, 1]; every phase needs
            at least one step.
        anneal_strategy: ``"cos"`` or ``"linear"`` annealing within each phase.
        div_factor: ``max_lr / div_factor`` is the lr at ``t = 0`` (> 0).
        final_div_factor: the last lr is ``max_lr / div_factor / final_div_factor`` (> 0).
        three_phase: torch's three-phase variant (up, back down to the initial lr, then to
            the minimum).
    """
    fn = "one_cycle"
    return _check_phases(fn, OneCycle(check_per_group(fn, "max_lr", max_lr, 0.0, INF,
                                                      lo_open=True),
                    check_int(fn, "total_steps", total_steps, 1),
                    check_real(fn, "pct_start", pct_start, 0.0, 1.0),
                    check_choice(fn, "anneal_strategy", anneal_strategy, ("cos", "linear")),
                    check_real(fn, "div_factor", div_factor, 0.0, INF, lo_open=True),
                    check_real(fn, "final_div_factor", final_div_factor, 0.0, INF, lo_open=True),
                    check_bool(fn, "three_phase", three_phase)))
