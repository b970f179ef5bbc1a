r"""SGD: ``FusedSGDScheduled``, its record and updates.

The kernel block is ``kernels/sgd.py``; on CPU, torch's ``_fused_sgd_``.
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms.arithmetic import add, applies
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, check_lr
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.SGD's checks and messages, for every group."""
    check_lr(group["lr"])
    if not 0.0 <= group["momentum"]:
        raise ValueError(f"Invalid momentum value: {group['momentum']}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
    if not 0.0 <= group["dampening"] <= 1.0:
        raise ValueError(f"Invalid dampening value: {group['dampening']}")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def reference(p, g, state, k, hp):
    """One SGD update, in the compute dtype. The first update with momentum copies the gradient
    into the buffer (torch's ``buf = clone(grad)``): ``k == 1``. torch's own ops (``add`` with
    ``alpha`` rounds once, as a fused multiply-add), so that the buffer, a sum of many gradients
    whose entries can cancel to near zero, rounds as torch's."""
    d_p = add(g, p, hp["weight_decay"]) if applies(hp["weight_decay"]) else g
    new = {}
    if "momentum_buffer" in state:
        momentum, old = hp["momentum"], state["momentum_buffer"]
        later = add(old * momentum, d_p, 1 - hp["dampening"])
        buf = torch.where(k == 1, d_p, later)
        step = add(d_p, buf, momentum) if hp["nesterov"] else buf
        if isinstance(momentum, torch.Tensor):
            # Scheduled, it may reach 0, where torch's `if momentum != 0` skips the buffer,
            # which keeps its value, and steps on d_p.
            on = momentum != 0
            buf, step = torch.where(on, buf, old), torch.where(on, step, d_p)
        new["momentum_buffer"], d_p = buf, step
    return p - hp["lr"].to(p.dtype) * d_p, new


def _cpu_options(hp) -> dict:
    return dict(weight_decay=hp["weight_decay"], momentum=hp["momentum"],
                dampening=hp["dampening"], nesterov=bool(hp["nesterov"]),
                maximize=bool(hp["maximize"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's fused CPU SGD, through its tensor-lr overload. Its first momentum update copies
    the gradient (``is_first_step``): a bucket is split by ``step == 0``, read from the CPU
    counts (no device to wait for), until every count is past 0."""
    parts = [(None, False)]
    if not b.warm:
        first = b.counts.eq(0).tolist()
        b.warm = not any(first)
        if any(first):
            parts = [([j for j, f in enumerate(first) if f == want], want)
                     for want in (True, False)]
    b.counts.add_(1)
    for index, is_first in parts:
        if index == []:
            continue
        def pick(xs, index=index):
            return xs if index is None or not xs else [xs[j] for j in index]
        torch._fused_sgd_(pick(b.weights), pick(grads), pick(b.states[0]), lr=lr,
                          is_first_step=is_first, **b.options, **amp)


def _cpu_unsupported(dtypes) -> str | None:
    if dtypes & {torch.bfloat16, torch.float16}:
        # pytorch/pytorch#191763: torch 2.12 and 2.13's fused CPU SGD skips every full SIMD
        # block of a bf16/fp16 tensor (0.26 off after one step of lr 0.1 on 64 elements). With
        # master_weights=True the kernel sees fp32 and is right.
        return ("torch's fused CPU SGD miscomputes bf16/fp16 parameters "
                "(pytorch/pytorch#191763); use master_weights=True or impl='reference'")
    return None


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad
  g \leftarrow \pm\nabla_\theta f + \lambda\theta \\
&b \leftarrow g \;(\text{first step}), \quad
  b \leftarrow \mu b + (1-\tau) g \;(\text{after}), \quad
  g \leftarrow g + \mu b \;(\text{nesterov}) \;\text{or}\; g \leftarrow b \\
&\theta \leftarrow \theta - \eta_t g
\end{aligned}
"""

SGD = Algorithm(
    name="sgd", peer="torch.optim.SGD", math=MATH,
    group_keys=("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    row_keys=("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    momentum="momentum", read_momentum=lambda group: group["momentum"],
    columns=(("dampening", lambda group, defaults: float(group["dampening"])),
             ("nesterov", lambda group, defaults: float(group["nesterov"]))),
    slots=(Slot("momentum_buffer", present=lambda group: group["momentum"] != 0,
                required=False),),
    variant=lambda hp: int(hp["momentum"] != 0), variants=(0, 1),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.sgd",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=_cpu_unsupported,
                flat=True),
    saves_step=False, first_update_copies=True)


class FusedSGDScheduled(ScheduledOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, nesterov) with the schedule evaluated inside
    the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.SGD``.
        lr: the base learning rate of each group, which the schedule scales.
        momentum: the momentum factor; a group with momentum != 0 keeps a ``momentum_buffer``.
        dampening: the dampening of the momentum (the buffer adds ``(1 - dampening) g``).
        weight_decay: the L2 penalty, added to the gradient.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximize the objective instead of minimizing it.
        foreach, fused: accepted so that existing code runs. differentiable: must be False.
        momentum_schedule: a spec for the momentum (base: the group's), e.g.
            ``cyclic_momentum(...)``; a group needs momentum != 0 to keep a buffer.

    The state holds torch's ``momentum_buffer`` (when momentum != 0) and a ``step`` count, which
    tells the first update (that copies the gradient into the buffer) from the later ones.
    """

    algorithm = SGD

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
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
