"""SGD in the fused step kernel (``kernels/optim.py``): the per-program scalars and the update of
one block. The record is ``fused_lrs/algorithms/sgd.py``.

Variant bit 0: momentum (the first state column, momentum_buffer, exists).
"""

import triton
import triton.language as tl

from fused_lrs.kernels.access import load, store

# The record's own row columns, in its order (a test holds them equal).
COLUMNS = ("dampening", "nesterov")
DAMPENING = tl.constexpr(COLUMNS.index("dampening"))
NESTEROV = tl.constexpr(COLUMNS.index("nesterov"))
MOMENTUM = tl.constexpr(1)     # the variant bit


@triton.jit
def prepare(lr, momentum, weight_decay, step, cols):
    """Per-program scalars from the group's fp64 values (``cols``: its own columns) and this
    tensor's step count."""
    first = step == 0.0            # the first update with the buffer copies the gradient in
    return (weight_decay.to(tl.float32), lr.to(tl.float32), momentum.to(tl.float32),
            (1.0 - tl.load(cols + DAMPENING)).to(tl.float32), first,
            tl.load(cols + NESTEROV) != 0.0)


@triton.jit
def update(p, g, buf_ptr, unused_ptr2, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's momentum buffer."""
    wd, lr, momentum, one_minus_dampening, first, nesterov = S
    d = g + wd * p
    if MOMENTUM & VARIANT:        # (constexpr on the left: the interpreter passes an int)
        buf = momentum * load(buf_ptr, offs, mask)
        buf = tl.where(first, d, buf + one_minus_dampening * d)
        store(buf_ptr, offs, mask, buf, BF16)
        d = tl.where(nesterov, d + momentum * buf, buf)
    return p - lr * d
