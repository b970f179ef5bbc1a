"""The schedule half of ScheduledOptimizer: the lr, momentum and weight-decay specs, their
device table, ``report(metric)`` for a plateau, ``last_lr`` and the torch-scheduler adapters.

The table is float64, one block of rows per parameter group (``_pack_schedules``); every
backend and the kernel read it where it lives, so nothing here reads the device back except
``get_last_lr()``, which says so.
"""

from __future__ import annotations

import torch

from fused_lrs.kernels import kinds, layout
from fused_lrs.schedules import Schedule
from fused_lrs.schedules.base import STATE_COL, check_schedule, group_values
from fused_lrs.schedules.plateau import find as find_plateau
from fused_lrs.schedules.plateau import initial_state as plateau_state
from fused_lrs.schedules.plateau import report as plateau_report


class Scheduling:
    """Mixed into ScheduledOptimizer (``base.py``), which provides ``param_groups``,
    ``group_rows()``, ``_device``, ``_t`` and ``_invalidate()``."""

    @property
    def schedule(self) -> Schedule:
        """The lr schedule spec. Setting it uploads the schedules' table to the device (new
        numbers never recompile: the kernel is keyed by the specs' kinds only)."""
        return self._schedule

    @schedule.setter
    def schedule(self, spec: Schedule) -> None:
        spec = check_schedule(type(self).__name__, "schedule", spec)
        self._check_schedules((spec, *self._schedules()[1:]))
        self._schedule = spec
        self._pack_schedules()

    def _schedules(self) -> tuple:
        return (self.__dict__.get("_schedule"), self._momentum_schedule,
                self._weight_decay_schedule)

    def _check_schedules(self, specs) -> None:
        """Per-group values must match the groups, and only the lr schedule may hold a
        plateau (report() reduces the lr)."""
        name, n = type(self).__name__, len(self.param_groups)
        for what, spec in zip(("schedule", "momentum_schedule", "weight_decay_schedule"), specs):
            if spec is None:
                continue
            if spec.groups not in (None, n):
                raise ValueError(f"{name}: {what} holds values for {spec.groups} parameter "
                                 f"groups, the optimizer has {n}")
            if what != "schedule" and spec.state_row is not None:
                raise ValueError(f"{name}: {what} holds a plateau; only the lr schedule may "
                                 "(opt.report(metric) reduces the lr)")

    @property
    def momentum_schedule(self) -> Schedule | None:
        """The schedule of Adam's beta1 or SGD's momentum (None: the group's value), e.g.
        ``one_cycle_momentum(...)`` for torch's ``OneCycleLR(cycle_momentum=True)``."""
        return self._momentum_schedule

    @property
    def weight_decay_schedule(self) -> Schedule | None:
        """The schedule of the weight decay (None: the group's value), e.g. ``cosine(T)``."""
        return self._weight_decay_schedule

    def _pack_schedules(self, keep_state: bool = False) -> None:
        """One float64 device table for the lr, momentum and weight-decay schedules: per
        parameter group, one block of their rows in that order (the kernel reads its group's
        block, at offsets given by the specs' kinds; blocks differ where a spec has per-group
        values or a plateau's scale). ``keep_state``: a group count changed, the plateau's
        state carries over."""
        specs = self._schedules()
        n = len(self.param_groups)
        rows = [leaf.row() for g in range(n) for spec in specs if spec
                for leaf in spec.for_group(g).leaves()]
        table = torch.tensor(rows or [[0.0] * int(kinds.ROW)], dtype=torch.float64,
                             device=self._device)
        found = find_plateau(self._schedule)
        # Kept here, not looked up per report: dynamo cannot trace a cached_property's lock.
        self._plateau_spec = found
        self._plateau_row = None if found is None else self._schedule.state_row
        if found is None:
            self._plateau = None
        elif keep_state and self.__dict__.get("_plateau") is not None:
            old, kept = self._table, min(n, self._table_groups)
            self._plateau_scales(table, n)[:kept] = self._plateau_scales(old)[:kept]
        else:
            self._plateau = plateau_state(found, self._device)
        self._table, self._table_groups = table, n
        self._plateau_key = None
        if found is not None:   # made now, so that a compiled report() finds them made
            self._plateau_constants(found)
        self._link_counter()     # the groups carry the counter and plateau (checkpoint.py)
        self._invalidate()

    def _plateau_scales(self, table: torch.Tensor, groups: int | None = None) -> torch.Tensor:
        """The plateau's scale of every group: a [groups] view of ``table``."""
        groups = self._table_groups if groups is None else groups
        return table.view(groups, -1, table.shape[1])[:, self._plateau_row, STATE_COL]

    def report(self, metric) -> None:
        """torch ``ReduceLROnPlateau.step(metric)`` for a schedule that holds
        ``plateau(...)``: updates the plateau's state on the device (``schedules/plateau.py``).
        ``metric``: a 0-dim tensor (or a float). Nothing is read back to the host, and under
        ``torch.compile`` a new metric value does not recompile."""
        name = type(self).__name__
        found = self._plateau_spec
        if found is None:
            raise ValueError(f"{name}.report: the schedule holds no plateau(...), so there is "
                             f"nothing to report a metric to; schedule is {self._schedule!r}")
        device = self._table.device
        if isinstance(metric, torch.Tensor):
            if metric.numel() != 1:
                raise ValueError(f"{name}.report: metric must hold one value, got a tensor of "
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
            raise TypeError(f"{name}.report: metric must be a number or a 0-dim tensor, got "
                            f"{type(metric).__name__}")
        bases, min_lrs = self._plateau_constants(found)
        plateau_report(found, metric, self._plateau, self._plateau_scales(self._table), bases,
                       min_lrs)

    def _plateau_constants(self, found) -> tuple[torch.Tensor, torch.Tensor]:
        """Each group's base lr and min_lr as float64 device tensors, made by fills (no
        host-to-device copy) and kept until a group's lr changes."""
        self.group_rows()
        if self._plateau_key != self._rows_key:
            def fill(values):
                return torch.stack([torch.full((), float(v), dtype=torch.float64,
                                               device=self._table.device) for v in values])
            n = len(self.param_groups)
            self._plateau_bases = (fill(row[layout.G_LR] for row in self._rows),
                                   fill(found.for_group(g).min_lr for g in range(n)))
            self._plateau_key = self._rows_key
        return self._plateau_bases

    @property
    def last_lr(self) -> torch.Tensor:
        """float64 device tensor: the lr each group's most recent ``step()`` used, ``lr(t - 1)``
        after ``t`` steps (``lr(0)`` before the first). Computed on the device, so logging it
        costs no sync until it is read. (A torch scheduler's ``get_last_lr()`` after
        ``scheduler.step()`` is the lr of the *next* step, ``lr(t)``.)"""
        t = torch.clamp(self._t - 1, min=0)
        return group_values(self.schedule, t, [g["lr"] for g in self.param_groups], self._table)

    def as_lr_scheduler(self):
        """A torch ``LRScheduler`` for frameworks that want one beside the optimizer (HF
        Trainer, Lightning): its ``step()`` changes nothing and its ``get_last_lr()`` is the lr
        this optimizer's last step used (``fused_lrs.adapters``)."""
        from fused_lrs.adapters import as_lr_scheduler
        return as_lr_scheduler(self)

    def __setattr__(self, name: str, value) -> None:
        # Every torch LRScheduler wraps the optimizer's step on attaching (the wrapper carries
        # _wrapped_by_lr_sched); here that scheduler would rewrite the base lr: warn, once.
        if name == "step" and getattr(value, "_wrapped_by_lr_sched", False):
            from fused_lrs.adapters import warn_torch_scheduler
            warn_torch_scheduler(self)
        super().__setattr__(name, value)

    def get_last_lr(self) -> list[float]:
        """``last_lr`` as Python floats: the lr each group's most recent ``step()`` used.

        This synchronises with the device (it reads ``last_lr`` back); use ``last_lr`` in a
        loop that must not wait."""
        return self.last_lr.tolist()

    @property
    def schedule_step(self) -> torch.Tensor:
        """The schedule counter: a 0-dim int64 device tensor (steps completed)."""
        return self._t

    def set_schedule(self, schedule: Schedule, t: int | None = None) -> None:
        """Replace the schedule, and optionally its position ``t`` (steps completed), e.g. with
        ``from_torch(sched)`` and ``torch_position(sched)`` when taking over a torch run."""
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ValueError(f"{type(self).__name__}: t must be an integer >= 0, got {t!r}")
        self.schedule = schedule
        if t is not None:
            self._t.fill_(t)
