"""Adam and AdamW in the fused step kernel (``kernels/optim.py``): the per-program scalars and
the update of one block. The record is ``fused_lrs/algorithms/adam.py``; its reference update
is the specification this follows, operation for operation.

Variant bit 0: amsgrad (the third state column, max_exp_avg_sq, exists).
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("beta2", "eps", "amsgrad", "decoupled")
BETA2 = tl.constexpr(COLUMNS.index("beta2"))
EPS = tl.constexpr(COLUMNS.index("eps"))
DECOUPLED = tl.constexpr(COLUMNS.index("decoupled"))
AMSGRAD = tl.constexpr(1)      # the variant bit


@triton.jit
def prepare(lr, beta1, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns) and this
    tensor's step count. The columns are loaded where they are needed: values live across the
    fp64 divide and square root (whose slow paths are calls) would be spilled around them."""
    k = step + 1.0                                # this update's step count, as torch's
    # beta ** k as exp(k log beta): fp64 keeps it to ~1e-15 relative; beta = 0 gives 0.
    bc2_sqrt = tl.sqrt(1.0 - tl.exp(k * tl.log(tl.load(cols + BETA2)))).to(tl.float32)
    bias_correction1 = 1.0 - tl.exp(k * tl.log(beta1))
    step_size = (lr / bias_correction1).to(tl.float32)
    decoupled = tl.load(cols + DECOUPLED) != 0.0
    decay = tl.where(decoupled, 1.0 - lr * weight_decay, 1.0).to(tl.float32)
    l2 = tl.where(decoupled, 0.0, weight_decay).to(tl.float32)
    beta2 = tl.load(cols + BETA2)
    return (decay, l2, (1.0 - beta1).to(tl.float32), beta2.to(tl.float32),
            (1.0 - beta2).to(tl.float32), step_size, bc2_sqrt,
            tl.load(cols + EPS).to(tl.float32))


@triton.jit
def update(p, g, m_ptr, v_ptr, vmax_ptr, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's states."""
    decay, l2, one_minus_b1, beta2, one_minus_b2, step_size, bc2_sqrt, eps = S
    m = load(m_ptr, offs, mask)
    v = load(v_ptr, offs, mask)
    p = p * decay                                     # AdamW: theta * (1 - lr * wd); else 1
    g = g + l2 * p                                    # Adam: L2 into the gradient; else 0
    m = m + one_minus_b1 * (g - m)                    # exp_avg.lerp_(g, 1 - beta1)
    v = v * beta2 + one_minus_b2 * g * g              # exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    if AMSGRAD & VARIANT:         # (constexpr on the left: the interpreter passes an int)
        v_hat = tl.maximum(load(vmax_ptr, offs, mask), v)
        store(vmax_ptr, offs, mask, v_hat, BF16)
    else:
        v_hat = v
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    denom = tl.div_rn(tl.sqrt_rn(v_hat), bc2_sqrt) + eps
    store(m_ptr, offs, mask, m, BF16)
    store(v_ptr, offs, mask, v, BF16)
    return p - tl.div_rn(step_size * m, denom)
