"""RMSprop in the fused step kernel (``kernels/optim.py``): the per-program scalars and the
update of one block. The record is ``fused_lrs/algorithms/rmsprop.py``; its reference update is
the specification this follows, operation for operation.

Variant bit 0: momentum > 0 (the second state column, momentum_buffer, exists). ``centered``
(the third column, grad_avg) is a run-time branch on the group's column, uniform across a
program, not a compiled variant: with it as a second bit the four bodies of a one-dtype kernel
left ptxas 72 registers and an 8-byte spill (triton 3.5.1 and 3.6.0, sm_90), against the
budgets' 0; as a branch, 56 to 64 registers and no spill (tests/test_kernels_aot.py).
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma, lerp

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("alpha", "eps", "centered")
ALPHA = tl.constexpr(COLUMNS.index("alpha"))
EPS = tl.constexpr(COLUMNS.index("eps"))
CENTERED = tl.constexpr(COLUMNS.index("centered"))
MOMENTUM = tl.constexpr(1)     # the variant bit


@triton.jit
def prepare(lr, momentum, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns), and
    whether the group is centered.

    A scheduled momentum can reach 0, where torch's ``if momentum > 0`` skips the buffer,
    which keeps its value, and takes the plain step ``p - lr * g / avg``. The scalars make one
    straight-line update do either: off, the buffer is ``1 * buf + 0 * q`` (itself, bit for
    bit) and the step ``p - 1 * q`` with ``q = (lr * g) / avg``; on, ``q = g / avg`` and
    ``p - lr * buf`` as before. (A select of the two updates spills 12 B, ptxas sm_90.)"""
    alpha = tl.load(cols + ALPHA)
    on = momentum > 0.0
    keep = tl.where(on, momentum, 1.0).to(tl.float32)     # buf = keep * buf + take * q
    take = tl.where(on, 1.0, 0.0).to(tl.float32)
    scale = tl.where(on, 1.0, lr).to(tl.float32)          # q = (scale * g) / avg
    signed = tl.where(on, -lr, -1.0).to(tl.float32)       # p + signed * (buf or q)
    return (weight_decay.to(tl.float32), alpha.to(tl.float32), (1.0 - alpha).to(tl.float32),
            tl.load(cols + EPS).to(tl.float32), keep, take, scale, signed, on,
            tl.load(cols + CENTERED) != 0.0)


@triton.jit
def update(p, g, v_ptr, buf_ptr, g_avg_ptr, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's states."""
    wd, alpha, one_minus_alpha, eps, keep, take, scale, signed, on, centered = S
    # add(alpha=), addcmul and lerp round as torch's CPU ops do: fused multiply-adds
    g = fma(wd, p, g)                                 # grad.add(param, alpha=wd)
    # square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    v = fma(one_minus_alpha * g, g, load(v_ptr, offs, mask) * alpha)
    store(v_ptr, offs, mask, v, BF16)
    if centered:
        g_avg = lerp(load(g_avg_ptr, offs, mask), g, one_minus_alpha)   # lerp_(g, 1 - alpha)
        store(g_avg_ptr, offs, mask, g_avg, BF16)
        v = fma(-g_avg, g_avg, v)                     # square_avg.addcmul(g_avg, g_avg, -1)
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    avg = tl.sqrt_rn(v) + eps
    if MOMENTUM & VARIANT:
        q = tl.div_rn(scale * g, avg)
        buf = load(buf_ptr, offs, mask) * keep + take * q     # buf.mul_(m).addcdiv_(g, avg)
        store(buf_ptr, offs, mask, buf, BF16)
        return fma(tl.where(on, buf, q), signed, p)           # p.add_(buf, alpha=-lr)
    return p - tl.div_rn(scale * g, avg)    # p.addcdiv_(g, avg, value=-lr): momentum 0, scale lr
