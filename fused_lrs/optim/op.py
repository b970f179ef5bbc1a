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
MUTATED = ("params", "state1", "state2", "state3", "steps", "t")


@torch.library.custom_op("fused_lrs::step", mutates_args=MUTATED)
def step(params: list[Tensor], grads: list[Tensor], state1: list[Tensor], state2: list[Tensor],
         state3: list[Tensor], steps: list[Tensor], t: Tensor, table: Tensor, kinds: list[int],
         group_of: list[int], groups: list[float], schedule: str, algorithm: str,
         impl: str) -> None:
    args = (params, grads, state1, state2, state3, steps, t, table, kinds, group_of, groups,
            schedule, algorithm)
    if impl == "triton":
        launcher_for(t).step_lists(*args)
    else:
        reference_step(*args)


@step.register_fake
def _(params, grads, state1, state2, state3, steps, t, table, kinds, group_of, groups, schedule,
      algorithm, impl) -> None:
    return None


def rows_of(groups: list[float]) -> list[list[float]]:
    return [groups[i:i + GROUP_COLS] for i in range(0, len(groups), GROUP_COLS)]


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


def reference_step(params, grads, state1, state2, state3, steps, t, table, kinds, group_of,
                   groups, schedule, algorithm) -> None:
    """The step in plain PyTorch: lr(t) per group on the device, then each parameter's update
    (``reference.py``), then t += 1."""
    spec = _spec(schedule)
    rows = rows_of(groups)
    lrs = [spec.lr(t, row[0]) for row in rows]
    extras = extra_states(algorithm, rows, group_of, state1, state3)
    for i, (p, g) in enumerate(zip(params, grads)):
        row, lr = rows[group_of[i]], lrs[group_of[i]]
        if algorithm == "adam":
            reference.adam(p, g, state1[i], state2[i], extras[i], steps[i], lr=lr, beta1=row[1],
                           beta2=row[2], eps=row[3], weight_decay=row[4],
                           amsgrad=row[5] != 0, maximize=row[6] != 0, decoupled=row[7] != 0)
        else:
            reference.sgd(p, g, extras[i], steps[i], lr=lr, momentum=row[1], dampening=row[2],
                          weight_decay=row[4], nesterov=row[5] != 0, maximize=row[6] != 0)
    t += 1


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
