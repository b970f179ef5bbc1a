"""Elementwise arithmetic the update blocks share (``kernels/<algorithm>.py``), rounded as
torch's CPU kernels round, so that a block follows its reference update op for op."""

import triton
import triton.language as tl


@triton.jit
def lerp(start, end, weight):
    """torch's ``start.lerp(end, weight)``: ``start + w (end - start)`` for |w| < 0.5, else
    ``end - (1 - w)(end - start)``, each one fused multiply-add (ATen's lerp_vec). ``weight``
    is a per-program scalar: every element takes the same branch."""
    small = tl.abs(weight) < 0.5
    return tl.fma(tl.where(small, weight, weight - 1.0), end - start,
                  tl.where(small, start, end))
