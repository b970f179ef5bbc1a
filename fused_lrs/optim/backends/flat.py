"""What torch's fused CPU kernels need of a tensor's layout (a record's ``CpuUpdate.flat``).

``torch._fused_adam_``, ``_fused_sgd_`` and ``_fused_adagrad_`` walk the parameter, its
gradient and its states as flat memory from each one's first element, so they are right only
when the parameter is dense (``dense``: no gaps, e.g. not ``w[:, ::2]``)
and the others lay out its elements in the same order. torch's own ``fused=True`` has the same
fault (0.87 off its default Adam after 5 steps of a transposed parameter with a contiguous
gradient); its default path, which the optimizers here stand in for, takes any layout. What
the CPU backend does with each case (``torch_fused.py``):
  * a gradient in another order (assigned by hand; autograd gives a dense parameter's gradient
    its layout): copied into the parameter's layout for the kernel, this step;
  * a parameter that is not dense, or a state in another order (a checkpoint's contiguous
    ``exp_avg`` loaded after the model went channels_last): that tensor's update is the
    reference's (``impl="auto"``), or a refusal (``impl="torch_fused"``: ``refusal``).
"""

from __future__ import annotations

import torch


def same_order(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` holds its elements in ``b``'s memory order (same shape): equal strides
    on every dimension longer than 1, the dimensions that can differ (autograd's layout
    contract allows any stride on a size-1 dimension)."""
    return all(n == 1 or s == t for n, s, t in zip(a.shape, a.stride(), b.stride()))


def dense(x: torch.Tensor) -> bool:
    """Whether ``x``'s elements fill one block of memory with no gaps or overlaps: its strides,
    sorted, are those of a contiguous tensor of its shape so permuted (size-1 dimensions
    aside). torch's ``is_non_overlapping_and_dense`` in Python."""
    if x.numel() == 0:
        return True
    expected = 1
    for stride, n in sorted((s, n) for n, s in zip(x.shape, x.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= n
    return True


def misfit(weight: torch.Tensor, states: list[torch.Tensor]) -> str | None:
    """Why a flat kernel cannot update ``weight`` (the parameter, or its fp32 master) with
    ``states``, or None."""
    if not dense(weight):
        return f"it is not dense (strides {weight.stride()})"
    for x in states:
        if not same_order(x, weight):
            return (f"a state tensor has strides {x.stride()}, the parameter "
                    f"{weight.stride()}")
    return None


def refusal(g: int, p: torch.Tensor, reason: str) -> ValueError:
    """The error of ``impl="torch_fused"`` for a parameter of group ``g`` that it cannot
    update: the tensor, why, and the remedies."""
    return ValueError(
        f"impl='torch_fused' cannot update a parameter of group {g} (shape {tuple(p.shape)}): "
        f"{reason}; torch's fused CPU kernels need the parameter dense and its states in its "
        "layout. Use impl='auto' (which updates such a tensor with the reference) or "
        "impl='reference', or give them one layout (a parameter .contiguous(), a state "
        "torch.empty_like(p).copy_(state))")
