"""Adagrad in the fused step kernel (``kernels/optim.py``): the per-program scalars and the
update of one block. The record is ``fused_lrs/algorithms/adagrad.py``; its reference update is
the specification this follows, operation for operation.

One variant: the one state column, sum, always exists.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("lr_decay", "eps")
LR_DECAY = tl.constexpr(COLUMNS.index("lr_decay"))
EPS = tl.constexpr(COLUMNS.index("eps"))


@triton.jit
def prepare(lr, momentum, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns) and this
    tensor's step count: the decayed lr ``lr / (1 + (k - 1) lr_decay)``, k this update's
    count, computed here on the device (torch computes it on the host from ``step.item()``)."""
    k = step + 1.0
    clr = (lr / (1.0 + (k - 1.0) * tl.load(cols + LR_DECAY))).to(tl.float32)
    return (weight_decay.to(tl.float32), clr, tl.load(cols + EPS).to(tl.float32))


@triton.jit
def update(p, g, sum_ptr, unused_ptr2, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's sum."""
    wd, clr, eps = S
    # add(alpha=) and addcmul round once (fused multiply-adds), as torch's CPU ops do
    g = fma(wd, p, g)                                 # grad.add(param, alpha=wd)
    s = fma(g, g, load(sum_ptr, offs, mask))          # sum.addcmul_(g, g, value=1)
    store(sum_ptr, offs, mask, s, BF16)
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    std = tl.sqrt_rn(s) + eps
    return p - tl.div_rn(clr * g, std)                # p.addcdiv_(g, std, value=-clr)
