"""The reference backend: plain PyTorch, one tensor at a time, the executable specification.

Read them beside torch's algorithm boxes (torch/optim/adam.py, sgd.py); the order of operations
is torch's, so in float32 and float64 they agree with torch to rounding. Two deliberate
differences, both shared with the Triton kernel:
  * 16-bit parameters are updated in float32 and rounded once (torch computes in bf16/fp16);
  * the lr and every derived scalar arrive as float64 device tensors, never Python floats, so
    nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch

from fused_lrs.kernels import layout as L
from fused_lrs.optim.step import ADAM, StepDescription
from fused_lrs.schedules.base import group_values


def _compute_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def _applies(value) -> bool:
    """A hyperparameter takes part if it is scheduled (a device tensor, never read back) or a
    non-zero number."""
    return isinstance(value, torch.Tensor) or value != 0


def _add(x, y, alpha):
    """x + alpha * y, rounded once as torch's ``add(alpha=)`` (a fused multiply-add) when alpha
    is a number; a scheduled alpha is a device tensor, multiplied then added."""
    if isinstance(alpha, torch.Tensor):
        return x + alpha.to(x.dtype) * y
    return x.add(y, alpha=alpha)


def _write(skip, *pairs) -> None:
    """Store each new value, or, on a step GradScaler skips, keep the old one (no sync: the
    choice is made on the device)."""
    for dst, new in pairs:
        dst.copy_(new if skip is None else torch.where(skip, dst, new.to(dst.dtype)))


def _write_weights(skip, param, master, new) -> None:
    """The new weights: into the fp32 master when there is one, and rounded into the parameter
    (``copy_`` rounds to nearest even, as the kernel does)."""
    if master is not None:
        _write(skip, (master, new))
    _write(skip, (param, new))


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, *, lr, beta1, beta2, eps,
         weight_decay, amsgrad, maximize, decoupled, grad_scale=None, skip=None, master=None):
    """One Adam/AdamW update of one parameter, in place. ``step`` is the parameter's float32 step
    count (a 0-dim tensor), advanced here; ``lr`` is a float64 0-dim tensor, and so are
    ``beta1`` and ``weight_decay`` when they are scheduled. ``grad_scale``
    divides the gradient and ``skip`` (a bool tensor) discards the whole update, GradScaler's
    way. With an fp32 ``master`` copy the update reads and writes it, and the parameter gets
    its rounding."""
    cd = _compute_dtype(param)
    p, g = (param if master is None else master).to(cd), grad.to(cd)
    m, v = exp_avg.to(cd), exp_avg_sq.to(cd)
    if grad_scale is not None:
        g = g / grad_scale.to(cd)
    if maximize:
        g = -g
    k = step + 1                           # this update's count, as torch's
    if _applies(weight_decay):
        if decoupled:                      # AdamW: decay the weights, not the gradient
            p = p * (1 - lr * weight_decay).to(cd)
        else:                              # Adam: L2 penalty folded into the gradient
            g = g + weight_decay * p
    m = m + (1 - beta1) * (g - m)          # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** k.double()
    bias_correction2_sqrt = (1 - beta2 ** k.double()).sqrt()
    step_size = (lr / bias_correction1).to(cd)
    if amsgrad:
        v_hat = torch.maximum(max_exp_avg_sq.to(cd), v)
        _write(skip, (max_exp_avg_sq, v_hat))
    else:
        v_hat = v
    denom = v_hat.sqrt() / bias_correction2_sqrt.to(cd) + eps
    _write_weights(skip, param, master, p - step_size * m / denom)
    _write(skip, (exp_avg, m), (exp_avg_sq, v), (step, k))


def sgd(param, grad, momentum_buffer, step, *, lr, momentum, dampening, weight_decay, nesterov,
        maximize, grad_scale=None, skip=None, master=None):
    """One SGD update of one parameter, in place. ``momentum_buffer`` is None when the group has
    no momentum. The first update with momentum copies the gradient into the buffer (torch's
    ``buf = clone(grad)``), detected by ``step == 0``. ``momentum`` and ``weight_decay`` may be
    device tensors (scheduled). ``grad_scale`` and ``skip`` as for ``adam``."""
    cd = _compute_dtype(param)
    p, d_p = (param if master is None else master).to(cd), grad.to(cd)
    if grad_scale is not None:
        d_p = d_p / grad_scale.to(cd)
    if maximize:
        d_p = -d_p
    # torch's own ops (``add`` with ``alpha`` rounds once, as a fused multiply-add), so that the
    # buffer, a sum of many gradients whose entries can cancel to near zero, rounds as torch's.
    if _applies(weight_decay):
        d_p = _add(d_p, p, weight_decay)
    if momentum_buffer is not None:
        first = step == 0
        later = _add(momentum_buffer.to(cd) * momentum, d_p, 1 - dampening)
        buf = torch.where(first, d_p, later)
        _write(skip, (momentum_buffer, buf))
        d_p = _add(d_p, buf, momentum) if nesterov else buf
    _write_weights(skip, param, master, p - lr.to(cd) * d_p)
    _write(skip, (step, step + 1))


class ReferenceBackend:
    """The backend: the updates above, one parameter at a time, for any device and dtype."""

    name = "reference"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def unsupported(device, algorithm, dtypes, scheduled_hyperparameters) -> str | None:
        return None

    def check(self, name, p, grad, state) -> None:
        pass

    def step(self, d: StepDescription) -> None:
        """lr(t) per group on the device, then each parameter's update, then t += 1. With
        GradScaler's ``found_inf`` > 0 nothing but ``t`` moves (and not ``t`` either with
        ``hold_on_skip``); ``skipped`` records which it was."""
        lr_spec, momentum_spec, wd_spec = d.schedules
        skip = None if d.found_inf is None else d.found_inf != 0
        amp = dict(grad_scale=d.grad_scale, skip=skip)
        # Each group's values from its own block of the table (per-group values, a plateau's
        # scale), the lr rows first, then the momentum's, then the weight decay's.
        lrs = group_values(lr_spec, d.t, [row[L.G_LR] for row in d.rows], d.table).unbind()
        first = len(lr_spec.kinds)
        # A scheduled beta1 / momentum or weight decay is a device tensor; else the number.
        momenta = [row[L.G_A] for row in d.rows]
        if momentum_spec:
            momenta = group_values(momentum_spec, d.t, momenta, d.table, first).unbind()
            first += len(momentum_spec.kinds)
        decays = [row[L.G_WD] for row in d.rows]
        if wd_spec:
            decays = group_values(wd_spec, d.t, decays, d.table, first).unbind()
        s1, s2, s3 = d.states
        for i, (p, g) in enumerate(zip(d.params, d.grads)):
            gi = d.group_of[i]
            row, lr, a, wd = d.rows[gi], lrs[gi], momenta[gi], decays[gi]
            if d.algorithm == ADAM:
                adam(p, g, s1[i], s2[i], s3[i], d.steps[i], lr=lr, beta1=a, beta2=row[L.G_B],
                     eps=row[L.G_EPS], weight_decay=wd, amsgrad=row[L.G_FLAG] != 0,
                     maximize=row[L.G_MAXIMIZE] != 0, decoupled=row[L.G_DECOUPLED] != 0,
                     master=d.masters[i], **amp)
            else:
                sgd(p, g, s1[i], d.steps[i], lr=lr, momentum=a, dampening=row[L.G_B],
                    weight_decay=wd, nesterov=row[L.G_FLAG] != 0,
                    maximize=row[L.G_MAXIMIZE] != 0, master=d.masters[i], **amp)
        d.advance_counters(skip)
