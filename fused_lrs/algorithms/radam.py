r"""RAdam: ``FusedRAdamScheduled``, its record and updates.

The switch on :math:`\rho_k > 5` is per parameter, from its own step count ``k``, on the device.
The kernel block is ``kernels/radam.py``; on CPU, torch's foreach ops (torch fuses no RAdam).
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import foreach
from fused_lrs.algorithms.adam import check_group
from fused_lrs.algorithms.arithmetic import add, applies, lerp
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, number
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def rectification(k, beta2):
    """(rho_k > 5, r_k) for float64 step counts ``k`` (r_k is NaN where rho_k < 4)."""
    beta2_k = beta2 ** k
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * k * beta2_k / (1 - beta2_k)
    rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5
    return rho > 5, rect


def reference(p, g, state, k, hp):
    """One RAdam update (torch's single-tensor order of operations), in the compute dtype."""
    lr, beta1, beta2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    if applies(wd):
        if hp["decoupled"]:
            p = p * (1 - lr * wd).to(p.dtype)
        else:
            g = add(g, p, wd)
    m = lerp(state["exp_avg"], g, 1 - beta1)        # exp_avg.lerp_(grad, 1 - beta1)
    v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    kd = k.double()
    bias_correction1 = 1 - beta1 ** kd
    bias_correction2 = 1 - beta2 ** kd
    on, rect = rectification(kd, beta2)
    step = m / bias_correction1.to(p.dtype) * lr.to(p.dtype)
    # (bias_correction2 ** 0.5) / (sqrt(v) + eps): torch's float / tensor is reciprocal * float.
    adaptive = (v.sqrt() + hp["eps"]).reciprocal() * bias_correction2.sqrt().to(p.dtype)
    step = torch.where(on, step * adaptive * rect.to(p.dtype), step)
    return p - step, {"exp_avg": m, "exp_avg_sq": v}


def _cpu_options(hp) -> dict:
    return dict(beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"],
                weight_decay=hp["weight_decay"], maximize=bool(hp["maximize"]),
                decoupled=bool(hp["decoupled"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's ``_multi_tensor_radam``, with the rectification as tensors of the bucket: the
    rectified step ``m * c / (sqrt(v) + eps)`` and the plain one ``m * u``, each tensor having
    one of ``c`` and ``u`` zero."""
    o = b.options
    b.counts.add_(1)
    g, m, v = foreach.adam_moments(b, grads, lr, o)
    k = b.counts.double()
    step_size = -lr / (1 - o["beta1"] ** k)
    on, rect = rectification(k, o["beta2"])
    rectified = torch.where(on, step_size * rect * (1 - o["beta2"] ** k).sqrt(), 0.0)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, o["eps"])
    torch._foreach_addcdiv_(b.weights, m, denom, rectified)
    torch._foreach_addcmul_(b.weights, m, foreach.per_tensor(
        b, "unrectified", torch.where(on, 0.0, step_size)))


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad g \leftarrow \pm\nabla_\theta f, \quad
  g \leftarrow g + \lambda\theta \;\text{or}\; \theta \leftarrow \theta(1 - \eta_t\lambda)
  \;(\text{decoupled}) \\
&m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
  \quad \hat m = m / (1 - \beta_1^k) \\
&\rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
  \rho_k = \rho_\infty - \frac{2k\beta_2^k}{1-\beta_2^k}, \quad
  r_k = \sqrt{\frac{(\rho_k-4)(\rho_k-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_k}} \\
&\theta \leftarrow \theta - \eta_t \hat m \, r_k \frac{\sqrt{1-\beta_2^k}}{\sqrt v + \epsilon}
  \;\text{if}\; \rho_k > 5, \;\text{else}\; \theta - \eta_t \hat m
\end{aligned}
"""

RADAM = Algorithm(
    name="radam", peer="torch.optim.RAdam", math=MATH,
    group_keys=("lr", "betas", "eps", "weight_decay"),
    row_keys=("lr", "betas", "eps", "weight_decay", "maximize", "decoupled_weight_decay"),
    momentum="beta1", read_momentum=lambda group: group["betas"][0],
    columns=(("beta2", lambda group, defaults: number(group["betas"][1])),
             ("eps", lambda group, defaults: float(group["eps"])),
             ("decoupled", lambda group, defaults: float(group["decoupled_weight_decay"])),
             ("rho_inf", lambda group, defaults: 2 / (1 - number(group["betas"][1])) - 1)),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq")),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.radam",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=foreach.unsupported,
                  amp=False))


class FusedRAdamScheduled(ScheduledOptimizer):
    """``torch.optim.RAdam`` (rectified Adam) with the learning-rate schedule evaluated inside
    the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.RAdam``.
        lr: the base learning rate of each group, which the schedule scales.
        betas: the decay rates of the first and second moment estimates, per group.
        eps: added to the denominator for numerical stability.
        weight_decay: the L2 penalty, or with ``decoupled_weight_decay`` the decoupled decay
            rate (RAdamW).
        decoupled_weight_decay: decay the weights (``theta * (1 - lr * weight_decay)``) rather
            than add the penalty to the gradient.
        maximize: maximize the objective instead of minimizing it.
        foreach, capturable: accepted so that existing code runs. differentiable: must be False.
        momentum_schedule: a spec for beta1 (base: the group's beta1).

    The state holds torch's ``exp_avg``, ``exp_avg_sq`` and ``step``; the rectification term
    and its switch are computed from each parameter's step count on the device.
    """

    algorithm = RADAM

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
