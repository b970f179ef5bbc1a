r"""Lion: ``FusedLionScheduled``, its record and updates (peer: ``lion_pytorch.Lion``).

``lr_0`` is the constructor's lr (lion_pytorch's ``_init_lr``), for every group. Every operation
is lion_pytorch's, in its order (``mul_``, ``add(alpha=)``, ``sgn_``), so float32 results match
it: ``sign`` is exact, and ``lr * sign`` too, so only an element whose ``c`` rounds to the other
side of 0 could differ.

The kernel block is ``kernels/lion.py``; on CPU, torch's foreach ops (torch has no Lion kernel)
with the lr as a 0-dim tensor operand.
"""

from __future__ import annotations

import torch

from fused_lrs.algorithms import waves
from fused_lrs.algorithms.arithmetic import add, applies, constants, scalar
from fused_lrs.algorithms.record import Algorithm, CpuUpdate, Slot, check_lr, number
from fused_lrs.optim.base import ScheduledOptimizer
from fused_lrs.schedules import Schedule


def check_group(group) -> None:
    """lion_pytorch's conditions, each a ValueError with torch's wording (lion_pytorch asserts
    them): betas a pair in [0, 1]; the lr as torch checks it (>= 0; the constructor's must be
    > 0, see ``FusedLionScheduled``)."""
    check_lr(group["lr"])
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"Invalid betas: expected a pair, got {betas!r}")
    for i, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor) and beta.numel() != 1:
            raise ValueError("Tensor betas[0] and betas[1] must be 1-element")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def reference(p, g, state, k, hp):
    """One Lion update, lion_pytorch's operations in its order, in the compute dtype."""
    lr, beta1, beta2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    m = state["exp_avg"]
    if applies(wd):                        # p.mul_(1 - lr * wd), wd / lr_0 when decoupled
        p = p * (1 - lr * (wd / hp["wd_divisor"])).to(p.dtype)
    c = add(m * scalar(beta1, m), g, scalar(1 - beta1, m))   # m.clone().mul_(b1).add(g, ..)
    p = p - lr.to(p.dtype) * c.sign()                        # p.add_(c.sgn_(), alpha=-lr)
    m = add(m * scalar(beta2, m), g, 1 - beta2)               # m.mul_(b2).add_(g, 1 - b2)
    return p, {"exp_avg": m}


def _cpu_options(hp) -> dict:
    return dict(beta1=hp["beta1"], beta2=hp["beta2"],
                weight_decay=hp["weight_decay"] / hp["wd_divisor"],
                maximize=bool(hp["maximize"]),
                constants=constants(beta1=hp["beta1"], beta2=hp["beta2"]))


def _cpu_run(b, grads, lr, amp) -> None:
    """torch's foreach ops, lion_pytorch's operations in its order (torch has no Lion
    kernel), so the results are lion_pytorch's bit for bit, in cache-sized waves (waves.py).
    The lr is never a Python number
    here: the decay factor is a 0-dim tensor operand, and the update takes the 0-dim tensor
    ``-lr`` as its ``alpha``, which torch's argument parser reads in C++ from the CPU tensor's
    memory (as torch's fused CPU kernels read a tensor lr; on CPU there is no device to wait
    for)."""
    o = b.options
    b.counts.add_(1)
    dtype = b.weights[0].dtype
    k = o["constants"][dtype]                 # the betas as 0-dim tensors (arithmetic.py)
    decay = (1 - lr * o["weight_decay"]).to(dtype) if o["weight_decay"] != 0 else None
    for params, g, m in waves.split(b, grads, (b.states[0],)):
        if o["maximize"]:
            g = torch._foreach_neg(g)
        if decay is not None:
            torch._foreach_mul_(params, decay)
        c = torch._foreach_mul(m, k["beta1"])
        torch._foreach_add_(c, g, alpha=1 - o["beta1"])
        torch._foreach_sign_(c)
        torch._foreach_add_(params, c, alpha=-lr)
        torch._foreach_mul_(m, k["beta2"])
        torch._foreach_add_(m, g, alpha=1 - o["beta2"])


