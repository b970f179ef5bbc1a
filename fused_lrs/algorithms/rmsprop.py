r"""RMSprop: ``FusedRMSpropScheduled``, its record and updates (peer: ``torch.optim.RMSprop``).

The kernel block is ``kernels/rmsprop.py``; on CPU, torch's foreach ops in the order of torch's
``_multi_tensor_rmsprop`` (torch has no fused RMSprop), with the lr as a tensor operand.
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import waves
from fused_lrs.algorithms.arithmetic import add, applies, constants, scalar
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, check_lr
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """torch.optim.RMSprop's checks and messages, for every group."""
    check_lr(group["lr"])
    for key, name in (("eps", "epsilon"), ("momentum", "momentum"),
                      ("weight_decay", "weight_decay"), ("alpha", "alpha")):
        if not 0.0 <= group[key]:
            raise ValueError(f"Invalid {name} value: {group[key]}")


def reference(p, g, state, k, hp):
    """One RMSprop update with torch's own ops in torch's order, in the compute dtype, so that
    it rounds as torch does (``addcmul`` rounds once, a fused multiply-add, on CPU). The lr is
    a device tensor: ``p.add_(buf, alpha=-lr)`` is ``addcmul(p, buf, -lr)``, the same rounding."""
    lr, alpha, momentum = hp["lr"].to(p.dtype), hp["alpha"], hp["momentum"]
    if applies(hp["weight_decay"]):
        g = add(g, p, hp["weight_decay"])                    # grad.add(param, alpha=wd)
    v = torch.addcmul(state["square_avg"] * alpha, g, g, value=1 - alpha)
    new = {"square_avg": v}
    if "grad_avg" in state:                                  # centered
        g_avg = new["grad_avg"] = state["grad_avg"].lerp(g, 1 - alpha)
        avg = torch.addcmul(v, g_avg, g_avg, value=-1).sqrt() + hp["eps"]
    else:
        avg = v.sqrt() + hp["eps"]
    if "momentum_buffer" in state:
        old = state["momentum_buffer"]
        buf = old * scalar(momentum, p) + g / avg            # buf.mul_(m).addcdiv_(g, avg)
        stepped = torch.addcmul(p, buf, -lr)                 # p.add_(buf, alpha=-lr)
        if isinstance(momentum, torch.Tensor):
            # Scheduled, it may reach 0, where torch's `if momentum > 0` skips the buffer,
            # which keeps its value, and takes the plain step.
            on = momentum > 0
            buf, stepped = torch.where(on, buf, old), torch.where(on, stepped, p - lr * g / avg)
        new["momentum_buffer"] = buf
        return stepped, new
    return p - lr * g / avg, new                             # p.addcdiv_(g, avg, value=-lr)


