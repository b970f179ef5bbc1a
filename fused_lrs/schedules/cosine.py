"""Cosine annealing, with and without restarts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fused_lrs.kernels import kinds
from fused_lrs.schedules.base import INF, Leaf, Schedule, check_int, check_real
from fused_lrs.schedules.decay import anneal_leaf


@dataclass(frozen=True, repr=False)
class Cosine(Schedule):
    factory = "cosine"
    T_max: int
    eta_min: float = 0.0
    num_cycles: float = 0.5
    min_lr_rate: float = 0.0

    def _lr(self, t, base):
        # torch CosineAnnealingLR when num_cycles = 0.5; past T_max the cosine keeps going and the
        # lr climbs back, exactly as torch's recursive form does. HF's num_cycles and
        # min_lr_rate generalise it: a floor of eta_min + min_lr_rate * base.
        # The phase is rounded as HF rounds it, pi * num_cycles * 2 * (t / T_max): far out (t =
        # 10^7 is 10^5 periods) a different rounding of the phase moves the lr by parts in 1e9
        # near its minimum. HF's LambdaLR is this closed form at every step; torch's cosine is a
        # recursion, within 1e-7 of any rounding of it.
        eta = self.eta_min + self.min_lr_rate * base
        phase = math.pi * self.num_cycles * 2.0 * (t / self.T_max)
        return eta + (base - eta) * (1.0 + torch.cos(phase)) / 2.0

    def leaves(self):
        omega = math.pi * 2.0 * self.num_cycles / self.T_max
        return (Leaf(kinds.COSINE, (omega, self.eta_min, self.min_lr_rate)),)


def cosine(T_max: int, eta_min: float = 0.0, *, num_cycles: float = 0.5,
           min_lr_rate: float = 0.0) -> Schedule:
    """torch ``CosineAnnealingLR``: ``eta_min + (base - eta_min) * (1 + cos(pi t / T_max)) / 2``,
    past ``T_max`` included. ``num_cycles`` and ``min_lr_rate`` are HF's
    ``get_cosine_with_min_lr_schedule_with_warmup`` options (``min_lr`` there is ``eta_min``)."""
    return Cosine(check_int("cosine", "T_max", T_max, 1),
                  check_real("cosine", "eta_min", eta_min, 0.0),
                  check_real("cosine", "num_cycles", num_cycles, 0.0, INF, lo_open=True),
                  check_real("cosine", "min_lr_rate", min_lr_rate, 0.0, 1.0))


@dataclass(frozen=True, repr=False)
class CosineRestarts(Schedule):
    factory = "cosine_restarts"
    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0
    num_cycles: float | None = None

    def _cycle_position(self, t):
        """(steps into the current cycle, length of the current cycle), as torch counts them."""
        if self.T_mult == 1:
            return torch.remainder(t, self.T_0), torch.full_like(t, self.T_0)
        # Cycle n starts at T_0 (T_mult^n - 1) / (T_mult - 1). The log guess can round across a
        # boundary, so it is corrected with exact integer arithmetic.
        m = self.T_mult
        n = torch.floor(torch.log(t / self.T_0 * (m - 1) + 1) / math.log(m))

        def bounds(n):
            power = torch.round(m ** n)
            return self.T_0 * (power - 1) / (m - 1), self.T_0 * power

        start, length = bounds(n)
        n = torch.where(t >= start + length, n + 1, torch.where(t < start, n - 1, n))
        start, length = bounds(n)
        return t - start, length

    def _lr(self, t, base):
        if self.num_cycles is None:
            t_cur, t_i = self._cycle_position(t)
            frac = t_cur / t_i
        else:  # HF hard restarts: num_cycles cycles over T_0 steps, then eta_min.
            frac = torch.remainder(self.num_cycles * (t / self.T_0), 1.0)
        lr = self.eta_min + (base - self.eta_min) * (1.0 + torch.cos(math.pi * frac)) / 2.0
        if self.num_cycles is not None:
            lr = torch.where(t >= self.T_0, self.eta_min + 0.0 * base, lr)
        return lr

    def leaves(self):
        cycles = 1.0 if self.num_cycles is None else self.num_cycles
        main = Leaf(kinds.COSINE_RESTARTS, (self.T_0, self.T_mult, self.eta_min, cycles))
        if self.num_cycles is None:
            return (main,)
        return (main, anneal_leaf(self.eta_min, self.eta_min, 1.0, relative=False, lo=self.T_0))


def cosine_restarts(T_0: int, T_mult: int = 1, eta_min: float = 0.0, *,
                    num_cycles: float | None = None) -> Schedule:
    """torch ``CosineAnnealingWarmRestarts``: cosine from the base lr to ``eta_min`` over
    ``T_0`` steps, restarting with cycles ``T_mult`` times longer each time.

    With ``num_cycles`` (HF's ``get_cosine_with_hard_restarts_schedule_with_warmup``):
    ``num_cycles`` equal cycles over ``T_0`` steps, then ``eta_min``."""
    fn = "cosine_restarts"
    T_0 = check_int(fn, "T_0", T_0, 1)
    T_mult = check_int(fn, "T_mult", T_mult, 1)
    if num_cycles is not None:
        num_cycles = check_real(fn, "num_cycles", num_cycles, 0.0, INF, lo_open=True)
        if T_mult != 1:
            raise ValueError(f"{fn}: T_mult must be 1 when num_cycles is given, got {T_mult}")
    return CosineRestarts(T_0, T_mult, check_real(fn, "eta_min", eta_min, 0.0), num_cycles)
