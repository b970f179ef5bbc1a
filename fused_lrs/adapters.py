"""Adapters for frameworks that expect a torch LR scheduler next to the optimizer.

HF Trainer and Lightning step a scheduler after each optimizer step and log its
``get_last_lr()``. A fused optimizer runs its schedule inside ``step()``, so what they need is a
scheduler that changes nothing and reports the lr the fused step used: ``as_lr_scheduler(opt)``.

A real torch scheduler on a fused optimizer is a mistake that trains silently: it rewrites
``group["lr"]``, which here is the base lr that the fused schedule scales, so the two schedules
multiply (Trainer's ``optimizers=(opt, None)`` builds a LambdaLR that does exactly that).
``warn_torch_scheduler`` is what the optimizer calls when one is attached.
"""

from __future__ import annotations

import sys
import warnings
import weakref

import torch
from torch.optim.lr_scheduler import LRScheduler


class FusedScheduleView(LRScheduler):
    """A torch ``LRScheduler`` in front of a fused optimizer: ``step()`` changes nothing (the
    schedule advances inside ``opt.step()``) and ``get_last_lr()`` is ``opt.get_last_lr()``, the
    lr each group's most recent step used.

    ``get_last_lr()`` reads the lr back from the device: one synchronisation per call. HF
    Trainer calls it after every optimizer step (transformers 5), where its default
    ``logging_nan_inf_filter`` already reads the loss back each step. For a loop that must not
    wait, log ``opt.last_lr`` (a device tensor) instead.

    The schedule's position is saved with the optimizer (its ``state_dict`` holds the schedule
    and its counter); this object's own ``state_dict`` holds only its step count, so loading
    either kind of checkpoint into it is harmless.
    """

    def __init__(self, optimizer) -> None:
        if not (isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "last_lr")):
            raise TypeError(f"as_lr_scheduler: expected a fused optimizer (one of "
                            f"fused_lrs.algorithms.OPTIMIZERS), got {type(optimizer).__name__}")
        # LRScheduler.__init__ is not called: it would add initial_lr to the groups, write
        # group["lr"] through an initial step() and wrap optimizer.step.
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._step_count = 1  # as after torch's initial step (accelerate reads it)

    def step(self, epoch=None) -> None:
        """Count the call; the optimizer's own step has already advanced the schedule."""
        if epoch is not None:
            raise ValueError("as_lr_scheduler: step(epoch) is not supported; the schedule's "
                             "position is the optimizer's (opt.set_schedule(spec, t) moves it)")
        self.last_epoch += 1
        self._step_count += 1

    def get_last_lr(self) -> list[float]:
        """The lr each group's most recent ``opt.step()`` used (synchronises; see the class)."""
        return self.optimizer.get_last_lr()

    def get_lr(self) -> list[float]:
        return self.optimizer.get_last_lr()

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict.get("last_epoch", self.last_epoch))
        self._step_count = int(state_dict.get("_step_count", self._step_count))


def as_lr_scheduler(optimizer) -> FusedScheduleView:
    """A torch LR scheduler that HF Trainer and Lightning accept next to ``optimizer``: it
    leaves the optimizer alone and reports the lr its steps used.

    HF Trainer: ``Trainer(..., optimizers=(opt, as_lr_scheduler(opt)))``. Lightning:
    ``configure_optimizers`` returns ``{"optimizer": opt, "lr_scheduler": as_lr_scheduler(opt)}``.
    """
    return FusedScheduleView(optimizer)


_warned: weakref.WeakSet = weakref.WeakSet()


def warn_torch_scheduler(optimizer) -> None:
    """Warn, once per optimizer, that a torch LR scheduler was attached to ``optimizer``.

    The optimizer calls this when torch's ``LRScheduler.__init__`` wraps its ``step`` (the
    wrapper carries ``_wrapped_by_lr_sched``), which every torch scheduler does on attaching,
    and when a step finds the ``initial_lr`` that every torch scheduler writes into the groups
    it drives (so also one attached to a wrapper of the optimizer, such as accelerate's)."""
    if optimizer in _warned:
        return
    _warned.add(optimizer)
    name = type(optimizer).__name__
    warnings.warn(
        f"A torch LR scheduler was attached to {name}. It rewrites group['lr'], which for "
        f"{name} is the base lr that its own schedule scales, so the two schedules multiply "
        "(HF Trainer's optimizers=(opt, None) builds such a scheduler). Pass "
        "opt.as_lr_scheduler() as the scheduler instead (it reports the lr the fused step "
        "used), and give the schedule to the optimizer (schedule=, or opt.set_schedule(...))",
        UserWarning, stacklevel=_outside_level())


def _outside_level() -> int:
    """The stacklevel of the first caller outside torch.optim and fused_lrs: the line that
    built the scheduler."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("torch.optim", "fused_lrs")):
            return level
        frame, level = frame.f_back, level + 1
    return 1
