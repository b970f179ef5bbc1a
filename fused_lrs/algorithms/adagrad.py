r"""Adagrad: ``FusedAdagradScheduled``, its record and updates (peer: ``torch.optim.Adagrad``).

As torch's, every parameter's state (``step``, ``sum`` filled with the constructor's
``initial_accumulator_value``) is made at construction. The decayed lr is computed from the step
count where the update runs: on the device in the kernel, from the float32 count in the
reference.

The kernel block is ``kernels/adagrad.py``. On CPU, torch's fused CPU Adagrad
(``torch._fused_adagrad_``, its tensor-lr overload), which is what
``torch.optim.Adagrad(fused=True)`` runs. Its C++ reads the lr tensor's value and each step
count in host memory (``lr.item()``, pytorch/pytorch#153078, as torch's fused CPU Adam does):
on CPU that is a load from the memory the step just wrote, not a wait for a device, and our
step makes no Python-level read of either. On CUDA the kernel computes ``lr / (1 + (k - 1)
lr_decay)`` itself and nothing is read back.
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms.arithmetic import add, applies
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, check_lr
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.Adagrad's checks and messages, for every group."""
    check_lr(group["lr"])
    for key, name in (("lr_decay", "lr_decay"), ("weight_decay", "weight_decay"),
                      ("initial_accumulator_value", "initial_accumulator_value"),
                      ("eps", "epsilon")):
        if not 0.0 <= group[key]:
            raise ValueError(f"Invalid {name} value: {group[key]}")


def reference(p, g, state, k, hp):
    """One Adagrad update (torch's order of operations), in the compute dtype."""
    if applies(hp["weight_decay"]):
        g = add(g, p, hp["weight_decay"])                 # grad.add(param, alpha=wd)
    clr = hp["lr"] / (1 + (k.double() - 1) * hp["lr_decay"])
    s = torch.addcmul(state["sum"], g, g)                 # sum.addcmul_(g, g, value=1)
    std = s.sqrt() + hp["eps"]
    return p - clr.to(p.dtype) * g / std, {"sum": s}      # p.addcdiv_(g, std, value=-clr)


def _cpu_options(hp) -> dict:
    return dict(lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"], eps=hp["eps"],
                maximize=bool(hp["maximize"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's fused CPU Adagrad, through its tensor-lr overload (it reads the counts after
    they advance, as ``Adagrad(fused=True)`` does)."""
    b.counts.add_(1)
    torch._fused_adagrad_(b.weights, grads, b.states[0], b.steps, lr=lr, **b.options, **amp)


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad
  \tilde\eta = \frac{\eta_t}{1 + (k - 1)\,\mathrm{lr\_decay}}
  \quad (k = \text{this parameter's step count}) \\
&g \leftarrow \pm\nabla_\theta f + \lambda\theta, \quad s \leftarrow s + g^2, \quad
  \theta \leftarrow \theta - \tilde\eta \frac{g}{\sqrt{s} + \epsilon}
\end{aligned}
"""

ADAGRAD = Algorithm(
    name="adagrad", peer="torch.optim.Adagrad", math=MATH,
    group_keys=("lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value"),
    row_keys=("lr", "lr_decay", "eps", "weight_decay", "maximize"),
    columns=(("lr_decay", lambda group, defaults: float(group["lr_decay"])),
             ("eps", lambda group, defaults: float(group["eps"]))),
    slots=(Slot("sum", initial="initial_accumulator_value"),),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.adagrad",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, flat=True), eager_state=True)


class FusedAdagradScheduled(ScheduledOptimizer):
    """``torch.optim.Adagrad`` with the learning-rate schedule evaluated inside the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.Adagrad``.
        lr: the base learning rate of each group, which the schedule scales.
        lr_decay: each parameter's lr is ``lr(t) / (1 + (k - 1) lr_decay)`` at its k-th
            update, computed on the device from its step count.
        weight_decay: the L2 penalty, added to the gradient.
        initial_accumulator_value: what every ``sum`` starts at (torch's rule: the
            constructor's value, for every group).
        eps: added to the denominator for numerical stability.
        foreach, fused: accepted so that existing code runs; the step is always fused.
        maximize: maximize the objective instead of minimizing it.
        differentiable: must be False.

    Adagrad has no momentum: ``momentum_schedule=`` is refused. As torch's, the state of every
    parameter exists from construction (``step`` 0, ``sum``).
    """

    algorithm = ADAGRAD

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
