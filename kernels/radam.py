"""RAdam in the fused step kernel (``kernels/optim.py``): the per-program scalars and the update
of one block. The record is ``fused_lrs/algorithms/radam.py``; its reference update is the
specification this follows, operation for operation.

The rectification switch (rho_k > 5) is a per-program scalar, from the tensor's own step count:
every element of a program takes the same branch.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma, lerp

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("beta2", "eps", "decoupled")
BETA2 = tl.constexpr(COLUMNS.index("beta2"))
EPS = tl.constexpr(COLUMNS.index("eps"))
DECOUPLED = tl.constexpr(COLUMNS.index("decoupled"))


@triton.jit
def prepare(lr, beta1, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns) and this
    tensor's step count. The columns are loaded where they are needed: values live across the
    fp64 divide and square root (whose slow paths are calls) would be spilled around them."""
    k = step + 1.0                                # this update's step count, as torch's
    # beta ** k as exp(k log beta): fp64 keeps it to ~1e-15 relative; beta = 0 gives 0.
    beta2_k = tl.exp(k * tl.log(tl.load(cols + BETA2)))
    bias_correction2 = 1.0 - beta2_k
    rho_inf = 2.0 / (1.0 - tl.load(cols + BETA2)) - 1.0
    rho = rho_inf - 2.0 * k * beta2_k / bias_correction2
    rectified = rho > 5.0
    # r_k where rectified (the argument is > 0 there), 0 elsewhere (never used).
    arg = tl.where(rectified, (rho - 4.0) * (rho - 2.0) * rho_inf
                   / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho), 0.0)
    rect = tl.sqrt(arg).to(tl.float32)
    bc2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)
    bias_correction1 = (1.0 - tl.exp(k * tl.log(beta1))).to(tl.float32)
    decoupled = tl.load(cols + DECOUPLED) != 0.0
    decay = tl.where(decoupled, 1.0 - lr * weight_decay, 1.0).to(tl.float32)
    l2 = tl.where(decoupled, 0.0, weight_decay).to(tl.float32)
    beta2 = tl.load(cols + BETA2)
    return (decay, l2, (1.0 - beta1).to(tl.float32), beta2.to(tl.float32),
            (1.0 - beta2).to(tl.float32), bias_correction1, lr.to(tl.float32), bc2_sqrt, rect,
            rectified, tl.load(cols + EPS).to(tl.float32))


@triton.jit
def update(p, g, m_ptr, v_ptr, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's states."""
    (decay, l2, one_minus_b1, beta2, one_minus_b2, bias_correction1, lr, bc2_sqrt, rect,
     rectified, eps) = S
    m = load(m_ptr, offs, mask)
    v = load(v_ptr, offs, mask)
    p = p * decay                                     # decoupled: theta * (1 - lr * wd); else 1
    g = fma(l2, p, g)                                 # grad.add(param, alpha=wd), fused
    m = lerp(m, g, one_minus_b1)                      # exp_avg.lerp_(g, 1 - beta1)
    v = v * beta2 + one_minus_b2 * g * g              # exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    store(m_ptr, offs, mask, m, BF16)
    store(v_ptr, offs, mask, v, BF16)
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    step = tl.div_rn(m, bias_correction1) * lr
    if rectified:                 # one branch per program: the tensor's step count decides
        adaptive = tl.div_rn(1.0, tl.sqrt_rn(v) + eps) * bc2_sqrt
        step = step * adaptive * rect
    return p - step