def _cpu_unsupported(dtypes) -> str | None:
    if dtypes & {torch.bfloat16, torch.float16}:
        # Each foreach op rounds to the storage dtype; the reference and the kernel compute in
        # fp32 and round once. master_weights=True gives the foreach ops fp32 tensors.
        return ("Lion's CPU update is a chain of foreach ops, each rounding to bf16/fp16; "
                "use master_weights=True (fp32 masters) or impl='reference'")
    return None


#: The update, as the class docstring shows it (``fused_lrs/optim/docstring.py``).
MATH = r"""
\begin{aligned}
&\eta_t = \mathrm{schedule}(t, \mathrm{lr}), \quad
  g \leftarrow \pm\nabla_\theta f \;(\text{maximize}), \quad
  \lambda' = \lambda \;\text{or}\; \lambda / \mathrm{lr}_0 \;(\text{decoupled}) \\
&\theta \leftarrow \theta (1 - \eta_t \lambda'), \quad
  \theta \leftarrow \theta - \eta_t\, \mathrm{sign}(\beta_1 m + (1-\beta_1) g), \quad
  m \leftarrow \beta_2 m + (1-\beta_2) g
\end{aligned}
"""

LION = Algorithm(
    name="lion", peer="lion_pytorch.Lion", math=MATH,
    group_keys=("lr", "betas", "weight_decay"),
    row_keys=("lr", "betas", "weight_decay", "maximize", "decoupled_weight_decay"),
    momentum="beta1", read_momentum=lambda group: group["betas"][0],
    columns=(("beta2", lambda group, defaults: number(group["betas"][1])),
             # lion_pytorch divides the weight decay by the constructor's lr when decoupled
             ("wd_divisor", lambda group, defaults: number(defaults["lr"])
              if group["decoupled_weight_decay"] else 1.0)),
    slots=(Slot("exp_avg"),),
    check_group=check_group, reference=reference, kernel="fused_lrs.kernels.lion",
    cpu=CpuUpdate(run=_cpu_run, options=_cpu_options, unsupported=_cpu_unsupported, amp=False),
    saves_step=False,
    # lion_pytorch keeps the flag as an attribute, not in its defaults
    peer_arguments=lambda optimizer: {**optimizer.defaults,
                                      "decoupled_weight_decay": optimizer.decoupled_wd})


class FusedLionScheduled(ScheduledOptimizer):
    """``lion_pytorch.Lion`` (Chen et al., 2023, "Symbolic Discovery of Optimization
    Algorithms") with the learning-rate schedule evaluated inside the update.

    Args:
        params: parameters or parameter groups.
        lr: the base learning rate of each group, which the schedule scales; the constructor's
            must be > 0 (lion_pytorch's condition).
        betas: ``(beta1, beta2)``, each in [0, 1]: beta1 interpolates the sign's argument,
            beta2 the momentum ``exp_avg``.
        weight_decay: ``p *= 1 - lr * weight_decay`` before each update.
        use_triton: accepted so that lion_pytorch code runs; ignored (the step is always one
            fused update: the Triton kernel on CUDA).
        decoupled_weight_decay: divide the weight decay by the constructor's lr (every group),
            as lion_pytorch does, so that the decay per step is ``lr(t) / lr * weight_decay``.
        maximize: maximize the objective instead of minimizing it (lion_pytorch has none).
        momentum_schedule: a spec for beta1 (base: the group's beta1).

    lion_pytorch checks its arguments with ``assert``; this class raises ``ValueError`` for
    the same conditions, with torch's messages. The state is lion_pytorch's ``exp_avg`` (a
    checkpoint loads both ways), plus this class's ``step`` count, which lion_pytorch does
    not keep.
    """

    algorithm = LION

    def __init__(self, params, lr: float | torch.Tensor = 1e-4, betas=(0.9, 0.99),
                 weight_decay: float = 0.0, use_triton: bool = False,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 schedule: Schedule | None = None, impl: str = "auto",
                 hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        check_lr(lr)
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr} (Lion's must be > 0)")
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        decoupled_weight_decay=bool(decoupled_weight_decay))
        super().__init__(params, defaults, schedule=schedule, impl=impl,
                         hold_schedule_on_skip=hold_schedule_on_skip,
                         momentum_schedule=momentum_schedule,
                         weight_decay_schedule=weight_decay_schedule,
                         master_weights=master_weights)
