"""The Triton twin of every schedule spec.

``schedule_lr(t, base_lr, table_ptr, KINDS)`` folds the leaves of a spec (see
``fused_lrs/schedules/base.py``) over ``base_lr``. ``KINDS`` is the constexpr tuple of leaf
kinds, so the fold is unrolled and every ``if KIND == ...`` below is resolved at compile time;
the numbers come from a float64 table, so a new value never recompiles.

All of it is float64 scalar (or small-vector) math: fp32 holds integers exactly only to 2^24, and
the schedule must be right for t up to 10^7 and beyond. On an H100 the fp64 work of a whole
schedule is a few dozen instructions per program, noise next to a memory-bound update.

The same functions work on a scalar ``t`` (the optimizer kernels) and on a block of ``t``
(``evaluate`` below, which the tests and the preview use).
"""

import triton
import triton.language as tl

from fused_lrs.kernels import kinds

# The leaf kinds and the row width as constexpr globals, the only globals a jit function may read.
SCALE = tl.constexpr(kinds.SCALE)
EXP = tl.constexpr(kinds.EXP)
ANNEAL = tl.constexpr(kinds.ANNEAL)
POLY = tl.constexpr(kinds.POLY)
COSINE = tl.constexpr(kinds.COSINE)
COSINE_RESTARTS = tl.constexpr(kinds.COSINE_RESTARTS)
CYCLIC = tl.constexpr(kinds.CYCLIC)
INV_SQRT = tl.constexpr(kinds.INV_SQRT)
ROW = tl.constexpr(kinds.ROW)

# Multiply PI on the right of a tensor (x * PI), never PI * x: under the interpreter PI * x runs
# tl.constexpr.__mul__, which wraps the tensor in a constexpr, and the builtins of triton >= 3.7
# refuse that ("cannot convert ... to tensor"). Compiled, both orders are the same multiply.
PI = tl.constexpr(3.141592653589793)
# A leaf's row: lo, hi, offset, period, shift, then its parameters from column P on. (Loads are
# inline rather than through a helper: under the interpreter each nested jit call costs ~0.25 ms.)
P = tl.constexpr(5)


@triton.jit
def _pow(x, y):
    # x ** y for x >= 0, y > 0: exp(y * log x), with log 0 = -inf giving exactly 0.
    return tl.exp(y * tl.log(x))


@triton.jit
def _anneal(tau, v, row):
    a = tl.load(row + P + 0)
    b = tl.load(row + P + 1)
    pct = tl.minimum(tau / tl.load(row + P + 2), tl.load(row + P + 5))
    code = tl.load(row + P + 3)
    # Every shape is computed and one is selected: NaN from sqrt of a negative in an unselected
    # shape does not leak through tl.where.
    shape = tl.where(code == 0.0, pct,
                     tl.where(code == 1.0, (1.0 - tl.cos(pct * PI)) * 0.5,
                              tl.where(code == 2.0, tl.sqrt(pct), 1.0 - tl.sqrt(1.0 - pct))))
    scale = tl.where(tl.load(row + P + 4) != 0.0, v, 1.0)
    return scale * (a + (b - a) * shape)


@triton.jit
def _restart_bounds(n, t0, t_mult):
    # Start of cycle n and its length, exact for integer T_0 and T_mult: the power is rounded
    # back to the integer it is, so a boundary never lands a hair early.
    power = tl.floor(tl.exp(n * tl.log(t_mult)) + 0.5)
    return t0 * (power - 1.0) / (t_mult - 1.0), t0 * power


@triton.jit
def _cosine_restarts(tau, v, row):
    t0 = tl.load(row + P + 0)
    t_mult = tl.load(row + P + 1)
    eta = tl.load(row + P + 2)
    cycles = tl.load(row + P + 3)
    # T_mult == 1: `cycles` cycles per T_0 (1 for torch, num_cycles for HF's hard restarts).
    x = cycles * (tau / t0)
    frac_flat = x - tl.floor(x)
    # T_mult > 1: the cycle index from the geometric series, then corrected by one either way,
    # because the log can round across a boundary. tm is kept > 1 so the unselected branch
    # stays finite.
    tm = tl.maximum(t_mult, 2.0)
    n = tl.floor(tl.log(tau / t0 * (tm - 1.0) + 1.0) / tl.log(tm))
    start, length = _restart_bounds(n, t0, tm)
    n = tl.where(tau >= start + length, n + 1.0, tl.where(tau < start, n - 1.0, n))
    start, length = _restart_bounds(n, t0, tm)
    frac = tl.where(t_mult == 1.0, frac_flat, (tau - start) / length)
    return eta + (v - eta) * (1.0 + tl.cos(frac * PI)) * 0.5