def _cpu_options(hp) -> dict:
    return dict(alpha=hp["alpha"], weight_decay=hp["weight_decay"],
                maximize=bool(hp["maximize"]),
                constants=constants(alpha=hp["alpha"], eps=hp["eps"], momentum=hp["momentum"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's ``_multi_tensor_rmsprop``, op for op (torch has no fused RMSprop), so the
    results are torch's bit for bit, in cache-sized waves (waves.py). The lr is never a Python
    number here: the last op takes the 0-dim tensor ``-lr`` as its ``value``/``alpha``, which
    torch's argument parser reads in C++ from the CPU tensor's memory (as torch's fused CPU
    kernels read a tensor lr; on CPU there is no device to wait for), so no pass is added to
    torch's."""
    o = b.options
    b.counts.add_(1)
    k = o["constants"][b.weights[0].dtype]    # alpha, eps, momentum as 0-dim tensors
    alpha, wd = o["alpha"], o["weight_decay"]
    for params, g, square_avgs, buffers, grad_avgs in waves.split(b, grads, b.states):
        if o["maximize"]:
            g = torch._foreach_neg(g)
        if wd != 0:
            if o["maximize"]:
                torch._foreach_add_(g, params, alpha=wd)
            else:
                g = torch._foreach_add(g, params, alpha=wd)
        torch._foreach_mul_(square_avgs, k["alpha"])
        torch._foreach_addcmul_(square_avgs, g, g, value=1 - alpha)
        if grad_avgs:
            torch._foreach_lerp_(grad_avgs, g, 1 - alpha)
            avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(square_avgs)
        # (a list of one 0-dim tensor: the List overload broadcasts it, 54 us at 76 tensors
        # against 127 us for a number or a lone 0-dim tensor, torch 2.13, one thread)
        torch._foreach_add_(avg, [k["eps"]] * len(avg))
        if buffers:
            torch._foreach_mul_(buffers, k["momentum"])
            torch._foreach_addcdiv_(buffers, g, avg)
            torch._foreach_add_(params, buffers, alpha=-lr)
        else:
            torch._foreach_addcdiv_(params, g, avg, value=-lr)


def _cpu_unsupported(dtypes) -> str | None:
    if dtypes & {torch.bfloat16, torch.float16}:
        # Each foreach op rounds to the storage dtype, as torch's RMSprop does; the reference and
        # the kernel compute in fp32 and round once. master_weights=True gives them fp32.
        return ("RMSprop's CPU update is a chain of foreach ops, each rounding to bf16/fp16; "
                "use master_weights=True (fp32 masters) or impl='reference'")
    return None


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad
  g \leftarrow \pm\nabla_\theta f + \lambda\theta, \quad
  v \leftarrow \alpha v + (1-\alpha) g^2 \\
&\bar g \leftarrow \alpha \bar g + (1-\alpha) g, \;
  \tilde v = v - \bar g^2 \;(\text{centered}), \quad \text{else } \tilde v = v \\
&b \leftarrow \mu b + \frac{g}{\sqrt{\tilde v} + \epsilon}, \;
  \theta \leftarrow \theta - \eta_t b \;(\mu > 0), \quad \text{else }
  \theta \leftarrow \theta - \eta_t \frac{g}{\sqrt{\tilde v} + \epsilon}
\end{aligned}
"""

RMSPROP = Algorithm(
    name="rmsprop", peer="torch.optim.RMSprop", math=MATH,
    group_keys=("lr", "momentum", "alpha", "eps", "centered", "weight_decay"),
    row_keys=("lr", "momentum", "alpha", "eps", "centered", "weight_decay", "maximize"),
    momentum="momentum", read_momentum=lambda group: group["momentum"],
    columns=(("alpha", lambda group, defaults: float(group["alpha"])),
             ("eps", lambda group, defaults: float(group["eps"])),
             ("centered", lambda group, defaults: float(group["centered"]))),
    slots=(Slot("square_avg"),
           Slot("momentum_buffer", present=lambda group: group["momentum"] > 0),
           Slot("grad_avg", present=lambda group: bool(group["centered"]))),
    # momentum > 0 keeps a buffer; centered is a run-time branch in the kernel (its doc says why)
    variant=lambda hp: int(hp["momentum"] > 0), variants=(0, 1),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.rmsprop",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=_cpu_unsupported, amp=False))


class FusedRMSpropScheduled(ScheduledOptimizer):
    """``torch.optim.RMSprop`` with the learning-rate schedule evaluated inside the update.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.RMSprop``.
        lr: the base learning rate of each group, which the schedule scales.
        alpha: the smoothing constant of the squared-gradient average ``square_avg``.
        eps: added to the denominator for numerical stability.
        weight_decay: the L2 penalty, added to the gradient.
        momentum: the momentum factor; a group with momentum > 0 keeps a ``momentum_buffer``.
        centered: normalise by the gradient's estimated variance (keeps ``grad_avg``).
        capturable, foreach: accepted so that existing code runs; the step is always fused,
            capturable and sync-free.
        maximize: maximize the objective instead of minimizing it.
        differentiable: must be False.
        momentum_schedule: a spec for the momentum (base: the group's); a group needs
            momentum > 0 to keep a buffer.
    """

    algorithm = RMSPROP

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, schedule: Schedule | None = None,
                 impl: str = "auto", hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
