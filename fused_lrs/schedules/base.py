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
from dataclasses import dataclass, field
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
    # A name for the optimizer to find this leaf's row by ("plateau": its scale is state that
    # opt.report() rewrites in the table). Not part of the row.
    tag: str | None = field(default=None, compare=False)

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


def per_group(**kwargs):
    """A dataclass field that may hold one value per parameter group (a tuple), as torch's
    schedulers accept a list: ``for_group(g)`` picks group ``g``'s."""
    return field(metadata={"per_group": True}, **kwargs)


class Schedule:
    """Base of every spec. Subclasses are frozen dataclasses whose fields are the factory's
    arguments, so ``repr(spec)`` is the factory call that rebuilds it.

    Per-group values. A field declared with ``per_group()`` may be a tuple with one value per
    parameter group (CyclicLR's ``base_lr``/``max_lr``, OneCycleLR's ``max_lr``, the plateau's
    ``min_lr``). Such a spec describes every group at once: ``groups`` is their number, and
    ``for_group(g)`` is the plain spec of group ``g``, which has a reference and leaves like
    any other. The optimizer's table holds one block of rows per group, each from
    ``for_group(g).leaves()``, so the kernel reads its group's numbers and a new value never
    recompiles (the kinds are the same for every group)."""

    factory: ClassVar[str]

    @property
    def groups(self) -> int | None:
        """How many parameter groups the per-group values are for (None: one value for all).
        Raises if two parts of a composition disagree."""
        return _cached(self, "_groups", self._count_groups)

    def _count_groups(self) -> int | None:
        counts = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("per_group") and isinstance(value, tuple):
                counts[f.name] = len(value)
            for child in _children(value):
                if child.groups is not None:
                    counts[f"{f.name} ({child.factory})"] = child.groups
        if len(set(counts.values())) > 1:
            raise ValueError(f"{self.factory}: one value per parameter group, but for different "
                             "numbers of groups: " + ", ".join(f"{k} has {n}"
                                                               for k, n in counts.items()))
        return next(iter(counts.values()), None)

    def for_group(self, g: int, rows: torch.Tensor | None = None) -> Schedule:
        """The plain spec of group ``g``: every per-group field set to group ``g``'s value.
        ``rows``: group ``g``'s rows of an optimizer's table for this spec; a plateau then
        takes its current scale from there (a device tensor, never read back)."""
        scale = None
        if rows is not None and self.state_row is not None:
            scale = rows[self.state_row, STATE_COL]
        if self.groups is None and scale is None:
            return self
        return self._resolved(g, scale)

    def _resolved(self, g: int, scale) -> Schedule:
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("per_group") and isinstance(value, tuple):
                changes[f.name] = value[g]
            elif isinstance(value, Schedule):
                changes[f.name] = value._resolved(g, scale)
            elif _children(value):
                changes[f.name] = tuple(c._resolved(g, scale) for c in value)
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def state_row(self) -> int | None:
        """The row of this spec's leaves that holds run-time state (a plateau's scale, in
        column ``STATE_COL``), or None. A schedule holds at most one plateau."""
        return _cached(self, "_state_row", self._find_state_row)

    def _find_state_row(self) -> int | None:
        rows = [i for i, leaf in enumerate(self.for_group(0).leaves()) if leaf.tag == "plateau"]
        if len(rows) > 1:
            raise ValueError(f"{self.factory}: a schedule may hold one plateau, this one holds "
                             f"{len(rows)} (opt.report(metric) updates one)")
        return rows[0] if rows else None

    def lr(self, t, base_lr=1.0) -> torch.Tensor:
        """float64 learning rate after ``t`` completed steps, for a group whose lr is
        ``base_lr``."""
        if self.groups is not None:
            raise ValueError(f"{self.factory} holds one value per parameter group; evaluate "
                             f"group g's schedule with spec.for_group(g).lr(t, base_lr)")
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
        """The compile-time key of the Triton twin: one kind per leaf (the same for every
        group)."""
        return tuple(int(leaf.kind) for leaf in self.for_group(0).leaves())

    def table(self, device=None) -> torch.Tensor:
        """The runtime half of the twin: a float64 ``[n_leaves, ROW]`` tensor (at least one row,
        so an empty program still has a valid pointer)."""
        if self.groups is not None:
            raise ValueError(f"{self.factory} holds one value per parameter group; take group "
                             "g's table with spec.for_group(g).table()")
        rows = [leaf.row() for leaf in self.leaves()] or [[0.0] * kinds.ROW]
        return torch.tensor(rows, dtype=torch.float64, device=device)

    def lr_triton(self, t: torch.Tensor, base_lr: float = 1.0) -> torch.Tensor:
        """Evaluate the Triton twin for every entry of the integer tensor ``t`` (float64 out).

        The kernel runs where ``t`` lives: CUDA, or CPU under ``TRITON_INTERPRET=1``."""
        from fused_lrs.kernels.schedule import evaluate

        return evaluate(self.kinds, self.table(t.device), t, base_lr)

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if f.repr)
        return f"{self.factory}({args})"


def _cached(spec: Schedule, key: str, compute):
    """A value computed once per spec, kept in its ``__dict__`` (not a field: equality, hash and
    repr ignore it). Not ``functools.cached_property``: on Python 3.11 that takes a lock, which
    torch.compile cannot trace (a spec is read inside compiled code, e.g. ``opt.last_lr``)."""
    if key not in spec.__dict__:
        spec.__dict__[key] = compute()
    return spec.__dict__[key]


def _children(value) -> tuple:
    """The specs a field holds: itself, or the members of a tuple of specs."""
    if isinstance(value, Schedule):
        return (value,)
    if isinstance(value, tuple) and value and all(isinstance(v, Schedule) for v in value):
        return value
    return ()


# The parameter column of a SCALE leaf: where a plateau's scale lives in the table.
STATE_COL = 5


def group_values(spec: Schedule, t: torch.Tensor, bases, table: torch.Tensor,
                 first_row: int = 0) -> torch.Tensor:
    """float64 [groups]: ``spec`` after ``t`` steps for every group, each from its base value
    (``bases``: numbers or 0-dim tensors, or one [groups] tensor), its own per-group values and
    the run-time state in its rows of ``table`` (an optimizer's: one block of rows per group,
    this spec's from ``first_row`` of each block). No host read."""
    n = len(bases)
    if spec.groups is None and spec.state_row is None:
        if isinstance(bases, torch.Tensor):
            return spec.lr(t, bases)
        return torch.stack([spec.lr(t, b) for b in bases])
    per_block = table.shape[0] // n
    width = len(spec.kinds)
    return torch.stack([
        spec.for_group(g, table[g * per_block + first_row:g * per_block + first_row + width])
        .lr(t, bases[g]) for g in range(n)])


def checked_groups(spec: Schedule) -> Schedule:
    """``spec``, after checking that its per-group values are for one number of groups (lists
    of different lengths raise here, at construction, naming them)."""
    spec.groups  # noqa: B018
    return spec


def check_per_group(fn: str, name: str, value, *bounds, **options):
    """A number, or a list with one per parameter group (kept as a tuple), each checked as
    ``check_real`` does."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise _fail(fn, name, "a number or a non-empty list of numbers (one per group)",
                        value)
        return tuple(check_real(fn, f"{name}[{i}]", v, *bounds, **options)
                     for i, v in enumerate(value))
    return check_real(fn, name, value, *bounds, **options)


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
