r"""Adam and AdamW: ``FusedAdamScheduled``, ``FusedAdamWScheduled``, their records and updates.

The kernel block is ``kernels/adam.py``; on CPU, torch's ``_fused_adam_`` / ``_fused_adamw_``.
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms.arithmetic import applies
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, check_lr, number
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.Adam's checks and messages, for every group (torch checks the defaults)."""
    check_lr(group["lr"])
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


def reference(p, g, state, k, hp):
    """One Adam/AdamW update (torch's order of operations), in the compute dtype."""
    lr, beta1, beta2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    if applies(wd):
        if hp["decoupled"]:                # AdamW: decay the weights, not the gradient
            p = p * (1 - lr * wd).to(p.dtype)
        else:                              # Adam: L2 penalty folded into the gradient
            g = g + wd * p
    m = m + (1 - beta1) * (g - m)          # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + (1 - beta2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    bias_correction1 = 1 - beta1 ** k.double()
    bias_correction2_sqrt = (1 - beta2 ** k.double()).sqrt()
    step_size = (lr / bias_correction1).to(p.dtype)
    v_hat = v
    if hp["amsgrad"]:
        v_hat = new["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], v)
    denom = v_hat.sqrt() / bias_correction2_sqrt.to(p.dtype) + hp["eps"]
    return p - step_size * m / denom, new


def _cpu_options(hp) -> dict:
    return dict(beta1=hp["beta1"], beta2=hp["beta2"], weight_decay=hp["weight_decay"],
                eps=hp["eps"], amsgrad=bool(hp["amsgrad"]), maximize=bool(hp["maximize"]),
                decoupled=bool(hp["decoupled"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's fused CPU Adam/AdamW, through its tensor-lr overload."""
    o = b.options
    b.counts.add_(1)
    kernel = torch._fused_adamw_ if o["decoupled"] else torch._fused_adam_
    kernel(b.weights, grads, *b.states, b.steps, lr=lr, beta1=o["beta1"], beta2=o["beta2"],
           weight_decay=o["weight_decay"], eps=o["eps"], amsgrad=o["amsgrad"],
           maximize=o["maximize"], **amp)


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}) \quad (t = \text{steps completed}) \\
&g \leftarrow \pm\nabla_\theta f \;(\text{maximize}), \quad
  g \leftarrow g + \lambda\theta \;(\text{Adam}) \quad\text{or}\quad
  \theta \leftarrow \theta(1 - \eta_t\lambda) \;(\text{AdamW}) \\
&m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
  \quad \hat v = \max(\hat v, v) \;(\text{amsgrad}) \\
&\theta \leftarrow \theta - \frac{\eta_t}{1-\beta_1^k}
  \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^k} + \epsilon}
  \quad (k = \text{this parameter's step count})
\end{aligned}
"""

ADAM = Algorithm(
    name="adam", peer="torch.optim.Adam", math=MATH,
    group_keys=("lr", "betas", "eps", "weight_decay"),
    row_keys=("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
              "decoupled_weight_decay"),
    momentum="beta1", read_momentum=lambda group: group["betas"][0],
    columns=(("beta2", lambda group, defaults: number(group["betas"][1])),
             ("eps", lambda group, defaults: float(group["eps"])),
             ("amsgrad", lambda group, defaults: float(group["amsgrad"])),
             ("decoupled", lambda group, defaults: float(group["decoupled_weight_decay"]))),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq"),
           Slot("max_exp_avg_sq", present=lambda group: bool(group.get("amsgrad")))),
    variant=lambda hp: int(hp["amsgrad"] != 0), variants=(0, 1),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.adam",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, flat=True))
ADAMW = ADAM.renamed("adamw", peer="torch.optim.AdamW")

_ARGS_DOC = """
    Args:
        params: parameters or parameter groups, as for ``torch.optim.Adam``.
        lr: the base learning rate of each group (torch's ``base_lrs``); the schedule scales it.
        betas: the decay rates of the first and second moment estimates, per group.
        eps: added to the denominator for numerical stability.
        weight_decay: the L2 penalty (Adam) or the decoupled decay rate (AdamW).
        amsgrad: keep the maximum of the second moment estimates (``max_exp_avg_sq``).
        maximize: maximize the objective instead of minimizing it.
        decoupled_weight_decay: (``FusedAdamScheduled``) decay the weights by ``lr * wd``
            instead of adding the L2 term to the gradient: AdamW.
        foreach, fused, capturable: accepted so that existing code runs; the step is always
            fused, capturable and sync-free.
        momentum_schedule: a spec for beta1 (base: the group's beta1), e.g.
            ``one_cycle_momentum(...)``, torch's ``OneCycleLR(cycle_momentum=True)``.
        differentiable: must be False.
"""


class FusedAdamScheduled(ScheduledOptimizer):
    __doc__ = ("``torch.optim.Adam`` with the learning-rate schedule evaluated inside the "
               "update." + _ARGS_DOC)
    algorithm = ADAM
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
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)


class FusedAdamWScheduled(FusedAdamScheduled):
    __doc__ = ("``torch.optim.AdamW`` (decoupled weight decay, default 1e-2) with the "
               "learning-rate schedule evaluated inside the update." + _ARGS_DOC)
    algorithm = ADAMW
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
