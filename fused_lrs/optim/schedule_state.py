"""ScheduleState: everything a fused optimizer keeps of its schedules, in one object.

  * the specs: the lr schedule, and the momentum and weight-decay schedules (None: the groups'
    values);
  * ``t``, int64 0-dim: the schedule counter, the number of ``step()`` calls completed;
  * ``skipped``, float32 0-dim: whether GradScaler skipped the last step;
  * ``table``, float64: the specs' numbers, one block of rows per parameter group (per-group
    values and a plateau's scale differ between blocks); every backend and the kernel read it
    where it lives, so a new value never recompiles;
  * with a ``plateau(...)`` in the lr schedule, its counters (``plateau``: best, bad epochs,
    cooldown, reports) and each group's scale (a column of the table, ``scales()``).
The optimizer holds one (``base.py``) and the checkpoint functions (``checkpoint.py``) read and
write it. Nothing here reads the device back.
"""

from __future__ import annotations

import torch

from fused_lrs.kernels import kinds
from fused_lrs.schedules import Schedule
from fused_lrs.schedules.base import STATE_COL, check_schedule, group_values
from fused_lrs.schedules.plateau import find as find_plateau
from fused_lrs.schedules.plateau import initial_state as plateau_state
from fused_lrs.schedules.plateau import report as plateau_report

#: What each spec is called in messages and in checkpoints, in the table's order.
WHAT = ("schedule", "momentum_schedule", "weight_decay_schedule")


def check_specs(owner: str, specs, groups: int) -> tuple:
    """The three specs, checked for an optimizer of ``groups`` parameter groups: per-group
    values for that many groups, and a plateau only in the lr schedule (``report()`` reduces
    the lr). Raises naming the problem; returns them."""
    checked = []
    for what, spec in zip(WHAT, specs):
        if spec is None and what != "schedule":
            checked.append(None)
            continue
        spec = check_schedule(owner, what, spec)
        if spec.groups not in (None, groups):
            raise ValueError(f"{owner}: {what} holds values for {spec.groups} parameter "
                             f"groups, the optimizer has {groups}")
        if what != "schedule" and spec.state_row is not None:
            raise ValueError(f"{owner}: {what} holds a plateau; only the lr schedule may "
                             "(opt.report(metric) reduces the lr)")
        checked.append(spec)
    return tuple(checked)


class ScheduleState:
    """The specs, counter, table and plateau of one optimizer (see the module docstring)."""

    def __init__(self, specs: tuple, device: torch.device | None, groups: int) -> None:
        self.specs = specs
        self.device = device
        self.t = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped = torch.zeros((), dtype=torch.float32, device=device)
        self.plateau: torch.Tensor | None = None
        self.pack(groups)

    @property
    def lr_spec(self) -> Schedule:
        return self.specs[0]

    def pack(self, groups: int, keep_plateau: bool = False) -> None:
        """Upload the specs' numbers: per group, one block of rows, the lr schedule's leaves,
        then the momentum's, then the weight decay's (the kernel reads its group's block at
        offsets given by the kinds). ``keep_plateau``: the number of groups changed, the
        plateau's counters and the scales of the groups that remain carry over."""
        rows = [leaf.row() for g in range(groups) for spec in self.specs if spec
                for leaf in spec.for_group(g).leaves()]
        table = torch.tensor(rows or [[0.0] * int(kinds.ROW)], dtype=torch.float64,
                             device=self.device)
        found = find_plateau(self.lr_spec)
        self.plateau_spec = found
        self.plateau_row = None if found is None else self.lr_spec.state_row
        if found is None:
            self.plateau = None
        elif keep_plateau and self.plateau is not None:
            kept = min(groups, self.groups)
            self._scales(table, groups)[:kept] = self.scales()[:kept]
        else:
            self.plateau = plateau_state(found, self.device)
        self.table, self.groups = table, groups
        self.relink()      # each group's scale as a view of its own, for the groups to carry
        self._constants, self._constants_key = None, None

    def relink(self) -> None:
        """Each group's scale as a view of the table again (a plain pickle copies views apart
        from the storage they share)."""
        self.scale_views = None if self.plateau_spec is None else list(self.scales().unbind())

    def _scales(self, table: torch.Tensor, groups: int) -> torch.Tensor:
        return table.view(groups, -1, table.shape[1])[:, self.plateau_row, STATE_COL]

    def scales(self) -> torch.Tensor:
        """The plateau's scale of every group: a [groups] view of the table."""
        return self._scales(self.table, self.groups)

    def values(self, which: int, t: torch.Tensor, bases) -> torch.Tensor:
        """float64 [groups]: spec ``which`` (0 lr, 1 momentum, 2 weight decay) after ``t``
        steps, from each group's base value."""
        first = sum(len(spec.kinds) for spec in self.specs[:which] if spec)
        return group_values(self.specs[which], t, bases, self.table, first)

    def last_lr(self, bases) -> torch.Tensor:
        """float64 [groups]: the lr of the most recent step, ``lr(t - 1)`` (``lr(0)`` before
        the first)."""
        return self.values(0, torch.clamp(self.t - 1, min=0), bases)

    def report(self, owner: str, metric, bases: list[float]) -> None:
        """ReduceLROnPlateau's ``step(metric)`` on the device (``schedules/plateau.py``)."""
        found = self.plateau_spec
        if found is None:
            raise ValueError(f"{owner}.report: the schedule holds no plateau(...), so there is "
                             f"nothing to report a metric to; schedule is {self.lr_spec!r}")
        device = self.table.device
        if isinstance(metric, torch.Tensor):
            if metric.numel() != 1:
                raise ValueError(f"{owner}.report: metric must hold one value, got a tensor of "
                                 f"shape {tuple(metric.shape)}")
            if metric.device.type == "cpu" and device.type != "cpu":
                # A CPU value is read on the host (no device sync) and filled on the device:
                # copying a pageable CPU tensor to the GPU would synchronise.
                metric = torch.full((), float(metric), dtype=torch.float64, device=device)
            else:
                metric = metric.detach().reshape(()).to(device=device, dtype=torch.float64)
        elif isinstance(metric, (int, float)) or hasattr(metric, "__float__"):
            metric = torch.full((), float(metric), dtype=torch.float64, device=device)
        else:
            raise TypeError(f"{owner}.report: metric must be a number or a 0-dim tensor, got "
                            f"{type(metric).__name__}")
        base_lrs, min_lrs = self.plateau_constants(bases)
        plateau_report(found, metric, self.plateau, self.scales(), base_lrs, min_lrs)

    def plateau_constants(self, bases: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each group's base lr and min_lr as float64 device tensors, made by fills (no
        host-to-device copy) and kept until a base lr changes. (Also made when the table is
        packed, by the optimizer, so that a compiled ``report()`` finds them made.)"""
        key = tuple(bases)
        if key != self._constants_key:
            def fill(values):
                return torch.stack([torch.full((), float(v), dtype=torch.float64,
                                               device=self.table.device) for v in values])
            found = self.plateau_spec
            self._constants = (fill(bases),
                               fill(found.for_group(g).min_lr for g in range(len(bases))))
            self._constants_key = key
        return self._constants
