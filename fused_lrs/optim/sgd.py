"""FusedSGDScheduled.

.. math::
    \\begin{aligned}
    &\\eta_t = \\mathrm{schedule}(t, \\mathrm{lr}), \\quad
      g \\leftarrow \\pm\\nabla_\\theta f + \\lambda\\theta \\\\
    &b \\leftarrow g \\;(\\text{first step}), \\quad
      b \\leftarrow \\mu b + (1-\\tau) g \\;(\\text{after}), \\quad
      g \\leftarrow g + \\mu b \\;(\\text{nesterov}) \\;\\text{or}\\; g \\leftarrow b \\\\
    &\\theta \\leftarrow \\theta - \\eta_t g
    \\end{aligned}
"""

from __future__ import annotations

import torch

from fused_lrs.optim.base import ScheduledOptimizer, as_float
from fused_lrs.schedules import Schedule


class FusedSGDScheduled(ScheduledOptimizer):
    """SGD (with momentum, dampening, nesterov) with the schedule evaluated inside the update.

    Args:
        params, lr, momentum, dampening, weight_decay, nesterov, maximize: as ``torch.optim.SGD``;
            ``lr`` is each group's base lr, which the schedule scales.
        schedule: a spec from ``fused_lrs.schedules`` (default: constant).
        impl: ``"auto"``, ``"triton"`` or ``"reference"`` (see FusedAdamScheduled).
        foreach, fused: accepted so that existing code runs. differentiable: must be False.
        hold_schedule_on_skip, weight_decay_schedule, master_weights: see FusedAdamScheduled.
        momentum_schedule: a spec for the momentum (base: the group's), e.g.
            ``cyclic_momentum(...)``; a group needs momentum != 0 to keep a buffer.

    The state holds torch's ``momentum_buffer`` (when momentum != 0) and a ``step`` count, which
    tells the first update (that copies the gradient into the buffer) from the later ones.
    """

    algorithm = "sgd"
    group_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    row_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        self._check_group(defaults)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         differentiable=differentiable,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)

    def _check_group(self, group) -> None:
        # torch.optim.SGD's messages, applied to every group.
        self._check_lr(group["lr"])
        if not 0.0 <= group["momentum"]:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if not 0.0 <= group["dampening"] <= 1.0:
            raise ValueError(f"Invalid dampening value: {group['dampening']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _ensure_state(self, p, state, group) -> None:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            # `step` counts the updates made with this buffer: 0 makes the next update copy
            # the gradient in, as torch does for a missing buffer.
            state["momentum_buffer"] = self._new_state_tensor(p)
            state["step"].zero_()
        self._ensure_master(p, state)

    def _expected_state(self, group):
        return set(), {"step", "momentum_buffer", "master"}

    def _adopt_state(self, p, state) -> None:
        # A torch checkpoint has no step: a momentum buffer means at least one update was made.
        if "step" not in state:
            state["step"] = torch.tensor(float(state.get("momentum_buffer") is not None))
        if state.get("momentum_buffer", 0) is None:
            del state["momentum_buffer"]
        super()._adopt_state(p, state)

    def _group_row(self, group) -> list[float]:
        return [as_float(group["lr"]), float(group["momentum"]), float(group["dampening"]), 0.0,
                float(group["weight_decay"]), float(group["nesterov"]), float(group["maximize"]),
                0.0]
