"""What the CPU updates built on torch's foreach ops share (the algorithms torch does not fuse:
Adamax, NAdam, RAdam, Adadelta, ASGD).

A CPU update receives a bucket (``backends/torch_fused.py``: the tensors of one group and one
storage dtype, its step counts and scalar states each in one float32 buffer) and the lr as a
float64 0-dim tensor. Step-dependent scalars are computed for the whole bucket at once, as
[tensors] float64 tensors from the counts, never read back to Python: a foreach op takes them
as its tensor of scalars (``_foreach_addcdiv_``, ``_foreach_addcmul_``) or, where it has no such
overload, as a list of 0-dim tensors (``per_tensor``), which it broadcasts.
"""

from __future__ import annotations

import torch


def gradients(grads: list, weights: list, maximize: bool, weight_decay: float
              ) -> tuple[list, bool]:
    """The gradients an update uses, as torch's ``_multi_tensor_*`` make them: negated for
    ``maximize``, plus ``weight_decay * param`` (the L2 penalty). Returns them and whether they
    are new tensors, which the update may overwrite."""
    owned = False
    if maximize:
        grads, owned = torch._foreach_neg(grads), True
    if weight_decay != 0:
        if owned:
            torch._foreach_add_(grads, weights, alpha=weight_decay)
        else:
            grads, owned = torch._foreach_add(grads, weights, alpha=weight_decay), True
    return grads, owned


def adam_moments(bucket, grads: list, lr: torch.Tensor, o: dict) -> tuple[list, list, list]:
    """The opening torch's ``_multi_tensor_nadam`` and ``_multi_tensor_radam`` share: the
    weight decay (decoupled: the weights scaled by ``1 - lr * wd``; else the L2 term in the
    gradients), ``maximize``, then ``exp_avg.lerp_(g, 1 - beta1)`` and
    ``exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)`` on the bucket's first two slots.
    Returns the gradients used and the two moments."""
    weight_decay = o["weight_decay"]
    if o["decoupled"] and weight_decay != 0:
        torch._foreach_mul_(bucket.weights, 1 - lr * weight_decay)
        weight_decay = 0.0
    g, _ = gradients(grads, bucket.weights, o["maximize"], weight_decay)
    m, v = bucket.states[0], bucket.states[1]
    torch._foreach_lerp_(m, g, 1 - o["beta1"])
    torch._foreach_mul_(v, o["beta2"])
    torch._foreach_addcmul_(v, g, g, 1 - o["beta2"])
    return g, m, v


def per_tensor(bucket, name: str, values: torch.Tensor) -> list[torch.Tensor]:
    """``values`` (one per tensor of ``bucket``) as 0-dim tensors, the operand of a foreach op
    with no tensor-of-scalars overload. They are views of a buffer the bucket keeps under
    ``name``, made on the first call: a step writes the buffer and makes no views."""
    cached = bucket.cache.get(name)
    if cached is None:
        buffer = values.clone()
        cached = bucket.cache[name] = (buffer, list(buffer.unbind()))
    else:
        cached[0].copy_(values)
    return cached[1]


def views(bucket, name: str, buffer: torch.Tensor) -> list[torch.Tensor]:
    """The 0-dim views of one of ``bucket``'s buffers (a scalar state's), made once."""
    cached = bucket.cache.get(name)
    if cached is None or cached[0] is not buffer:
        cached = bucket.cache[name] = (buffer, list(buffer.unbind()))
    return cached[1]


def unsupported(dtypes) -> str | None:
    """16-bit storage: torch's foreach ops would round every intermediate to bf16/fp16, where
    the reference and the kernel compute in float32 and round once."""
    if dtypes & {torch.bfloat16, torch.float16}:
        return ("its foreach CPU update would round every intermediate to bf16/fp16; use "
                "master_weights=True (fp32 states and math) or impl='reference'")
    return None
