"""``torch.ops.fused_lrs.step``: the whole optimizer step as one custom op.

``torch.compile`` sees ``opt.step()`` as this single opaque op, with exact mutation annotations: it
mutates the parameters, the states, the per-parameter step counts and scalar states, the master
copies and the schedule counter, and reads the schedule table. So the compiler neither traces the
Python bookkeeping nor reorders the update, and because the lr is computed inside the op from the
device counter ``t``, a changing lr never changes the graph: no recompile.

The op is a thin wrapper: its arguments are a step description flattened (``step.py``), and
its body rebuilds the description and hands it to the backend ``impl`` names, the same one an
eager step uses, on every device (so the compile tests run in CI on the CPU backends).
``grads`` are declared mutated because torch's fused CPU kernels unscale them in place under
GradScaler (as ``AdamW(fused=True)`` does).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fused_lrs.optim import backends
from fused_lrs.optim.step import from_flat

MUTATED = ("params", "grads", "state1", "state2", "state3", "steps", "masters", "scalars", "t",
           "skipped")


@torch.library.custom_op("fused_lrs::step", mutates_args=MUTATED)
def step(params: list[Tensor], grads: list[Tensor], state1: list[Tensor], state2: list[Tensor],
         state3: list[Tensor], steps: list[Tensor], masters: list[Tensor],
         scalars: list[Tensor], presence: list[int], group_of: list[int], groups: list[float],
         schedule: str, algorithm: str, table: Tensor, t: Tensor, skipped: Tensor,
         grad_scale: Tensor | None, found_inf: Tensor | None, hold_on_skip: bool, impl: str,
         explicit: bool, owner: int) -> None:
    schedules = tuple(_spec(text) if text else None for text in schedule.split("\n"))
    description = from_flat(params, grads, state1, state2, state3, steps, masters, scalars,
                            presence, group_of, groups, schedules, _record(algorithm), table, t,
                            skipped, grad_scale, found_inf, hold_on_skip)
    backend_for(impl, t.device, owner, explicit).step(description)


@step.register_fake
def _(params, grads, state1, state2, state3, steps, masters, scalars, presence, group_of, groups,
      schedule, algorithm, table, t, skipped, grad_scale, found_inf, hold_on_skip, impl,
      explicit, owner) -> None:
    return None


# The records of the algorithms the op may be asked to run, by name: each optimizer class tells
# the op its record when the class is made (``ScheduledOptimizer.__init_subclass__``), so this
# module needs no import of the registry, which imports the optimizer, which imports this.
_RECORDS: dict[str, object] = {}


def know(record) -> None:
    """Make ``record``'s algorithm runnable by name."""
    _RECORDS[record.name] = record


def _record(name: str):
    return _RECORDS[name]


@functools.lru_cache(maxsize=64)
def _spec(schedule: str):
    from fused_lrs.schedules import parse
    return parse(schedule)


# One backend object per optimizer (``owner``: a number the optimizer draws at construction and
# drops, with its backend, when it is collected). Not keyed by a tensor's address: under
# functionalization (aot_eager) the op receives clones, whose addresses change every call, and a
# backend holds its last step's tensors. A backend only caches, and checks on every call that its
# caches still describe the tensors it is given, so a rebuild is the worst a change can cost.
_BACKENDS: dict[tuple[str, str, int, bool], object] = {}


def backend_for(impl: str, device: torch.device, owner: int, explicit: bool = False):
    key = (impl, str(device), owner, explicit)
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = backends.create(impl, device, explicit)
    return backend


def forget(owner: int) -> None:
    """Drop ``owner``'s backends (its optimizer was collected): they hold its tensors."""
    for key in [k for k in _BACKENDS if k[2] == owner]:
        del _BACKENDS[key]
