"""The reference backend: plain PyTorch, one tensor at a time, the executable specification.

Each algorithm's update is its record's ``reference`` (``fused_lrs/algorithms/<name>.py``),
pure math in torch's order of operations, so in float32 and float64 it agrees with torch to
rounding. What every algorithm shares is here: the compute dtype, GradScaler's unscale and
skip, ``maximize``, the step count, master weights, and the writes. Two deliberate differences
from torch, both shared with the Triton kernel:
  * 16-bit parameters are updated in float32 and rounded once (torch computes in bf16/fp16);
  * the lr and every derived scalar arrive as float64 device tensors, never Python floats, so
    nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch

from fused_lrs.optim.step import StepDescription
from fused_lrs.schedules.base import group_values


def _compute_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def _write(skip, dst: torch.Tensor, new: torch.Tensor) -> None:
    """Store the new value, or, on a step GradScaler skips, keep the old one (no sync: the
    choice is made on the device). ``copy_`` rounds to nearest even, as the kernel does."""
    dst.copy_(new if skip is None else torch.where(skip, dst, new.to(dst.dtype)))


def update(algorithm, param, grad, states, step, hp, *, grad_scale=None, skip=None,
           master=None, scalars=()) -> None:
    """One update of one parameter, in place. ``states`` are the record's three slots (None
    where absent), ``scalars`` its scalar states (float32 0-dim, the record's order), ``step``
    the parameter's float32 0-dim count (advanced here), ``hp`` the
    group's row by name with the lr, and any scheduled momentum or weight decay, as float64
    0-dim tensors. ``grad_scale`` divides the gradient and ``skip`` (a bool tensor) discards
    the whole update, GradScaler's way. With an fp32 ``master`` copy the update reads and
    writes it, and the parameter gets its rounding."""
    cd = _compute_dtype(param)
    p, g = (param if master is None else master).to(cd), grad.to(cd)
    if grad_scale is not None:
        g = g / grad_scale.to(cd)
    if hp["maximize"]:
        g = -g
    keys = [slot.key for slot in algorithm.slots]
    state = {key: x.to(cd) for key, x in zip(keys, states) if x is not None}
    targets = dict(zip(keys, states))
    for key, x in zip(algorithm.scalar_keys, scalars):
        state[key] = targets[key] = x      # float32, as torch keeps them
    k = step + 1                           # this update's count, as torch's
    new_p, new_states = algorithm.reference(p, g, state, k, hp)
    for key, value in new_states.items():
        _write(skip, targets[key], value)
    if master is not None:
        _write(skip, master, new_p)
    _write(skip, param, new_p)
    _write(skip, step, k)


class ReferenceBackend:
    """The backend: each parameter's update in turn, for any device and dtype."""

    name = "reference"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def unsupported(device, algorithm, dtypes, scheduled_hyperparameters) -> str | None:
        return None

    @staticmethod
    def requirements(p, grad, states) -> None:
        """Nothing: any dense floating-point layout and dtype."""

    def step(self, d: StepDescription) -> None:
        """lr(t) per group on the device, then each parameter's update, then t += 1. With
        GradScaler's ``found_inf`` > 0 nothing but ``t`` moves (and not ``t`` either with
        ``hold_on_skip``); ``skipped`` records which it was."""
        lr_spec, momentum_spec, wd_spec = d.schedules
        skip = None if d.found_inf is None else d.found_inf != 0
        hps = [d.hyperparameters(g) for g in range(len(d.rows))]
        name = d.algorithm.names[1]               # the momentum under its own name
        # Each group's values from its own block of the table (per-group values, a plateau's
        # scale), the lr rows first, then the momentum's, then the weight decay's.
        lrs = group_values(lr_spec, d.t, [hp["lr"] for hp in hps], d.table).unbind()
        first = len(lr_spec.kinds)
        for g, lr in enumerate(lrs):
            hps[g]["lr"] = lr
        if momentum_spec:
            values = group_values(momentum_spec, d.t, [hp[name] for hp in hps], d.table, first)
            for g, value in enumerate(values.unbind()):
                hps[g][name] = value
            first += len(momentum_spec.kinds)
        if wd_spec:
            values = group_values(wd_spec, d.t, [hp["weight_decay"] for hp in hps], d.table,
                                  first)
            for g, value in enumerate(values.unbind()):
                hps[g]["weight_decay"] = value
        for i, (p, g) in enumerate(zip(d.params, d.grads)):
            update(d.algorithm, p, g, [col[i] for col in d.states], d.steps[i],
                   hps[d.group_of[i]], grad_scale=d.grad_scale, skip=skip, master=d.masters[i],
                   scalars=[column[i] for column in d.scalars])
        d.advance_counters(skip)
