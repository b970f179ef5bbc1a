"""Adamax in the fused step kernel (``kernels/optim.py``): the per-program scalars and the update
of one block. The record is ``fused_lrs/algorithms/adamax.py``; its reference update is the
specification this follows, operation for operation.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma, lerp

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("beta2", "eps")
BETA2 = tl.constexpr(COLUMNS.index("beta2"))
EPS = tl.constexpr(COLUMNS.index("eps"))


@triton.jit
def prepare(lr, beta1, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns) and this
    tensor's step count."""
    # The columns first, as float32 (loaded after the fp64 math, ptxas spills 16 bytes of the
    # schedule's values around its slow-path calls: tests/test_kernels_aot.py).
    beta2 = tl.load(cols + BETA2).to(tl.float32)
    eps = tl.load(cols + EPS).to(tl.float32)
    k = step + 1.0                                # this update's step count, as torch's
    # beta1 ** k as exp(k log beta1): fp64 keeps it to ~1e-15 relative; beta1 = 0 gives 0.
    bias_correction = 1.0 - tl.exp(k * tl.log(beta1))
    neg_step_size = (-lr / bias_correction).to(tl.float32)      # -(lr / (1 - beta1 ** k))
    return (weight_decay.to(tl.float32), (1.0 - beta1).to(tl.float32), beta2, eps,
            neg_step_size)


@triton.jit
def update(p, g, m_ptr, u_ptr, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's states."""
    l2, one_minus_b1, beta2, eps, neg_step_size = S
    m = load(m_ptr, offs, mask)
    u = load(u_ptr, offs, mask)
    g = fma(l2, p, g)                                 # grad.add(param, alpha=wd), fused
    m = lerp(m, g, one_minus_b1)                      # exp_avg.lerp_(g, 1 - beta1)
    u = tl.maximum(u * beta2, tl.abs(g) + eps)        # the exponentially weighted inf norm
    store(m_ptr, offs, mask, m, BF16)
    store(u_ptr, offs, mask, u, BF16)
    # IEEE division (`/` is approximate on CUDA), as torch's addcdiv computes.
    return p + tl.div_rn(neg_step_size * m, u)
