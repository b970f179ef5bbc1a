"""The schedule spec: one immutable description, evaluated two ways.

Step convention (the one place it is written down): ``t`` is the number of optimizer steps
already completed. The first ``step()`` uses ``lr(0)``, the k-th uses ``lr(k - 1)``: torch's loop
of ``optimizer.step(); scheduler.step()``.

A spec gives
  * ``lr(t, base_lr)``: the float64 PyTorch reference, vectorized over ``t``. Readable, and the
    definition every other evaluation is tested against.
  * ``leaves()``: the Triton program. Every spec, composed or not, flattens to a list of leaves
    ``(kind, params, window, clock)``; the kernel folds them over the group's base lr::

        v = base_lr
        for leaf in leaves:
            if leaf.lo <= t < leaf.hi:
                v = leaf(floor((t - leaf.offset) / leaf.period) - leaf.shift, v)

    ``sequential`` and ``warmup`` narrow windows and add offsets, ``every`` scales offsets and
    periods, ``chained`` concatenates lists, so any tree of compositions is one flat loop with no
    recursion in the kernel. ``shift`` is a leaf's own (possibly fractional) start, ``offset``
    and ``period`` are its integer clock as compositions place it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fused_lrs.kernels import kinds

INF = math.inf


@dataclass(frozen=True)
class Leaf:
    """One step of the kernel's fold: apply ``kind`` with ``params`` while ``lo <= t < hi``, on
    the local clock ``floor((t - offset) / period) - shift``."""

    kind: int
    params: tuple[float, ...]
    lo: float = -INF
    hi: float = INF
    shift: float = 0.0
    offset: int = 0
    period: int = 1

    def __post_init__(self) -> None:
        assert len(self.params) <= kinds.N_PARAMS, (self.kind, self.params)

    def placed(self, offset: int, lo: float = -INF, hi: float = INF) -> Leaf:
        """This leaf inside a parent window ``[lo, hi)`` whose own clock starts at ``offset``."""
        return dataclasses.replace(self, lo=max(lo, self.lo + offset), hi=min(hi, self.hi + offset),
                                   offset=self.offset + offset)

    def slowed(self, n: int) -> Leaf:
        """This leaf on the clock ``floor(t / n)``: the inner window ``lo <= s < hi`` over integer
        ``s`` is ``n * ceil(lo) <= t < n * ceil(hi)``."""
        def scale(x):
            return x if math.isinf(x) else n * math.ceil(x)
        return dataclasses.replace(self, lo=scale(self.lo), hi=scale(self.hi),
                                   offset=n * self.offset, period=n * self.period)

    def row(self) -> list[float]:
        pad = [0.0] * (kinds.N_PARAMS - len(self.params))
        return [self.lo, self.hi, self.offset, self.period, self.shift, *map(float, self.params),
                *pad]


class Schedule:
    """Base of every spec. Subclasses are frozen dataclasses whose fields are the factory's
    arguments, so ``repr(spec)`` is the factory call that rebuilds it."""

    factory: ClassVar[str]

    def lr(self, t, base_lr=1.0) -> torch.Tensor:
        """float64 learning rate after ``t`` completed steps, for a group whose lr is
        ``base_lr``."""
        t = torch.as_tensor(t).to(torch.float64)
        # A Python base lr becomes a device tensor by a fill, not a host-to-device copy: on
        # CUDA a copy from pageable memory synchronises, and step() must not.
        if isinstance(base_lr, torch.Tensor):
            base = base_lr.to(device=t.device, dtype=torch.float64)
        else:
            base = torch.full((), float(base_lr), dtype=torch.float64, device=t.device)
        return self._lr(t, base)

    def _lr(self, t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def leaves(self) -> tuple[Leaf, ...]:
        raise NotImplementedError

    @property
    def kinds(self) -> tuple[int, ...]:
        """The compile-time key of the Triton twin: one kind per leaf."""
        return tuple(int(leaf.kind) for leaf in self.leaves())

    def table(self, device=None) -> torch.Tensor:
        """The runtime half of the twin: a float64 ``[n_leaves, ROW]`` tensor (at least one row,
        so an empty program still has a valid pointer)."""
        rows = [leaf.row() for leaf in self.leaves()] or [[0.0] * kinds.ROW]
        return torch.tensor(rows, dtype=torch.float64, device=device)

    def lr_triton(self, t: torch.Tensor, base_lr: float = 1.0) -> torch.Tensor:
        """Evaluate the Triton twin for every entry of the integer tensor ``t`` (float64 out).

        The kernel runs where ``t`` lives: CUDA, or CPU under ``TRITON_INTERPRET=1``."""
        from fused_lrs.kernels.schedule import evaluate

        return evaluate(self.kinds, self.table(t.device), t, base_lr)

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.factory}({args})"


# Validation: every factory argument is checked at construction, and the message names the
# factory, the argument, the allowed range and the value received.

def _fail(fn: str, name: str, allowed: str, value) -> ValueError:
    return ValueError(f"{fn}: {name} must be {allowed}, got {value!r}")


def check_int(fn: str, name: str, value, minimum: int = 0) -> int:
    # numbers.Integral admits numpy integers (torch's schedulers accept them); bool is not one.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise _fail(fn, name, f"an integer >= {minimum}", value)
    return int(value)


def check_real(fn: str, name: str, value, lo: float = -INF, hi: float = INF,
               lo_open: bool = False, hi_open: bool = False) -> float:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
          and math.isfinite(value))
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise _fail(fn, name, f"a finite number in {left}{lo}, {hi}{right}", value)
    return float(value)


def check_bool(fn: str, name: str, value) -> bool:
    # Strict: bool("no") is True, so a string or a number here is a mistake, not a flag.
    if not isinstance(value, bool):
        raise _fail(fn, name, "True or False", value)
    return value


def check_choice(fn: str, name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(fn, name, "one of " + ", ".join(map(repr, choices)), value)
    return value


def check_schedule(fn: str, name: str, value) -> Schedule:
    if not isinstance(value, Schedule):
        raise TypeError(f"{fn}: {name} must be a schedule spec from fused_lrs.schedules, "
                        f"got {type(value).__name__}" + torch_hint(value))
    return value


def torch_hint(value) -> str:
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return "; convert a torch scheduler with fused_lrs.schedules.from_torch(scheduler)"
    return ""
