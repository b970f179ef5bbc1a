"""Monotone decays: constant, step, multistep, exponential, linear, polynomial, inverse_sqrt.

Each class is a frozen spec; its ``_lr`` is the peer's closed form, in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fused_lrs.kernels import kinds
from fused_lrs.schedules.base import INF, Leaf, Schedule, check_bool, check_int, check_real

# ANNEAL leaf parameters: a, b, length, shape, relative (1 = multiply the incoming lr), pct_max.


def anneal_leaf(a: float, b: float, length: float, shape: float = kinds.SHAPE_LINEAR,
                relative: bool = True, pct_max: float = 1.0, **window) -> Leaf:
    return Leaf(kinds.ANNEAL, (a, b, length, shape, float(relative), pct_max), **window)


@dataclass(frozen=True, repr=False)
class Constant(Schedule):
    factory = "constant"
    factor: float = 1.0
    total_iters: int = 0

    def _lr(self, t, base):
        factor = torch.full_like(t, self.factor)
        return base * torch.where(t < self.total_iters, factor, 1.0)

    def leaves(self):
        if self.factor == 1.0 or self.total_iters == 0:
            return ()
        return (Leaf(kinds.SCALE, (self.factor,), hi=self.total_iters),)


def constant(factor: float = 1.0, total_iters: int = 0) -> Schedule:
    """torch ``ConstantLR``: the base lr scaled by ``factor`` for the first ``total_iters``
    steps, then the base lr. The defaults are the plain constant schedule.

    ```text
    lr(t) = base_lr * factor    for t < total_iters
            base_lr             for t >= total_iters
    ```

    Args:
        factor: the multiplier of the base lr while ``t < total_iters``, in [0, 1].
        total_iters: the number of steps ``factor`` applies to (>= 0).
    """
    return Constant(check_real("constant", "factor", factor, 0.0, 1.0),
                    check_int("constant", "total_iters", total_iters, 0))


@dataclass(frozen=True, repr=False)
class Exponential(Schedule):
    factory = "exponential"
    gamma: float | None = None
    rate: float | None = None
    decay_steps: int = 1
    staircase: bool = False

    @property
    def log_gamma(self) -> float:
        return math.log(self.gamma) if self.gamma is not None else -self.rate

    def _lr(self, t, base):
        g = t / self.decay_steps
        if self.staircase:
            g = torch.floor(g)
        if self.gamma is not None:
            return base * self.gamma ** g
        return base * torch.exp(-self.rate * g)

    def leaves(self):
        return (Leaf(kinds.EXP, (self.log_gamma, self.decay_steps, float(self.staircase))),)


def exponential(gamma: float | None = None, *, rate: float | None = None, decay_steps: int = 1,
                staircase: bool = False) -> Schedule:
    """torch ``ExponentialLR`` (with the defaults), or a continuous exponential decay.

    ```text
    lr(t) = base_lr * gamma ** (t / decay_steps)        given gamma
            base_lr * exp(-rate * t / decay_steps)      given rate
    ```

    With ``staircase``, ``t / decay_steps`` is floored: the lr drops once every
    ``decay_steps`` steps.

    Args:
        gamma: the multiplier per ``decay_steps`` steps (> 0), torch's ``gamma``.
        rate: instead of ``gamma``, the continuous decay rate ``k`` of ``e^(-k t)`` (>= 0);
            give exactly one of the two.
        decay_steps: the steps over which the lr is multiplied by ``gamma`` once (>= 1).
        staircase: floor the exponent, so the lr changes only every ``decay_steps`` steps.
    """
    if (gamma is None) == (rate is None):
        raise ValueError("exponential: give exactly one of gamma (ExponentialLR) or rate "
                         f"(continuous e^(-rate*t)), got gamma={gamma!r}, rate={rate!r}")
    if gamma is not None:
        gamma = check_real("exponential", "gamma", gamma, 0.0, INF, lo_open=True)
    else:
        rate = check_real("exponential", "rate", rate, 0.0)
    return Exponential(gamma, rate, check_int("exponential", "decay_steps", decay_steps, 1),
                       check_bool("exponential", "staircase", staircase))


@dataclass(frozen=True, repr=False)
class Step(Schedule):
    factory = "step"
    step_size: int
    gamma: float = 0.1

    def _lr(self, t, base):
        return base * self.gamma ** torch.floor(t / self.step_size)

    def leaves(self):
        return (Leaf(kinds.EXP, (math.log(self.gamma), self.step_size, 1.0)),)


def step(step_size: int, gamma: float = 0.1) -> Schedule:
    """torch ``StepLR``: the lr is multiplied by ``gamma`` every ``step_size`` steps.

    ```text
    lr(t) = base_lr * gamma ** floor(t / step_size)
    ```

    Args:
        step_size: the number of steps between two decays (>= 1).
        gamma: the multiplier applied at each decay (> 0).
    """
    return Step(check_int("step", "step_size", step_size, 1),
                check_real("step", "gamma", gamma, 0.0, INF, lo_open=True))


@dataclass(frozen=True, repr=False)
class MultiStep(Schedule):
    factory = "multistep"
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def _lr(self, t, base):
        # A milestone listed k times multiplies by gamma**k, as torch's MultiStepLR does. (A sum
        # of comparisons rather than searchsorted: no milestone tensor to copy to the device.)
        passed = sum((t >= m).to(torch.float64) for m in self.milestones) + 0.0 * t
        return base * self.gamma ** passed

    def leaves(self):
        return tuple(Leaf(kinds.SCALE, (self.gamma,), lo=m) for m in self.milestones)


def multistep(milestones, gamma: float = 0.1) -> Schedule:
    """torch ``MultiStepLR``: the lr is multiplied by ``gamma`` at each milestone.

    ```text
    lr(t) = base_lr * gamma ** (number of milestones m with m <= t)
    ```

    A milestone listed twice counts twice, as in torch.

    Args:
        milestones: the steps at which the lr decays, integers >= 1, in any order.
        gamma: the multiplier applied at each milestone (> 0).
    """
    try:
        ms = tuple(milestones)
    except TypeError:
        raise ValueError(f"multistep: milestones must be a list of integers >= 1, "
                         f"got {milestones!r}") from None
    ms = [check_int("multistep", "each milestone", m, 1) for m in ms]
    return MultiStep(tuple(sorted(ms)), check_real("multistep", "gamma", gamma, 0.0, INF,
                                                   lo_open=True))


@dataclass(frozen=True, repr=False)
class Linear(Schedule):
    factory = "linear"
    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def _lr(self, t, base):
        progress = torch.clamp(t, max=self.total_iters) / self.total_iters
        return base * (self.start_factor + (self.end_factor - self.start_factor) * progress)

    def leaves(self):
        return (anneal_leaf(self.start_factor, self.end_factor, self.total_iters),)


def linear(start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
           ) -> Schedule:
    """torch ``LinearLR``: the factor of the base lr moves linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then stays at ``end_factor``.

    ```text
    f = min(t, total_iters) / total_iters
    lr(t) = base_lr * (start_factor + (end_factor - start_factor) * f)
    ```

    Args:
        start_factor: the factor at ``t = 0``, in [0, 1]; 0 is allowed here (torch needs > 0).
        end_factor: the factor from ``t = total_iters`` on, in [0, 1].
        total_iters: the number of steps of the ramp (>= 1).
    """
    return Linear(check_real("linear", "start_factor", start_factor, 0.0, 1.0),
                  check_real("linear", "end_factor", end_factor, 0.0, 1.0),
                  check_int("linear", "total_iters", total_iters, 1))


@dataclass(frozen=True, repr=False)
class Polynomial(Schedule):
    factory = "polynomial"
    total_iters: int = 5
    power: float = 1.0
    lr_end: float = 0.0

    def _lr(self, t, base):
        remaining = 1.0 - torch.clamp(t, max=self.total_iters) / self.total_iters
        return self.lr_end + (base - self.lr_end) * remaining ** self.power

    def leaves(self):
        return (Leaf(kinds.POLY, (self.total_iters, self.power, self.lr_end)),)


def polynomial(total_iters: int = 5, power: float = 1.0, lr_end: float = 0.0) -> Schedule:
    """torch ``PolynomialLR`` (with ``lr_end=0``), and the decay of HF's
    ``get_polynomial_decay_schedule_with_warmup``: from the base lr down to ``lr_end``.

    ```text
    lr(t) = lr_end + (base_lr - lr_end) * (1 - min(t, total_iters) / total_iters) ** power
    ```

    Args:
        total_iters: the number of steps of the decay; ``lr_end`` holds after it (>= 1).
        power: the exponent of the polynomial (> 0); 1 is a linear decay.
        lr_end: the absolute lr at the end of the decay (>= 0), HF's ``lr_end``; not scaled by
            the group's lr.
    """
    return Polynomial(check_int("polynomial", "total_iters", total_iters, 1),
                      check_real("polynomial", "power", power, 0.0, INF, lo_open=True),
                      check_real("polynomial", "lr_end", lr_end, 0.0))


@dataclass(frozen=True, repr=False)
class InverseSqrt(Schedule):
    factory = "inverse_sqrt"
    num_warmup_steps: int = 0
    timescale: int | None = None

    @property
    def _timescale(self) -> int:
        return self.timescale if self.timescale is not None else (self.num_warmup_steps or 10_000)

    def _lr(self, t, base):
        w = self.num_warmup_steps
        warm = t / max(1, w)
        shift = self._timescale - w
        decay = 1.0 / torch.sqrt((t + shift) / self._timescale)
        return base * torch.where(t < w, warm, decay)

    def leaves(self):
        w = self.num_warmup_steps
        decay = Leaf(kinds.INV_SQRT, (self._timescale, self._timescale - w), lo=w)
        return ((anneal_leaf(0.0, 1.0, w, hi=w),) if w else ()) + (decay,)


def inverse_sqrt(num_warmup_steps: int = 0, timescale: int | None = None) -> Schedule:
    """HF ``get_inverse_sqrt_schedule``: a linear warmup from 0, then a decay as the inverse
    square root of the step.

    ```text
    w = num_warmup_steps
    lr(t) = base_lr * t / w                                    for t < w
            base_lr / sqrt((t + timescale - w) / timescale)    for t >= w
    ```

    Args:
        num_warmup_steps: the steps of the linear warmup (>= 0).
        timescale: the time scale of the decay (>= 1): ``timescale`` steps after the warmup
            the lr is ``base_lr / sqrt(2)``. Default ``num_warmup_steps``, or 10,000 when there
            is no warmup, as in HF.
    """
    check_int("inverse_sqrt", "num_warmup_steps", num_warmup_steps, 0)
    if timescale is not None:
        check_int("inverse_sqrt", "timescale", timescale, 1)
    return InverseSqrt(num_warmup_steps, timescale)