@triton.jit
def _cyclic(tau, row):
    base = tl.load(row + P + 0)
    peak = tl.load(row + P + 1)
    total = tl.load(row + P + 2)
    ratio = tl.load(row + P + 3)
    mode = tl.load(row + P + 4)
    cycle = tl.floor(1.0 + tau / total)
    x = 1.0 + tau / total - cycle
    scale = tl.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    amplitude = tl.where(mode == 0.0, 1.0,
                         tl.where(mode == 1.0, 1.0 / tl.exp((cycle - 1.0) * 0.6931471805599453),
                                  tl.exp(tau * tl.load(row + P + 5))))
    return base + (peak - base) * scale * amplitude


@triton.jit
def _leaf(KIND: tl.constexpr, tau, v, row):
    if KIND == SCALE:
        out = v * tl.load(row + P + 0)
    elif KIND == EXP:
        g = tau / tl.load(row + P + 1)
        g = tl.where(tl.load(row + P + 2) != 0.0, tl.floor(g), g)
        out = v * tl.exp(tl.load(row + P + 0) * g)
    elif KIND == ANNEAL:
        out = _anneal(tau, v, row)
    elif KIND == POLY:
        total = tl.load(row + P + 0)
        end = tl.load(row + P + 2)
        out = end + (v - end) * _pow(1.0 - tl.minimum(tau, total) / total, tl.load(row + P + 1))
    elif KIND == COSINE:
        eta = tl.load(row + P + 1) + tl.load(row + P + 2) * v
        out = eta + (v - eta) * (1.0 + tl.cos(tl.load(row + P + 0) * tau)) * 0.5
    elif KIND == COSINE_RESTARTS:
        out = _cosine_restarts(tau, v, row)
    elif KIND == CYCLIC:
        out = _cyclic(tau, row) + v * 0.0
    else:
        tl.static_assert(KIND == INV_SQRT, "unknown leaf kind")
        out = v / tl.sqrt((tau + tl.load(row + P + 1)) / tl.load(row + P + 0))
    return out


@triton.jit
def schedule_lr(t, base_lr, table_ptr, KINDS: tl.constexpr):
    """lr after ``t`` completed steps (float64 scalar or block), for a group whose lr is
    ``base_lr``. ``table_ptr`` points at the spec's ``[len(KINDS), ROW]`` float64 table."""
    v = base_lr + t * 0.0
    for i in tl.static_range(len(KINDS)):
        row = table_ptr + i * ROW
        tau = tl.floor((t - tl.load(row + 2)) / tl.load(row + 3)) - tl.load(row + 4)
        active = (t >= tl.load(row)) & (t < tl.load(row + 1))
        v = tl.where(active, _leaf(KINDS[i], tau, v, row), v)
    return v


@triton.jit
def _evaluate_kernel(
    t_ptr,        # int64 [n]: steps completed
    out_ptr,      # float64 [n]: lr at each step
    table_ptr,    # float64 [len(KINDS), ROW]: the spec's leaves
    base_ptr,     # float64 [1]: the group's base lr (a pointer: float arguments arrive as fp32)
    n,            # number of steps to evaluate
    KINDS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    t = tl.load(t_ptr + offs, mask=mask, other=0).to(tl.float64)
    tl.store(out_ptr + offs, schedule_lr(t, tl.load(base_ptr), table_ptr, KINDS), mask=mask)


def evaluate(kinds, table, t, base_lr=1.0):
    """Launch the twin over an integer tensor of steps; returns float64 lrs of the same shape."""
    import torch

    steps = t.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(steps.shape, dtype=torch.float64, device=steps.device)
    base = torch.tensor([float(base_lr)], dtype=torch.float64, device=steps.device)
    block = 256
    grid = (max(1, triton.cdiv(steps.numel(), block)),)
    _evaluate_kernel[grid](steps, out, table, base, steps.numel(), KINDS=tuple(kinds), BLOCK=block)
    return out.reshape(t.shape)


# Argument types as `evaluate` passes them, for ahead-of-time compilation.
SIGNATURE = {"t_ptr": "*i64", "out_ptr": "*fp64", "table_ptr": "*fp64", "base_ptr": "*fp64",
             "n": "i32"}
