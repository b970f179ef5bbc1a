"""FusedAdamScheduled and FusedAdamWScheduled.

.. math::
    \\begin{aligned}
    &\\eta_t = \\mathrm{schedule}(t, \\mathrm{lr}) \\quad (t = \\text{steps completed}) \\\\
    &g \\leftarrow \\pm\\nabla_\\theta f \\;(\\text{maximize}), \\quad
      g \\leftarrow g + \\lambda\\theta \\;(\\text{Adam}) \\quad\\text{or}\\quad
      \\theta \\leftarrow \\theta(1 - \\eta_t\\lambda) \\;(\\text{AdamW}) \\\\
    &m \\leftarrow \\beta_1 m + (1-\\beta_1) g, \\quad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,
      \\quad \\hat v = \\max(\\hat v, v) \\;(\\text{amsgrad}) \\\\
    &\\theta \\leftarrow \\theta - \\frac{\\eta_t}{1-\\beta_1^k}
      \\frac{m}{\\sqrt{v}/\\sqrt{1-\\beta_2^k} + \\epsilon}
      \\quad (k = \\text{this parameter's step count})
    \\end{aligned}
"""

from __future__ import annotations

import torch

from fused_lrs.optim.base import ScheduledOptimizer, as_float
from fused_lrs.schedules import Schedule

_ARGS_DOC = """
    Args:
        params: parameters or parameter groups, as for ``torch.optim.Adam``.
        lr: the base learning rate of each group (torch's ``base_lrs``); the schedule scales it.
        betas, eps, weight_decay, amsgrad, maximize: as ``torch.optim.Adam``; per group.
        schedule: a spec from ``fused_lrs.schedules`` (default: constant).
        impl: ``"auto"`` (Triton on CUDA for fp32/bf16/fp16, reference otherwise), ``"triton"``
            or ``"reference"``.
        foreach, fused, capturable: accepted so that existing code runs; the Triton path is
            always fused, capturable and sync-free.
        hold_schedule_on_skip: when GradScaler skips a step (inf/NaN gradients), hold the
            schedule counter too (default False: it advances, as torch's usual loop of
            ``scaler.step(opt); sched.step()`` does).
        momentum_schedule: a spec for beta1 (base: the group's beta1), e.g.
            ``one_cycle_momentum(...)``, torch's ``OneCycleLR(cycle_momentum=True)``.
        weight_decay_schedule: a spec for the weight decay (base: the group's).
        master_weights: bf16/fp16 parameters get an fp32 master copy (``state["master"]``) and
            fp32 states; the step updates the master and writes its rounding to the parameter.
            Without it, states take the parameter's dtype, as in torch.
        differentiable: must be False.
"""


class FusedAdamScheduled(ScheduledOptimizer):
    __doc__ = "Adam with the learning-rate schedule evaluated inside the update." + _ARGS_DOC
    algorithm = "adam"
    group_keys = ("lr", "betas", "eps", "weight_decay")
    row_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                "decoupled_weight_decay")
    _decoupled_default = False

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool | None = None, schedule: Schedule | None = None,
                 impl: str = "auto", hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled_default
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._check_group(defaults)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         differentiable=differentiable,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)

    def _check_group(self, group) -> None:
        # torch.optim.Adam's messages, applied to every group (torch checks only the defaults).
        self._check_lr(group["lr"])
        if not 0.0 <= group["eps"]:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: expected a pair, got {betas!r}")
        for i, beta in enumerate(betas):
            if isinstance(beta, torch.Tensor) and beta.numel() != 1:
                raise ValueError("Tensor betas[0] and betas[1] must be 1-element")
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")

    def _ensure_state(self, p, state, group) -> None:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = self._new_state_tensor(p)
            state["exp_avg_sq"] = self._new_state_tensor(p)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = self._new_state_tensor(p)
        self._ensure_master(p, state)

    def _expected_state(self, group):
        required = {"step", "exp_avg", "exp_avg_sq"}
        amsgrad = {"max_exp_avg_sq"} if group.get("amsgrad") else set()
        return required | amsgrad, required | {"max_exp_avg_sq", "master"}

    def _group_row(self, group) -> list[float]:
        beta1, beta2 = group["betas"]
        return [as_float(group["lr"]), as_float(beta1), as_float(beta2), float(group["eps"]),
                float(group["weight_decay"]), float(group["amsgrad"]), float(group["maximize"]),
                float(group["decoupled_weight_decay"])]


class FusedAdamWScheduled(FusedAdamScheduled):
    __doc__ = ("AdamW (decoupled weight decay, default 1e-2) with the learning-rate schedule "
               "evaluated inside the update." + _ARGS_DOC)
    _decoupled_default = True

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)

    def __setstate__(self, state) -> None:
        # As torch's AdamW: whatever checkpoint is loaded, the weight decay stays decoupled.
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
