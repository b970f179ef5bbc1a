"""Adadelta in the fused step kernel (``kernels/optim.py``): the per-program scalars and the
update of one block. The record is ``fused_lrs/algorithms/adadelta.py``; its reference update is
the specification this follows, operation for operation.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store
from fused_lrs.kernels.elementwise import fma

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("rho", "eps")
RHO = tl.constexpr(COLUMNS.index("rho"))
EPS = tl.constexpr(COLUMNS.index("eps"))


@triton.jit
def prepare(lr, momentum, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns)."""
    rho = tl.load(cols + RHO)
    return (weight_decay.to(tl.float32), rho.to(tl.float32), (1.0 - rho).to(tl.float32),
            tl.load(cols + EPS).to(tl.float32), (-lr).to(tl.float32))


@triton.jit
def update(p, g, sq_ptr, acc_ptr, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's states."""
    l2, rho, one_minus_rho, eps, neg_lr = S
    square_avg = load(sq_ptr, offs, mask)
    acc_delta = load(acc_ptr, offs, mask)
    g = fma(l2, p, g)                                 # grad.add(param, alpha=wd), fused
    square_avg = square_avg * rho + one_minus_rho * g * g
    # Stored before the divide: kept across its slow-path call, the masked path's predicates
    # spill 4 bytes on triton 3.5 (tests/test_kernels_aot.py).
    store(sq_ptr, offs, mask, square_avg, BF16)
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    delta = tl.div_rn(tl.sqrt_rn(acc_delta + eps), tl.sqrt_rn(square_avg + eps)) * g
    acc_delta = acc_delta * rho + one_minus_rho * delta * delta
    store(acc_ptr, offs, mask, acc_delta, BF16)
    return p + neg_lr * delta                         # param.add_(delta, alpha=-lr)
