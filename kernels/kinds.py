"""Leaf kinds: the compile-time tags shared by the Python specs and the Triton twin.

A schedule compiles to a flat list of leaves (see ``fused_lrs/schedules/base.py``). The tuple of
kinds is a ``tl.constexpr`` of the kernel, so a new *structure* compiles once, while new *values*
travel in a float64 table and never recompile. The numbers are part of that compile key: append,
never renumber.

Plain Python ints with no triton import: the specs use them on every platform, triton or not.
The kernel modules wrap the ones they read as module-level ``tl.constexpr`` (a ``@triton.jit``
function may read only constexpr globals).
"""

SCALE = 0            # v * c
EXP = 1              # v * exp(log_gamma * g(tau / period)), g = identity or floor
ANNEAL = 2           # (v or 1) * (a + (b - a) * shape(min(tau / length, pct_max)))
POLY = 3             # end + (v - end) * (1 - min(tau, T) / T) ** power
COSINE = 4           # eta + (v - eta) * (1 + cos(omega * tau)) / 2
COSINE_RESTARTS = 5  # cosine over cycles T_0, T_0 * T_mult, ...
CYCLIC = 6           # torch CyclicLR: triangular, triangular2, exp_range
INV_SQRT = 7         # v / sqrt((tau + shift) / timescale)

# ANNEAL shapes, a runtime value: s(0) = 0, s(1) = 1.
SHAPE_LINEAR, SHAPE_COS, SHAPE_SQRT, SHAPE_ONE_MINUS_SQRT = 0.0, 1.0, 2.0, 3.0
# CYCLIC modes, a runtime value.
MODE_TRIANGULAR, MODE_TRIANGULAR2, MODE_EXP_RANGE = 0.0, 1.0, 2.0

# A leaf's row in the float64 table: window lo, hi; clock offset, period, shift; parameters.
ROW = 12
N_PARAMS = 7
