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
    """torch ``CosineAnnealingLR``: half a cosine from the base lr down to ``eta_min`` over
    ``T_max`` steps. Past ``T_max`` the cosine goes on and the lr climbs back, as torch's does.

    ```text
    floor = eta_min + min_lr_rate * base_lr
    lr(t) = floor + (base_lr - floor) * (1 + cos(2 pi * num_cycles * t / T_max)) / 2
    ```

    With the defaults (``num_cycles=0.5``, ``min_lr_rate=0``) that is torch's
    ``eta_min + (base_lr - eta_min) * (1 + cos(pi t / T_max)) / 2``.

    Args:
        T_max: the number of steps from the base lr down to the floor (>= 1).
        eta_min: the absolute lr at the bottom of the cosine (>= 0), torch's ``eta_min`` (HF's
            ``min_lr``).
        num_cycles: the number of cosine periods over ``T_max`` steps (> 0), HF's
            ``num_cycles``; 0.5 is torch's half cosine.
        min_lr_rate: a floor relative to the base lr, in [0, 1], HF's ``min_lr_rate``; it adds
            to ``eta_min``.
    """
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
    """torch ``CosineAnnealingWarmRestarts``: a cosine from the base lr down to ``eta_min``,
    restarted at the base lr at the end of each cycle; each cycle is ``T_mult`` times longer
    than the one before.

    ```text
    T_i   = T_0 * T_mult ** i                  (the length of cycle i)
    T_cur = steps since the current cycle began
    lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2
    ```

    With ``num_cycles`` (HF's ``get_cosine_with_hard_restarts_schedule_with_warmup``):
    ``num_cycles`` equal cycles over ``T_0`` steps, ``T_cur / T_i = (num_cycles * t / T_0)
    mod 1``, then ``eta_min`` from ``T_0`` on.

    Args:
        T_0: the length of the first cycle in steps (>= 1); with ``num_cycles``, the length of
            the whole run.
        T_mult: how many times longer each cycle is than the previous one, an integer >= 1;
            must be 1 with ``num_cycles``.
        eta_min: the absolute lr at the bottom of each cycle (>= 0).
        num_cycles: HF's hard restarts: the number of cycles over ``T_0`` steps (> 0), or
            None for torch's schedule.
    """
    fn = "cosine_restarts"
    T_0 = check_int(fn, "T_0", T_0, 1)
    T_mult = check_int(fn, "T_mult", T_mult, 1)
    if num_cycles is not None:
        num_cycles = check_real(fn, "num_cycles", num_cycles, 0.0, INF, lo_open=True)
        if T_mult != 1:
            raise ValueError(f"{fn}: T_mult must be 1 when num_cycles is given, got {T_mult}")
    return CosineRestarts(T_0, T_mult, check_real(fn, "eta_min", eta_min, 0.0), num_cycles)
