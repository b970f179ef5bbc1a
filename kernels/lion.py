"""Lion in the fused step kernel (``kernels/optim.py``): the per-program scalars and the update
of one block. The record is ``fused_lrs/algorithms/lion.py``; its reference update (lion_pytorch's
operations) is the specification this follows, operation for operation.

One variant: the one state column, exp_avg, always exists.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("beta2", "wd_divisor")
BETA2 = tl.constexpr(COLUMNS.index("beta2"))
WD_DIVISOR = tl.constexpr(COLUMNS.index("wd_divisor"))


@triton.jit
def prepare(lr, beta1, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns): the
    decay factor ``1 - lr * wd / divisor`` (divisor: the constructor's lr when decoupled,
    else 1), the lr and both betas."""
    decay = (1.0 - lr * (weight_decay / tl.load(cols + WD_DIVISOR))).to(tl.float32)
    return (decay, lr.to(tl.float32), beta1.to(tl.float32), (1.0 - beta1).to(tl.float32), cols)


@triton.jit
def update(p, g, m_ptr, unused_ptr2, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's exp_avg."""
    decay, lr, beta1, one_minus_b1, cols = S
    beta2_64 = tl.load(cols + BETA2)
    beta2, one_minus_b2 = beta2_64.to(tl.float32), (1.0 - beta2_64).to(tl.float32)
    m = load(m_ptr, offs, mask)
    p = p * decay                                     # p.mul_(1 - lr * wd)
    # add(alpha=) rounds once (a fused multiply-add), as lion_pytorch's ops do on CPU
    c = fma(one_minus_b1, g, m * beta1)               # m.clone().mul_(b1).add(g, 1 - b1)
    # torch.sign: 0 for +-0 and NaN
    sign = tl.where(c > 0.0, 1.0, tl.where(c < 0.0, -1.0, 0.0))
    store(m_ptr, offs, mask, fma(one_minus_b2, g, m * beta2), BF16)  # m.mul_(b2).add_(g, 1-b2)
    return p - lr * sign                              # p.add_(sign, alpha=-lr): exact
