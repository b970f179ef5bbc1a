"""ASGD in the fused step kernel (``kernels/optim.py``): the per-program scalars, the scalar
states ``eta`` and ``mu`` and the update of one block. The record is
``fused_lrs/algorithms/asgd.py``; its reference update is the specification this follows,
operation for operation.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("lambd", "alpha", "t0")
LAMBD = tl.constexpr(COLUMNS.index("lambd"))
ALPHA = tl.constexpr(COLUMNS.index("alpha"))
T0 = tl.constexpr(COLUMNS.index("t0"))


@triton.jit
def prepare(lr, momentum, weight_decay, step, cols, old):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns), this
    tensor's step count and its ``eta`` and ``mu`` (``old``); returns them and the new ``eta``
    and ``mu``, computed from this step's lr and count in fp64 and rounded to float32, as
    torch's single-tensor ASGD computes them."""
    k = step + 1.0                                # this update's step count, as torch's
    eta = tl.where(step == 0.0, lr.to(tl.float32), old[0]).to(tl.float64)  # the first: lr
    mu = old[1]
    decay = (1.0 - tl.load(cols + LAMBD) * eta).to(tl.float32)
    # (1 + lambd lr k) ** alpha as exp(alpha log(...)) in fp64.
    new_eta = (lr / tl.exp(tl.load(cols + ALPHA) * tl.log(1.0 + tl.load(cols + LAMBD) * lr * k)))
    new_mu = 1.0 / tl.maximum(k - tl.load(cols + T0), 1.0)
    return (weight_decay.to(tl.float32), decay, (-eta).to(tl.float32), mu, mu == 1.0), (
        new_eta.to(tl.float32), new_mu.to(tl.float32))


@triton.jit
def update(p, g, ax_ptr, unused_ptr2, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's average."""
    l2, decay, neg_eta, mu, copy = S
    g = fma(l2, p, g)                                 # grad.add(param, alpha=wd), fused
    p = p * decay                                     # param.mul_(1 - lambd * eta)
    p = p + neg_eta * g                               # param.add_(grad, alpha=-eta)
    ax = load(ax_ptr, offs, mask)
    ax = tl.where(copy, p, ax + (p - ax) * mu)        # mu == 1: ax.copy_(param)
    store(ax_ptr, offs, mask, ax, BF16)
    return p
