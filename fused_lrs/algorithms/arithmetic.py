"""Arithmetic the reference updates share, written to round as torch's own ops do.

A hyperparameter reaches a reference update as a Python float, or, when a schedule drives it
(the lr always; a momentum or weight decay with ``momentum_schedule=`` or
``weight_decay_schedule=``), as a float64 0-dim device tensor, never read back to the host.
"""

from __future__ import annotations

import torch


def applies(value) -> bool:
    """Whether a term takes part: scheduled (a device tensor, never read back) or non-zero."""
    return isinstance(value, torch.Tensor) or value != 0


def add(x: torch.Tensor, y: torch.Tensor, alpha) -> torch.Tensor:
    """x + alpha * y, rounded once as torch's ``add(alpha=)`` (a fused multiply-add) when alpha
    is a number; a scheduled alpha is a device tensor, multiplied then added."""
    if isinstance(alpha, torch.Tensor):
        return x + alpha.to(x.dtype) * y
    return x.add(y, alpha=alpha)


def scalar(value, like: torch.Tensor):
    """``value`` in ``like``'s dtype when it is a tensor (a float stays a float)."""
    return value.to(like.dtype) if isinstance(value, torch.Tensor) else value


def lerp(x: torch.Tensor, y: torch.Tensor, weight) -> torch.Tensor:
    """torch's ``x.lerp(y, weight)`` itself (``x + w (y - x)`` for |w| < 0.5, else
    ``y - (1 - w)(y - x)``, each one fused multiply-add), also for a scheduled weight (a device
    tensor, taken in ``x``'s dtype)."""
    return torch.lerp(x, y, scalar(weight, x))


def constants(**values) -> dict:
    """``values`` as 0-dim tensors of each dtype the CPU foreach updates run in, by dtype: a
    Python number costs torch's CPU foreach ops a conversion per tensor (``_foreach_mul_`` of
    76 one-element tensors: 131 us with a number, 32 us with a 0-dim tensor of their dtype,
    104 us with a float64 one; torch 2.13, one thread). The number rounds to the dtype as the
    op would round it, so the result is the same."""
    return {dtype: {name: torch.tensor(value, dtype=dtype) for name, value in values.items()}
            for dtype in (torch.float32, torch.float64)}
