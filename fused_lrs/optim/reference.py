"""The reference updates: plain PyTorch, one tensor at a time, the executable specification.

Read them beside torch's algorithm boxes (torch/optim/adam.py, sgd.py); the order of operations
is torch's, so in float32 and float64 they agree with torch to rounding. Two deliberate
differences, both shared with the Triton kernel:
  * 16-bit parameters are updated in float32 and rounded once (torch computes in bf16/fp16);
  * the lr and every derived scalar arrive as float64 device tensors, never Python floats, so
    nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch


def _compute_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, *, lr, beta1, beta2, eps,
         weight_decay, amsgrad, maximize, decoupled):
    """One Adam/AdamW update of one parameter, in place. ``step`` is the parameter's float32 step
    count (a 0-dim tensor), incremented here; ``lr`` is a float64 0-dim tensor."""
    cd = _compute_dtype(param)
    p, g = param.to(cd), grad.to(cd)
    m, v = exp_avg.to(cd), exp_avg_sq.to(cd)
    if maximize:
        g = -g
    step += 1
    if weight_decay != 0:
        if decoupled:                      # AdamW: decay the weights, not the gradient
            p = p * (1 - lr * weight_decay).to(cd)
        else:                              # Adam: L2 penalty folded into the gradient
            g = g + weight_decay * p
    m = m + (1 - beta1) * (g - m)          # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step.double()
    bias_correction2_sqrt = (1 - beta2 ** step.double()).sqrt()
    step_size = (lr / bias_correction1).to(cd)
    if amsgrad:
        v_max = torch.maximum(max_exp_avg_sq.to(cd), v)
        max_exp_avg_sq.copy_(v_max)
        denom = v_max.sqrt() / bias_correction2_sqrt.to(cd) + eps
    else:
        denom = v.sqrt() / bias_correction2_sqrt.to(cd) + eps
    param.copy_(p - step_size * m / denom)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)


def sgd(param, grad, momentum_buffer, step, *, lr, momentum, dampening, weight_decay, nesterov,
        maximize):
    """One SGD update of one parameter, in place. The first update with momentum copies the
    gradient into the buffer (torch's ``buf = clone(grad)``), detected by ``step == 0``."""
    cd = _compute_dtype(param)
    p, d_p = param.to(cd), grad.to(cd)
    if maximize:
        d_p = -d_p
    # torch's own ops (``add`` with ``alpha`` rounds once, as a fused multiply-add), so that the
    # buffer, a sum of many gradients whose entries can cancel to near zero, rounds as torch's.
    if weight_decay != 0:
        d_p = d_p.add(p, alpha=weight_decay)
    if momentum != 0:
        first = step == 0
        later = momentum_buffer.to(cd).mul(momentum).add_(d_p, alpha=1 - dampening)
        buf = torch.where(first, d_p, later)
        momentum_buffer.copy_(buf)
        d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
    step += 1
    param.copy_(p - lr.to(cd) * d_p)
