"""Memory access for the update kernels: typed pointers from raw addresses, and the loads and
stores of state tensors that every algorithm's ``update`` (``kernels/<algorithm>.py``) uses.

Math is fp32 whatever the storage dtype: a load widens to fp32, a store rounds back to nearest
even (by hand for bf16, see ``rne_bf16``).
"""

import triton
import triton.language as tl


@triton.jit
def typed(address, CODE: tl.constexpr, ALIGNED: tl.constexpr = False):
    """An int64 address as a pointer to fp32 (CODE 0), bf16 (1) or fp16 (2)."""
    if CODE == 0:
        ptr = address.to(tl.pointer_type(tl.float32))
    elif CODE == 1:
        ptr = address.to(tl.pointer_type(tl.bfloat16))
    else:
        ptr = address.to(tl.pointer_type(tl.float16))
    if ALIGNED:
        # A promise that the address is a multiple of 16 bytes: what lets the compiler emit
        # ld.global.v4 / st.global.v4. It marks the op that made the pointer (tl.multiple_of
        # annotates, it does not copy), so the hinted pointer must be a cast of its own.
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def rne_bf16(x):
    # fp32 -> bf16, round to nearest even by hand, exactly as c10::BFloat16 does (NaN kept
    # NaN): the interpreter's cast truncates, and its "rtne" mode mishandles a carry out of the
    # mantissa. Four integer ops per element, free in a memory-bound loop.
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), y)


@triton.jit
def load(ptr, offs, mask):
    """A block of a state tensor, widened to fp32 (``mask=None``: a full block, unmasked)."""
    return tl.load(ptr + offs, mask=mask).to(tl.float32)


@triton.jit
def store(ptr, offs, mask, x, BF16: tl.constexpr):
    """Store fp32 ``x`` into a state tensor of ``ptr``'s dtype, rounded to nearest even."""
    if BF16:
        x = rne_bf16(x)
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)
