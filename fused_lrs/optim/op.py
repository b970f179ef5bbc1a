"""``torch.ops.fused_lrs.step``: the whole optimizer step as one custom op.

``torch.compile`` sees ``opt.step()`` as this single opaque op, with exact mutation
annotations: it mutates the parameters, the states, the per-parameter step counts and the
schedule counter, and reads the gradients and the schedule table. So the compiler neither
traces the Python bookkeeping nor reorders the update, and because the lr is computed inside
the op from the device counter ``t``, a changing lr never changes the graph: no recompile.

Arguments are flat lists aligned with ``params`` (one entry per parameter with a gradient),
except the optional states: ``state3`` (Adam's ``max_exp_avg_sq``) holds entries only for
parameters of amsgrad groups, and SGD's ``state1`` (``momentum_buffer``) only for parameters of
groups with momentum, in parameter order. ``groups`` is every group's row of the kernel's group
table, flattened (see ``kernels/optim.py``); ``group_of[i]`` is parameter i's group.

One implementation serves every device: ``impl="triton"`` launches the kernel (CUDA, or the
interpreter on CPU), ``impl="reference"`` runs ``reference.py``, the CPU path, so the compile
tests run in CI.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fused_lrs.optim import reference

GROUP_COLS = 8      # the kernel's group row: lr, a, b, eps, wd, flag, maximize, decoupled
MUTATED = ("params", "state1", "state2", "state3", "steps", "t", "skipped", "masters")


@torch.library.custom_op("fused_lrs::step", mutates_args=MUTATED)
def step(params: list[Tensor], grads: list[Tensor], state1: list[Tensor], state2: list[Tensor],
         state3: list[Tensor], steps: list[Tensor], t: Tensor, table: Tensor, kinds: list[int],
         kind_counts: list[int], group_of: list[int], groups: list[float], schedule: str,
         algorithm: str, impl: str,
         grad_scale: Tensor | None, found_inf: Tensor | None, skipped: Tensor,
         hold_on_skip: bool, masters: list[Tensor]) -> None:
    args = (params, grads, state1, state2, state3, steps, t, table, kinds, kind_counts, group_of,
            groups, schedule, algorithm, grad_scale, found_inf, skipped, hold_on_skip, masters)
    if impl == "triton":
        launcher_for(t).step_lists(*args)
    else:
        reference_step(*args)


@step.register_fake
def _(params, grads, state1, state2, state3, steps, t, table, kinds, kind_counts, group_of, groups,
      schedule, algorithm, impl, grad_scale, found_inf, skipped, hold_on_skip, masters) -> None:
    return None


def rows_of(groups: list[float]) -> list[list[float]]:
    return [groups[i:i + GROUP_COLS] for i in range(0, len(groups), GROUP_COLS)]


def masters_of(params, masters):
    """Each parameter's fp32 master copy (or None): ``masters`` holds one for each 16-bit
    parameter, in parameter order, when the optimizer keeps master weights."""
    present = iter(masters)
    return [next(present) if masters and p.dtype in (torch.bfloat16, torch.float16) else None
            for p in params]


def extra_states(algorithm: str, rows, group_of, state1, state3):
    """Each parameter's optional state (or None), from the list that holds only the present
    ones: Adam's max_exp_avg_sq (amsgrad groups), SGD's momentum buffer (momentum != 0)."""
    present = iter(state3 if algorithm == "adam" else state1)
    flag = 5 if algorithm == "adam" else 1          # amsgrad / momentum column
    return [next(present) if rows[g][flag] != 0 else None for g in group_of]


@functools.lru_cache(maxsize=64)
def _spec(schedule: str):
    from fused_lrs.schedules import parse
    return parse(schedule)


def reference_step(params, grads, state1, state2, state3, steps, t, table, kinds, kind_counts,
                   group_of, groups, schedule, algorithm, grad_scale=None, found_inf=None,
                   skipped=None, hold_on_skip=False, masters=()) -> None:
    """The step in plain PyTorch: lr(t) per group on the device, then each parameter's update
    (``reference.py``), then t += 1. With GradScaler's ``found_inf`` > 0 nothing but ``t``
    moves (and not ``t`` either with ``hold_on_skip``); ``skipped`` records which it was."""
    lr_spec, momentum_spec, wd_spec = (_spec(text) if text else None
                                       for text in schedule.split("\n"))
    skip = None if found_inf is None else found_inf != 0
    amp = dict(grad_scale=grad_scale, skip=skip)
    rows = rows_of(groups)
    lrs = [lr_spec.lr(t, row[0]) for row in rows]
    # A scheduled beta1 / momentum or weight decay is a device tensor; else the group's number.
    momenta = [momentum_spec.lr(t, row[1]) if momentum_spec else row[1] for row in rows]
    decays = [wd_spec.lr(t, row[4]) if wd_spec else row[4] for row in rows]
    extras = extra_states(algorithm, rows, group_of, state1, state3)
    fp32_masters = masters_of(params, masters)
    for i, (p, g) in enumerate(zip(params, grads)):
        gi = group_of[i]
        row, lr, a, wd = rows[gi], lrs[gi], momenta[gi], decays[gi]
        if algorithm == "adam":
            reference.adam(p, g, state1[i], state2[i], extras[i], steps[i], lr=lr, beta1=a,
                           beta2=row[2], eps=row[3], weight_decay=wd,
                           amsgrad=row[5] != 0, maximize=row[6] != 0, decoupled=row[7] != 0,
                           master=fp32_masters[i], **amp)
        else:
            reference.sgd(p, g, extras[i], steps[i], lr=lr, momentum=a, dampening=row[2],
                          weight_decay=wd, nesterov=row[5] != 0, maximize=row[6] != 0,
                          master=fp32_masters[i], **amp)
    if skip is None:
        t += 1
        if skipped is not None:
            skipped.zero_()
    else:
        t += (~skip).to(t.dtype) if hold_on_skip else 1
        if skipped is not None:
            skipped.copy_(skip)


# One launcher (device tables) per schedule counter: the counter's address names the optimizer
# the op was called for. A launcher only caches tables, and checks on every call that they still
# describe the tensors it is given, so a stale entry can cost a rebuild, never a wrong step.
_LAUNCHERS: dict[tuple[str, int], object] = {}


def launcher_for(t: Tensor):
    from fused_lrs.optim.launcher import Launcher

    key = (str(t.device), t.data_ptr())
    if key not in _LAUNCHERS:
        _LAUNCHERS[key] = Launcher(t.device)
    return _LAUNCHERS[key]
