r"""ASGD (averaged SGD): ``FusedASGDScheduled``, its record and updates.

``eta`` (:math:`e`) and ``mu`` are scalar states (float32, 0-dim, torch's keys), not closed
forms: each update uses the values the parameter's previous update computed, and ``eta`` is
computed from the lr of the step that computes it, so a schedule drives it exactly as torch's
scheduler would (``eta`` of a parameter's first update is that step's lr, as torch's state
initialisation reads ``group["lr"]``). ``ax`` (:math:`\bar\theta`) is the average.

torch's default path on CPU (single-tensor; CPU tensors take no foreach) is the specification:
it computes the new ``eta`` and ``mu`` in float64 from the float32 count and rounds them to
float32, and copies the parameter into ``ax`` while ``mu`` is 1. (Its foreach path computes
``eta`` in float32 and always averages; its capturable path too.) The kernel block is
``kernels/asgd.py``; on CPU, torch's foreach ops with the single-tensor path's scalars.
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import foreach
from fused_lrs.algorithms.arithmetic import add, applies
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Scalar, Slot, check_lr
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.ASGD's checks and messages, for every group."""
    check_lr(group["lr"])
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")


def next_scalars(lr, k, hp) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``eta`` and ``mu`` an update with float64 count ``k`` leaves, float32."""
    eta = lr / (1 + hp["lambd"] * lr * k) ** hp["alpha"]
    mu = 1 / torch.clamp(k - hp["t0"], min=1)
    return eta.float(), mu.float()


def reference(p, g, state, k, hp):
    """One ASGD update (torch's single-tensor order of operations), in the compute dtype."""
    lr, lambd, wd = hp["lr"], hp["lambd"], hp["weight_decay"]
    eta = torch.where(k == 1, lr.float(), state["eta"]).double()    # the first: this lr
    mu = state["mu"]
    if applies(wd):
        g = add(g, p, wd)                           # grad.add(param, alpha=weight_decay)
    p = p * (1 - lambd * eta).to(p.dtype)           # decay term
    p = p + (-eta).to(p.dtype) * g                  # param.add_(grad, alpha=-eta)
    ax = state["ax"]
    ax = torch.where(mu == 1, p, ax + (p - ax) * mu.to(p.dtype))
    new_eta, new_mu = next_scalars(lr, k.double(), hp)
    return p, {"ax": ax, "eta": new_eta, "mu": new_mu}


def _cpu_options(hp) -> dict:
    return dict(lambd=hp["lambd"], alpha=hp["alpha"], t0=hp["t0"],
                weight_decay=hp["weight_decay"], maximize=bool(hp["maximize"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's ``_multi_tensor_asgd`` (``param - eta (g + lambd param)``), with ``eta`` and
    ``mu`` from the bucket's buffers, computed as the single-tensor path computes them."""
    o = b.options
    b.counts.add_(1)
    eta, mu = b.scalars
    eta.copy_(torch.where(b.counts == 1, lr.float(), eta))     # a first update: this lr
    g, owned = foreach.gradients(grads, b.weights, o["maximize"], o["weight_decay"])
    if owned:
        torch._foreach_add_(g, b.weights, alpha=o["lambd"])
    else:
        g = torch._foreach_add(g, b.weights, alpha=o["lambd"])
    torch._foreach_addcmul_(b.weights, g, foreach.views(b, "eta", eta), value=-1)
    # ax + mu (param - ax) as a lerp: at mu = 1 it is the parameter itself, as torch's copy.
    torch._foreach_lerp_(b.states[0], b.weights,
                         foreach.per_tensor(b, "mu", mu.to(b.weights[0].dtype)))
    new_eta, new_mu = next_scalars(lr, b.counts.double(), o)
    eta.copy_(new_eta)
    mu.copy_(new_mu)


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad
  g \leftarrow \pm\nabla_\theta f + \lambda\theta \\
&\theta \leftarrow \theta (1 - \lambda_d e) - e g, \quad
  \bar\theta \leftarrow \theta \;(\mu = 1) \;\text{else}\;
  \bar\theta + \mu (\theta - \bar\theta) \\
&e \leftarrow \frac{\eta_t}{(1 + \lambda_d \eta_t k)^\alpha}, \quad
  \mu \leftarrow \frac{1}{\max(1, k - t_0)}
  \quad (k = \text{this parameter's step count})
\end{aligned}
"""

ASGD = Algorithm(
    name="asgd", peer="torch.optim.ASGD", math=MATH,
    group_keys=("lr", "lambd", "alpha", "t0", "weight_decay"),
    row_keys=("lr", "lambd", "alpha", "t0", "weight_decay", "maximize"),
    columns=(("lambd", lambda group, defaults: float(group["lambd"])),
             ("alpha", lambda group, defaults: float(group["alpha"])),
             ("t0", lambda group, defaults: float(group["t0"]))),
    slots=(Slot("ax"),), scalars=(Scalar("eta", "lr"), Scalar("mu", 1.0)),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.asgd",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=foreach.unsupported,
                  amp=False))


class FusedASGDScheduled(ScheduledOptimizer):
    """``torch.optim.ASGD`` (averaged SGD) with the learning-rate schedule evaluated inside the
    update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.ASGD``.
        lr: the base learning rate of each group (default 1e-2), which the schedule scales;
            each update's step size ``eta`` is computed from it.
        lambd: the decay term.
        alpha: the power of the step size's decay.
        t0: the step count after which the parameters are averaged into ``ax``.
        weight_decay: the L2 penalty, added to the gradient.
        maximize: maximize the objective instead of minimizing it.
        foreach, capturable: accepted so that existing code runs. differentiable: must be False.
        momentum_schedule: refused: ASGD has no momentum-like coefficient.

    The state holds torch's ``ax``, ``eta`` and ``mu`` (0-dim float32 tensors on the
    parameter's device) and ``step``.
    """

    algorithm = ASGD

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, *,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
