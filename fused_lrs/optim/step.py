"""StepDescription: one optimizer step, as the optimizer hands it to a backend.

Data flows one way: the optimizer (``base.py``) builds a description, one backend
(``backends/``) consumes it, and the Triton backend hands its tables to the kernel. Nothing here
imports the optimizer or a backend.

The algorithm is its record (``fused_lrs/algorithms/record.py``). Per tensor (lists aligned with
``params``, one entry per parameter with a gradient): the parameter, its gradient, the record's
three state slots (None where absent), its float32 step count, its fp32 master copy (None without
one) and the record's scalar states (0-dim float32, one list per scalar). Per group: its row
(``kernels/layout.py``; the record names its columns). For the schedules: their specs (the reference
evaluates those), their device table and kinds (the kernel reads those).

The custom op (``op.py``) carries a description through ``torch.compile`` as flat lists and
rebuilds it with ``from_flat``. Its mutated lists hold only the present tensors, with a
presence mask beside them: torch 2.13's auto-functionalization fails on a mutated ``Tensor?[]``
that holds a None ("'dict' object has no attribute 'append'"), so None cannot cross the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fused_lrs.kernels import layout

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(eq=False)
class StepDescription:
    algorithm: Any                          # the algorithm's record
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: tuple[list, list, list]         # STATE_KEYS[algorithm] columns, None where absent
    steps: list[torch.Tensor]               # float32 0-dim step counts
    masters: list                           # fp32 master copies, None where absent
    group_of: list[int]                     # each tensor's group
    rows: list[list[float]]                 # each group's row, layout.GROUP_COLS float64s
    schedules: tuple                        # (lr, momentum or None, weight decay or None) specs
    table: torch.Tensor                     # float64 [leaves, ROW]: the schedules' numbers
    t: torch.Tensor                         # int64 0-dim: the schedule counter
    skipped: torch.Tensor                   # float32 0-dim: whether this step was skipped
    grad_scale: torch.Tensor | None = None  # GradScaler: divide the gradients by this
    found_inf: torch.Tensor | None = None   # GradScaler: > 0 skips the step
    hold_on_skip: bool = False              # a skip holds the schedule counter too
    # The record's scalar states: per scalar, one 0-dim float32 tensor per parameter.
    scalars: tuple[list, ...] = ()
    # The DTensor parameters whose local shards ``params`` are (``dtensor.py``), or None.
    wrappers: list | None = None
    members: list[list[int]] = field(init=False)  # each group's tensor indices

    def __post_init__(self) -> None:
        self.members = [[] for _ in self.rows]
        for i, g in enumerate(self.group_of):
            self.members[g].append(i)

    @property
    def kinds(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The compile-time key of the schedules' Triton twins: lr, momentum, weight decay."""
        return tuple(spec.kinds if spec is not None else () for spec in self.schedules)

    @property
    def scheduled_hyperparameters(self) -> bool:
        """Whether beta1 / momentum or the weight decay is scheduled (a device value)."""
        return self.schedules[1] is not None or self.schedules[2] is not None

    def hyperparameters(self, g: int) -> dict[str, float]:
        """Group ``g``'s row by name (the record's names)."""
        return self.algorithm.hyperparameters(self.rows[g])

    def variant(self, g: int) -> int:
        """The kernel variant group ``g`` needs (the record's options bits: amsgrad, ...)."""
        return self.algorithm.variant(self.hyperparameters(g))

    def advance_counters(self, skip: torch.Tensor | None) -> None:
        """``t += 1`` (held on a skip with ``hold_on_skip``) and record the skip: the counter
        epilogue every host-side backend shares (the kernel does it in its last program)."""
        if skip is None:
            self.t += 1
            self.skipped.zero_()
        else:
            self.t += (~skip).to(self.t.dtype) if self.hold_on_skip else 1
            self.skipped.copy_(skip)


# ---------------------------------------------------------------- through the custom op

def _present(column) -> tuple[list[torch.Tensor], list[int]]:
    return [x for x in column if x is not None], [int(x is not None) for x in column]


def _fill(present: list[torch.Tensor], mask: list[int]) -> list:
    it = iter(present)
    return [next(it) if m else None for m in mask]


def to_flat(d: StepDescription) -> dict[str, Any]:
    """The custom op's arguments for ``d`` (see ``op.py`` for the schema)."""
    (s1, m1), (s2, m2), (s3, m3), (masters, mm) = map(_present, (*d.states, d.masters))
    return dict(params=d.params, grads=d.grads, state1=s1, state2=s2, state3=s3, steps=d.steps,
                masters=masters, presence=[*m1, *m2, *m3, *mm], group_of=d.group_of,
                groups=[x for row in d.rows for x in row],
                schedule="\n".join(repr(s) if s is not None else "" for s in d.schedules),
                scalars=[x for column in d.scalars for x in column],
                algorithm=d.algorithm.name, table=d.table, t=d.t, skipped=d.skipped,
                grad_scale=d.grad_scale, found_inf=d.found_inf, hold_on_skip=d.hold_on_skip)


def from_flat(params, grads, state1, state2, state3, steps, masters, scalars, presence, group_of,
              groups, schedules, algorithm, table, t, skipped, grad_scale, found_inf,
              hold_on_skip) -> StepDescription:
    """The description ``to_flat`` flattened; ``schedules`` are the parsed specs and
    ``algorithm`` the record."""
    n = len(params)
    masks = [presence[i * n:(i + 1) * n] for i in range(4)]
    cols = [_fill(x, m) for x, m in zip((state1, state2, state3, masters), masks)]
    rows = [list(groups[i:i + layout.GROUP_COLS])
            for i in range(0, len(groups), layout.GROUP_COLS)]
    return StepDescription(algorithm=algorithm, params=list(params), grads=list(grads),
                           states=tuple(cols[:3]), steps=list(steps), masters=cols[3],
                           group_of=list(group_of), rows=rows, schedules=schedules, table=table,
                           t=t, skipped=skipped, grad_scale=grad_scale, found_inf=found_inf,
                           hold_on_skip=hold_on_skip,
                           scalars=tuple(list(scalars[i * n:(i + 1) * n])
                                         for i in range(len(algorithm.scalars))))
