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
    tensor's step count.

    A scheduled momentum can reach 0 (OneCycleLR's base_momentum=0 at its peak), where torch's
    ``if momentum != 0`` skips the buffer, which keeps its value, and steps on d. The scalars
    make the same straight-line update do that (``keep`` 1 and ``take`` 0: the buffer stays,
    bit for bit; ``d + 0 * buf``: d), so no per-element select or branch is added (either
    spills 12 to 28 B in the mixed-dtype variants, ptxas sm_90)."""
    on = momentum != 0.0
    nesterov = tl.load(cols + NESTEROV) != 0.0
    keep = tl.where(on, momentum, 1.0).to(tl.float32)           # buf = keep * buf + take * d
    take = tl.where(on, 1.0 - tl.load(cols + DAMPENING), 0.0).to(tl.float32)
    first = (step == 0.0) & on     # the first update with the buffer copies the gradient in
    look = tl.where(on, momentum, 0.0).to(tl.float32)          # d + look * buf ...
    only_buf = on & (not nesterov)                               # ... or buf alone
    return weight_decay.to(tl.float32), lr.to(tl.float32), keep, take, first, look, only_buf


@triton.jit
def update(p, g, buf_ptr, unused_ptr2, unused_ptr3, offs, mask, S, VARIANT: tl.constexpr,
           BF16: tl.constexpr):
    """The new weights of one block; writes the block's momentum buffer."""
    wd, lr, keep, take, first, look, only_buf = S
    d = g + wd * p
    if MOMENTUM & VARIANT:        # (constexpr on the left: the interpreter passes an int)
        buf = keep * load(buf_ptr, offs, mask)
        buf = tl.where(first, d, buf + take * d)
        store(buf_ptr, offs, mask, buf, BF16)
        d = tl.where(only_buf, buf, d + look * buf)
    return p - lr * d
