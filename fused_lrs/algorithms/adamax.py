r"""Adamax: ``FusedAdamaxScheduled``, its record and updates.

The kernel block is ``kernels/adamax.py``; on CPU, torch's foreach ops (torch fuses no Adamax).
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import foreach
from fused_lrs.algorithms.adam import check_group
from fused_lrs.algorithms.arithmetic import add, applies, lerp
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, number
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def reference(p, g, state, k, hp):
    """One Adamax update (torch's single-tensor order of operations), in the compute dtype."""
    lr, beta1, wd = hp["lr"], hp["beta1"], hp["weight_decay"]
    if applies(wd):
        g = add(g, p, wd)                           # grad.add(param, alpha=weight_decay)
    m = lerp(state["exp_avg"], g, 1 - beta1)        # exp_avg.lerp_(grad, 1 - beta1)
    u = torch.maximum(state["exp_inf"] * hp["beta2"], g.abs() + hp["eps"])
    step_size = -(lr / (1 - beta1 ** k.double()))   # -clr
    return p + step_size.to(p.dtype) * m / u, {"exp_avg": m, "exp_inf": u}


def _cpu_options(hp) -> dict:
    return dict(beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"],
                weight_decay=hp["weight_decay"], maximize=bool(hp["maximize"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's ``_multi_tensor_adamax``, with the step sizes as one tensor of the bucket."""
    o = b.options
    b.counts.add_(1)
    g, owned = foreach.gradients(grads, b.weights, o["maximize"], o["weight_decay"])
    m, u = b.states[0], b.states[1]
    torch._foreach_lerp_(m, g, 1 - o["beta1"])
    torch._foreach_mul_(u, o["beta2"])
    if owned:
        torch._foreach_abs_(g)
    else:
        g = torch._foreach_abs(g)
    torch._foreach_add_(g, o["eps"])
    torch._foreach_maximum_(u, g)
    step_size = -lr / (1 - o["beta1"] ** b.counts.double())
    torch._foreach_addcdiv_(b.weights, m, u, step_size)


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}) \quad (t = \text{steps completed}), \quad
  g \leftarrow \pm\nabla_\theta f + \lambda\theta \\
&m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
  u \leftarrow \max(\beta_2 u, |g| + \epsilon) \\
&\theta \leftarrow \theta - \frac{\eta_t}{1-\beta_1^k} \frac{m}{u}
  \quad (k = \text{this parameter's step count})
\end{aligned}
"""

ADAMAX = Algorithm(
    name="adamax", peer="torch.optim.Adamax", math=MATH,
    group_keys=("lr", "betas", "eps", "weight_decay"),
    row_keys=("lr", "betas", "eps", "weight_decay", "maximize"),
    momentum="beta1", read_momentum=lambda group: group["betas"][0],
    columns=(("beta2", lambda group, defaults: number(group["betas"][1])),
             ("eps", lambda group, defaults: float(group["eps"]))),
    slots=(Slot("exp_avg"), Slot("exp_inf")),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.adamax",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=foreach.unsupported,
                  amp=False))


class FusedAdamaxScheduled(ScheduledOptimizer):
    """``torch.optim.Adamax`` (Adam with the infinity norm) with the learning-rate schedule
    evaluated inside the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.Adamax``.
        lr: the base learning rate of each group (default 2e-3), which the schedule scales.
        betas: the decay rates of the first moment and of the infinity norm, per group.
        eps: added to the infinity norm's new entries.
        weight_decay: the L2 penalty, added to the gradient.
        maximize: maximize the objective instead of minimizing it.
        foreach, capturable: accepted so that existing code runs. differentiable: must be False.
        momentum_schedule: a spec for beta1 (base: the group's beta1).

    The state holds torch's ``exp_avg``, ``exp_inf`` and ``step``.
    """

    algorithm = ADAMAX

    def __init__(self, params, lr: float | torch.Tensor = 2e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
