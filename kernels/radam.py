"""RAdam in the fused step kernel (``kernels/optim.py``): the per-program scalars and the update
of one block. The record is ``fused_lrs/algorithms/radam.py``; its reference update is the
specification this follows, operation for operation.

The rectification switch (rho_k > 5) is a per-program scalar, from the tensor's own step count:
every element of a program takes the same side.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma, lerp

# The record's own row columns, in its order (a test holds them equal). rho_inf, the SMA's
# maximum length 2 / (1 - beta2) - 1, is a column: one fp64 divide less per program.
COLUMNS = ("beta2", "eps", "decoupled", "rho_inf")
BETA2 = tl.constexpr(COLUMNS.index("beta2"))
EPS = tl.constexpr(COLUMNS.index("eps"))
DECOUPLED = tl.constexpr(COLUMNS.index("decoupled"))
RHO_INF = tl.constexpr(COLUMNS.index("rho_inf"))


@triton.jit
def prepare(lr, beta1, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns) and this
    tensor's step count. fp64 values live across the slow-path calls of an fp64 divide or
    square root are spilled around them (tests/test_kernels_aot.py holds the budget): what
    needs lr, beta1 and the weight decay comes first, in float32, and the rectification takes
    one divide, with rho_k = n / d for d = 1 - beta2^k > 0."""
    k = step + 1.0                                # this update's step count, as torch's
    decoupled = tl.load(cols + DECOUPLED) != 0.0
    decay = tl.where(decoupled, 1.0 - lr * weight_decay, 1.0).to(tl.float32)
    l2 = tl.where(decoupled, 0.0, weight_decay).to(tl.float32)
    # beta ** k as exp(k log beta): fp64 keeps it to ~1e-15 relative; beta = 0 gives 0.
    bias_correction1 = (1.0 - tl.exp(k * tl.log(beta1))).to(tl.float32)
    one_minus_b1 = (1.0 - beta1).to(tl.float32)
    lr32 = lr.to(tl.float32)
    beta2 = tl.load(cols + BETA2)
    beta2_k = tl.exp(k * tl.log(beta2))
    d = 1.0 - beta2_k                             # bias_correction2
    rho_inf = tl.load(cols + RHO_INF)
    n = rho_inf * d - 2.0 * k * beta2_k           # rho_k * d
    rectified = n > 5.0 * d                       # rho_k > 5
    # r_k^2 = (rho_k - 4)(rho_k - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_k); 0 where
    # not rectified (never used).
    arg = tl.where(rectified, (n - 4.0 * d) * (n - 2.0 * d) * rho_inf
                   / ((rho_inf - 4.0) * (rho_inf - 2.0) * n * d), 0.0)
    return (decay, l2, one_minus_b1, beta2.to(tl.float32), (1.0 - beta2).to(tl.float32),
            bias_correction1, lr32, tl.sqrt(d).to(tl.float32), tl.sqrt(arg).to(tl.float32),
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
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    # Both steps, then a select on the per-program switch, and the stores after them: a branch,
    # or stores before the divides, spill 24 to 32 bytes in some dtype variants on triton 3.5
    # or 3.6 (tests/test_kernels_aot.py).
    step = tl.div_rn(m, bias_correction1) * lr
    adaptive = tl.div_rn(1.0, tl.sqrt_rn(v) + eps) * bc2_sqrt
    store(m_ptr, offs, mask, m, BF16)
    store(v_ptr, offs, mask, v, BF16)
    return p - tl.where(rectified, step * adaptive * rect, step)
