r"""NAdam: ``FusedNAdamScheduled``, its record and updates.

``mu_product`` is a running product, not a closed form of ``k``: with a momentum schedule each
factor takes that step's beta1. So it is a scalar state (float32, 0-dim, torch's key), which
every backend advances on the device: torch rounds each product to float32
(``mu_product *= mu``), and so do the reference, the kernel and the CPU update.
The kernel block is ``kernels/nadam.py``; on CPU, torch's foreach ops (torch fuses no NAdam).
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import foreach
from fused_lrs.algorithms.adam import check_group as check_adam_group
from fused_lrs.algorithms.arithmetic import add, applies, lerp
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Scalar, Slot, number
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.NAdam's checks and messages, for every group."""
    check_adam_group(group)
    if not 0.0 <= group["momentum_decay"]:
        raise ValueError(f"Invalid momentum_decay value: {group['momentum_decay']}")


def momentum_cache(beta1, k, momentum_decay):
    """mu_k = beta1 (1 - 0.96 ** (k psi) / 2), for float64 step counts ``k``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (k * momentum_decay))


def reference(p, g, state, k, hp):
    """One NAdam update (torch's single-tensor order of operations), in the compute dtype."""
    lr, beta1, beta2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    kd = k.double()
    bias_correction2 = 1 - beta2 ** kd
    if applies(wd):
        if hp["decoupled"]:
            p = p * (1 - lr * wd).to(p.dtype)
        else:
            g = add(g, p, wd)
    mu = momentum_cache(beta1, kd, hp["momentum_decay"])
    mu_next = momentum_cache(beta1, kd + 1, hp["momentum_decay"])
    mu_product = state["mu_product"] * mu.float()   # float32, as torch's mu_product *= mu
    m = lerp(state["exp_avg"], g, 1 - beta1)        # exp_avg.lerp_(grad, 1 - beta1)
    v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    denom = (v / bias_correction2.to(p.dtype)).sqrt() + hp["eps"]
    product = mu_product.double()
    grad_step = -lr * (1 - mu) / (1 - product)
    avg_step = -lr * mu_next / (1 - product * mu_next)
    p = p + grad_step.to(p.dtype) * g / denom      # param.addcdiv_(grad, denom, value=...)
    p = p + avg_step.to(p.dtype) * m / denom       # param.addcdiv_(exp_avg, denom, value=...)
    return p, {"exp_avg": m, "exp_avg_sq": v, "mu_product": mu_product}


def _cpu_options(hp) -> dict:
    return dict(beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"],
                weight_decay=hp["weight_decay"], momentum_decay=hp["momentum_decay"],
                maximize=bool(hp["maximize"]), decoupled=bool(hp["decoupled"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's ``_multi_tensor_nadam``, with the momentum cache, the bucket's mu_product buffer
    and the step sizes as tensors of the bucket."""
    o = b.options
    b.counts.add_(1)
    g, m, v = foreach.adam_moments(b, grads, lr, o)
    k = b.counts.double()
    mu = momentum_cache(o["beta1"], k, o["momentum_decay"])
    mu_next = momentum_cache(o["beta1"], k + 1, o["momentum_decay"])
    mu_product = b.scalars[0]
    mu_product.mul_(mu.float())
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, foreach.per_tensor(b, "bc2_sqrt", (1 - o["beta2"] ** k).sqrt()))
    torch._foreach_add_(denom, o["eps"])
    product = mu_product.double()
    torch._foreach_addcdiv_(b.weights, g, denom, -lr * (1 - mu) / (1 - product))
    torch._foreach_addcdiv_(b.weights, m, denom, -lr * mu_next / (1 - product * mu_next))


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad g \leftarrow \pm\nabla_\theta f, \quad
  g \leftarrow g + \lambda\theta \;\text{or}\; \theta \leftarrow \theta(1 - \eta_t\lambda)
  \;(\text{decoupled}) \\
&\mu_k = \beta_1 (1 - \tfrac12 0.96^{k\psi}), \quad
  \mu_{k+1} = \beta_1 (1 - \tfrac12 0.96^{(k+1)\psi}), \quad
  \Pi_k = \Pi_{k-1}\mu_k \;(\texttt{mu\_product}) \\
&m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
  \quad d = \sqrt{v / (1 - \beta_2^k)} + \epsilon \\
&\theta \leftarrow \theta - \eta_t \frac{1-\mu_k}{1-\Pi_k} \frac{g}{d}
  - \eta_t \frac{\mu_{k+1}}{1-\Pi_k\mu_{k+1}} \frac{m}{d}
\end{aligned}
"""

NADAM = Algorithm(
    name="nadam", peer="torch.optim.NAdam", math=MATH,
    group_keys=("lr", "betas", "eps", "weight_decay", "momentum_decay"),
    row_keys=("lr", "betas", "eps", "weight_decay", "momentum_decay", "maximize",
              "decoupled_weight_decay"),
    momentum="beta1", read_momentum=lambda group: group["betas"][0],
    columns=(("beta2", lambda group, defaults: number(group["betas"][1])),
             ("eps", lambda group, defaults: float(group["eps"])),
             ("momentum_decay", lambda group, defaults: float(group["momentum_decay"])),
             ("decoupled", lambda group, defaults: float(group["decoupled_weight_decay"]))),
    slots=(Slot("exp_avg"), Slot("exp_avg_sq")), scalars=(Scalar("mu_product", 1.0),),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.nadam",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=foreach.unsupported,
                  amp=False))


class FusedNAdamScheduled(ScheduledOptimizer):
    """``torch.optim.NAdam`` (Adam with Nesterov momentum) with the learning-rate schedule
    evaluated inside the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.NAdam``.
        lr: the base learning rate of each group (default 2e-3), which the schedule scales.
        betas: the decay rates of the first and second moment estimates, per group.
        eps: added to the denominator for numerical stability.
        weight_decay: the L2 penalty, or with ``decoupled_weight_decay`` the decoupled decay
            rate (NAdamW).
        momentum_decay: psi, the decay of the momentum cache ``mu_k`` (default 4e-3).
        decoupled_weight_decay: decay the weights (``theta * (1 - lr * weight_decay)``) rather
            than add the penalty to the gradient.
        maximize: maximize the objective instead of minimizing it.
        foreach, capturable: accepted so that existing code runs. differentiable: must be False.
        momentum_schedule: a spec for beta1 (base: the group's beta1); each step's momentum
            cache takes that step's beta1, and ``mu_product`` multiplies them up.

    The state holds torch's ``exp_avg``, ``exp_avg_sq``, ``mu_product`` (a 0-dim float32 tensor
    on the parameter's device) and ``step``.
    """

    algorithm = NADAM

    def __init__(self, params, lr: float | torch.Tensor = 2e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
