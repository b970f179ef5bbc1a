"""Elementwise arithmetic the update blocks share (``kernels/<algorithm>.py``), rounded as
torch's CPU kernels round, so that a block follows its reference update op for op."""

import os

import triton
import triton.language as tl

# The interpreter computes tl.fma as a product and a sum, each rounded to fp32 (numpy): there,
# a fused multiply-add is the fp64 sum of the exact fp64 product, rounded once more to fp32
# (that double rounding differs from one rounding only at ties of the fp64 result, ~2^-29).
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def fma(a, b, c):
    """``a * b + c`` rounded once, as a fused multiply-add (fp32)."""
    if INTERPRETED:
        return (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def lerp(start, end, weight):
    """torch's ``start.lerp(end, weight)``: ``start + w (end - start)`` for |w| < 0.5, else
    ``end - (1 - w)(end - start)``, each one fused multiply-add (ATen's lerp_vec). ``weight``
    is a per-program scalar: every element takes the same branch."""
    small = tl.abs(weight) < 0.5
    return fma(tl.where(small, weight, weight - 1.0), end - start, tl.where(small, start, end))
