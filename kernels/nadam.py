"""NAdam in the fused step kernel (``kernels/optim.py``): the per-program scalars, the scalar
state ``mu_product`` and the update of one block. The record is ``fused_lrs/algorithms/nadam.py``;
its reference update is the specification this follows, operation for operation.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma, lerp

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("beta2", "eps", "momentum_decay", "decoupled")
BETA2 = tl.constexpr(COLUMNS.index("beta2"))
EPS = tl.constexpr(COLUMNS.index("eps"))
MOMENTUM_DECAY = tl.constexpr(COLUMNS.index("momentum_decay"))
DECOUPLED = tl.constexpr(COLUMNS.index("decoupled"))


@triton.jit
def prepare(lr, beta1, weight_decay, step, cols, old):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns), this
    tensor's step count and its ``mu_product`` (``old[0]``); returns them and the new
    ``mu_product``. The columns are loaded where they are needed: values live across the fp64
    divides (whose slow paths are calls) would be spilled around them."""
    k = step + 1.0                                # this update's step count, as torch's
    # 0.96 ** (k psi) as exp(k psi log 0.96); 0.96 made in fp64 (a float literal is fp32).
    log_096 = tl.log(tl.full((), 24.0, tl.float64) / 25.0)
    psi_log = tl.load(cols + MOMENTUM_DECAY) * log_096
    mu = beta1 * (1.0 - 0.5 * tl.exp(k * psi_log))
    mu_next = beta1 * (1.0 - 0.5 * tl.exp((k + 1.0) * psi_log))
    mu_product = old[0] * mu.to(tl.float32)       # float32, as torch's mu_product *= mu
    product = mu_product.to(tl.float64)
    grad_step = (-lr * (1.0 - mu) / (1.0 - product)).to(tl.float32)
    avg_step = (-lr * mu_next / (1.0 - product * mu_next)).to(tl.float32)
    bias_correction2 = (1.0 - tl.exp(k * tl.log(tl.load(cols + BETA2)))).to(tl.float32)
    decoupled = tl.load(cols + DECOUPLED) != 0.0
    decay = tl.where(decoupled, 1.0 - lr * weight_decay, 1.0).to(tl.float32)
    l2 = tl.where(decoupled, 0.0, weight_decay).to(tl.float32)
    beta2 = tl.load(cols + BETA2)
    return (decay, l2, (1.0 - beta1).to(tl.float32), beta2.to(tl.float32),
            (1.0 - beta2).to(tl.float32), bias_correction2, tl.load(cols + EPS).to(tl.float32),
            grad_step, avg_step), (mu_product, mu_product)


@triton.jit
def update(p, g, m_ptr, v_ptr, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's states."""
    decay, l2, one_minus_b1, beta2, one_minus_b2, bias_correction2, eps, grad_step, avg_step = S
    m = load(m_ptr, offs, mask)
    v = load(v_ptr, offs, mask)
    p = p * decay                                     # decoupled: theta * (1 - lr * wd); else 1
    g = fma(l2, p, g)                                 # grad.add(param, alpha=wd), fused
    m = lerp(m, g, one_minus_b1)                      # exp_avg.lerp_(g, 1 - beta1)
    v = v * beta2 + one_minus_b2 * g * g              # exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    store(m_ptr, offs, mask, m, BF16)
    store(v_ptr, offs, mask, v, BF16)
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    denom = tl.sqrt_rn(tl.div_rn(v, bias_correction2)) + eps
    p = p + tl.div_rn(grad_step * g, denom)           # param.addcdiv_(grad, denom, grad_step)
    return p + tl.div_rn(avg_step * m, denom)         # param.addcdiv_(exp_avg, denom, avg_step)
