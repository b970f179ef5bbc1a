r"""Adadelta: ``FusedAdadeltaScheduled``, its record and updates.

Adadelta has no momentum-like coefficient (``rho`` averages squares): ``momentum_schedule`` is
refused. The kernel block is ``kernels/adadelta.py``; on CPU, torch's foreach ops (torch fuses
no Adadelta).
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import foreach
from fused_lrs.algorithms.arithmetic import add, applies
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, check_lr
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.Adadelta's checks and messages, for every group."""
    check_lr(group["lr"])
    if not 0.0 <= group["rho"] <= 1.0:
        raise ValueError(f"Invalid rho value: {group['rho']}")
    if not 0.0 <= group["eps"]:
        raise ValueError(f"Invalid epsilon value: {group['eps']}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")


def reference(p, g, state, k, hp):
    """One Adadelta update (torch's single-tensor order of operations), in the compute dtype."""
    rho, eps, wd = hp["rho"], hp["eps"], hp["weight_decay"]
    if applies(wd):
        g = add(g, p, wd)                           # grad.add(param, alpha=weight_decay)
    square_avg = state["square_avg"] * rho + (1 - rho) * g * g
    std = (square_avg + eps).sqrt()
    delta = (state["acc_delta"] + eps).sqrt() / std * g
    acc_delta = state["acc_delta"] * rho + (1 - rho) * delta * delta
    return add(p, delta, -hp["lr"]), {"square_avg": square_avg, "acc_delta": acc_delta}


def _cpu_options(hp) -> dict:
    return dict(rho=hp["rho"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                maximize=bool(hp["maximize"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's ``_multi_tensor_adadelta``, with its tensor-lr ending (``deltas * -lr``)."""
    o = b.options
    b.counts.add_(1)
    g, _ = foreach.gradients(grads, b.weights, o["maximize"], o["weight_decay"])
    square_avg, acc_delta = b.states[0], b.states[1]
    torch._foreach_mul_(square_avg, o["rho"])
    torch._foreach_addcmul_(square_avg, g, g, value=1 - o["rho"])
    std = torch._foreach_add(square_avg, o["eps"])
    torch._foreach_sqrt_(std)
    deltas = torch._foreach_add(acc_delta, o["eps"])
    torch._foreach_sqrt_(deltas)
    torch._foreach_div_(deltas, std)
    torch._foreach_mul_(deltas, g)
    torch._foreach_mul_(acc_delta, o["rho"])
    torch._foreach_addcmul_(acc_delta, deltas, deltas, value=1 - o["rho"])
    torch._foreach_mul_(deltas, -lr)
    torch._foreach_add_(b.weights, deltas)


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad
  g \leftarrow \pm\nabla_\theta f + \lambda\theta \\
&v \leftarrow \rho v + (1-\rho) g^2, \quad
  \Delta = \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}} g, \quad
  u \leftarrow \rho u + (1-\rho) \Delta^2 \\
&\theta \leftarrow \theta - \eta_t \Delta
\end{aligned}
"""

ADADELTA = Algorithm(
    name="adadelta", peer="torch.optim.Adadelta", math=MATH,
    group_keys=("lr", "rho", "eps", "weight_decay"),
    row_keys=("lr", "rho", "eps", "weight_decay", "maximize"),
    columns=(("rho", lambda group, defaults: float(group["rho"])),
             ("eps", lambda group, defaults: float(group["eps"]))),
    slots=(Slot("square_avg"), Slot("acc_delta")),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.adadelta",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=foreach.unsupported,
                  amp=False))


class FusedAdadeltaScheduled(ScheduledOptimizer):
    """``torch.optim.Adadelta`` with the learning-rate schedule evaluated inside the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.Adadelta``.
        lr: the base coefficient that scales each delta (default 1.0), which the schedule
            scales.
        rho: the decay rate of the running averages of squared gradients and deltas.
        eps: added inside both square roots for numerical stability.
        weight_decay: the L2 penalty, added to the gradient.
        maximize: maximize the objective instead of minimizing it.
        foreach, capturable: accepted so that existing code runs. differentiable: must be False.
        momentum_schedule: refused: Adadelta has no momentum-like coefficient.

    The state holds torch's ``square_avg``, ``acc_delta`` and ``step``.
    """

    algorithm = ADADELTA

    def __init__(self, params, lr: float | torch.Tensor = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False, differentiable: bool = False,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
