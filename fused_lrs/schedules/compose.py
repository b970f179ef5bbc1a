"""Composition: warmup, sequential (torch SequentialLR), chained (torch ChainedScheduler) and
every (a schedule stepped once per N optimizer steps).

Each is itself a spec. Its leaves are its children's leaves with narrowed windows and added
shifts (see base.py), so a composition of compositions is still one flat fold in the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fused_lrs.schedules.base import (
    INF,
    Schedule,
    check_bool,
    check_int,
    check_real,
    check_schedule,
    checked_groups,
    torch_hint,
)
from fused_lrs.schedules.decay import anneal_leaf


@dataclass(frozen=True, repr=False)
class Warmup(Schedule):
    factory = "warmup"
    schedule: Schedule
    steps: int
    start_factor: float = 0.0
    prefix: bool = True

    @property
    def _start(self) -> int:
        """Where the schedule's own clock starts: after the warmup, or at 0 under it."""
        return self.steps if self.prefix else 0

    def _lr(self, t, base):
        ramp = base * (self.start_factor + (1.0 - self.start_factor) * t / max(1, self.steps))
        return torch.where(t < self.steps, ramp, self.schedule.lr(t - self._start, base))

    def leaves(self):
        ramp = ((anneal_leaf(self.start_factor, 1.0, self.steps, hi=self.steps),)
                if self.steps else ())
        return ramp + tuple(leaf.placed(self._start, lo=self.steps)
                            for leaf in self.schedule.leaves())


def warmup(schedule: Schedule, steps: int, start_factor: float = 0.0,
           prefix: bool = True) -> Schedule:
    """A linear warmup from ``start_factor * base_lr`` to ``base_lr`` over ``steps`` steps,
    then ``schedule``.

    ```text
    lr(t) = base_lr * (start_factor + (1 - start_factor) * t / steps)    for t < steps
            schedule.lr(t - steps, base_lr)     prefix=True: schedule starts after the warmup
            schedule.lr(t, base_lr)             prefix=False: the warmup covers its first steps
    ```

    With ``start_factor=0`` this is the warmup of HF's ``*_with_warmup`` schedules,
    ``t / steps``; ``prefix=False`` is timm's default (``warmup_prefix=False``).

    Args:
        schedule: the spec that follows the warmup.
        steps: the length of the warmup in steps (>= 0; 0 is ``schedule`` alone).
        start_factor: the fraction of the base lr at ``t = 0``, in [0, 1].
        prefix: True: ``schedule`` starts at its own ``t = 0`` when the warmup ends. False:
            ``schedule`` runs from ``t = 0`` and the warmup replaces its first ``steps`` steps.
    """
    return checked_groups(Warmup(check_schedule("warmup", "schedule", schedule),
                                 check_int("warmup", "steps", steps, 0),
                                 check_real("warmup", "start_factor", start_factor, 0.0, 1.0),
                                 check_bool("warmup", "prefix", prefix)))


def _schedule_list(fn: str, schedules) -> tuple:
    # A lone spec (or torch scheduler) is not iterable; say so instead of "not iterable".
    if isinstance(schedules, (Schedule, str)) or not hasattr(schedules, "__iter__"):
        raise TypeError(f"{fn}: schedules must be a list of schedule specs, got "
                        f"{type(schedules).__name__}" + torch_hint(schedules))
    return tuple(schedules)


@dataclass(frozen=True, repr=False)
class Sequential(Schedule):
    factory = "sequential"
    schedules: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    def _lr(self, t, base):
        out = self.schedules[0].lr(t, base)
        for m, schedule in zip(self.milestones, self.schedules[1:]):
            out = torch.where(t >= m, schedule.lr(t - m, base), out)
        return out

    def leaves(self):
        starts = (0, *self.milestones)
        ends = (*self.milestones, INF)
        return tuple(leaf.placed(start, lo=start if i else -INF, hi=end)
                     for i, (schedule, start, end) in enumerate(zip(self.schedules, starts, ends))
                     for leaf in schedule.leaves())


def sequential(schedules, milestones) -> Schedule:
    """torch ``SequentialLR``: one schedule after another, each restarted at its own ``t = 0``
    when its milestone is reached.

    ```text
    lr(t) = schedules[0].lr(t, base_lr)                  for t < milestones[0]
            schedules[i].lr(t - milestones[i-1], base_lr) for milestones[i-1] <= t < milestones[i]
    ```

    Args:
        schedules: the specs, in the order they run (at least one).
        milestones: the steps at which each next schedule takes over: ``len(schedules) - 1``
            strictly increasing integers >= 1.
    """
    schedules = _schedule_list("sequential", schedules)
    try:
        milestones = tuple(milestones)
    except TypeError:
        raise ValueError(f"sequential: milestones must be a list of integers, got "
                         f"{milestones!r}") from None
    if not schedules:
        raise ValueError("sequential: schedules must hold at least one schedule, got none")
    for s in schedules:
        check_schedule("sequential", "each of schedules", s)
    if len(milestones) != len(schedules) - 1:
        raise ValueError(f"sequential: milestones must have len(schedules) - 1 = "
                         f"{len(schedules) - 1} entries, got {len(milestones)}")
    checked = []
    for m in milestones:
        checked.append(check_int("sequential", "each milestone", m, checked[-1] + 1 if checked
                                 else 1))
    return checked_groups(Sequential(schedules, tuple(checked)))


@dataclass(frozen=True, repr=False)
class Chained(Schedule):
    factory = "chained"
    schedules: tuple[Schedule, ...]

    def _lr(self, t, base):
        lr = base
        for schedule in self.schedules:
            lr = schedule.lr(t, lr)
        return lr + 0.0 * t

    def leaves(self):
        return tuple(leaf for schedule in self.schedules for leaf in schedule.leaves())


def chained(schedules) -> Schedule:
    """torch ``ChainedScheduler``: every schedule applies at every step, each to the lr the
    previous one produced.

    ```text
    lr(t) = s_n.lr(t, ... s_2.lr(t, s_1.lr(t, base_lr)))
    ```

    For factor schedules (step, exponential, multistep, constant, linear, polynomial, cosine
    with ``eta_min=0``) that is the product of their factors, as torch computes it.

    Args:
        schedules: the specs, applied in order (at least one).
    """
    schedules = _schedule_list("chained", schedules)
    if not schedules:
        raise ValueError("chained: schedules must hold at least one schedule, got none")
    for s in schedules:
        check_schedule("chained", "each of schedules", s)
    return checked_groups(Chained(schedules))


@dataclass(frozen=True, repr=False)
class Every(Schedule):
    factory = "every"
    schedule: Schedule
    n: int

    def _lr(self, t, base):
        return self.schedule.lr(torch.floor(t / self.n), base)

    def leaves(self):
        return tuple(leaf.slowed(self.n) for leaf in self.schedule.leaves())


def every(schedule: Schedule, n: int) -> Schedule:
    """``schedule`` advanced once per ``n`` optimizer steps, for a torch scheduler stepped once
    per epoch of ``n`` batches.

    ```text
    lr(t) = schedule.lr(floor(t / n), base_lr)
    ```

    Args:
        schedule: the spec, in units of epochs.
        n: optimizer steps per schedule step (>= 1), e.g. ``len(loader)``; 1 returns
            ``schedule`` itself.
    """
    schedule = check_schedule("every", "schedule", schedule)
    n = check_int("every", "n", n, 1)
    return schedule if n == 1 else Every(schedule, n)
