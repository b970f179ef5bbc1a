"""The Triton twin of every schedule against its float64 reference (``spec.lr``).

The twin runs on CUDA when there is one, else under the Triton interpreter (conftest.py). Each
spec is evaluated at t = 0..300, at every edge of its configuration +-1 (milestones, cycle and
phase boundaries, the end of warmup, T_max and its multiples, on the outer clock of any
composition: ``edges``), and at t = 10^7 - 1 and 10^7.

Tolerance: 1e-6 relative, with no absolute term for the zeros of the schedules: both sides
compute them exactly. A linear or polynomial decay to 0 ends on ``a + (0 - a) * 1`` and
``0 ** p``; a cosine at T_max (and 3 T_max, ..., up to t = 10^7) takes ``cos`` of a phase a few
ulps from an odd multiple of pi, where cos is so flat that ``1 + cos`` rounds to exactly 0. (A
sweep of 150 random configurations per factory and of composition trees found no exception.)
The only absolute term is the smallest normal float64: below it (decays and chained products
that underflow) a float64 has fewer than 53 bits, and a relative bound means nothing.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fused_lrs.schedules import (
    FACTORIES,
    Schedule,
    chained,
    constant,
    cosine,
    cosine_restarts,
    cyclic,
    cyclic_momentum,
    every,
    exponential,
    inverse_sqrt,
    linear,
    multistep,
    one_cycle,
    one_cycle_momentum,
    plateau,
    polynomial,
    sequential,
    step,
    warmup,
    wsd,
)

RTOL = 1e-6
SUBNORMAL = sys.float_info.min  # 2.2e-308: where float64 precision runs out
FAR = (10**7 - 1, 10**7)

# The interpreter runs a launch in ~10-40 ms; these bounds keep the file to seconds.
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)


def _restart_starts(s) -> list[int]:
    if s.num_cycles is not None:  # HF: num_cycles equal cycles over T_0, then the floor
        return [round(k * s.T_0 / s.num_cycles) for k in range(1, math.ceil(s.num_cycles) + 1)]
    if s.T_mult == 1:
        return [k * s.T_0 for k in (1, 2, 3, FAR[1] // s.T_0)]
    starts, length = [0], s.T_0  # geometric: a few dozen cycles reach past 10^7
    while starts[-1] <= FAR[1]:
        starts.append(starts[-1] + length)
        length *= s.T_mult
    return starts


def _cyclic_turns(s) -> list[int]:
    total = s.step_size_up + (s.step_size_down or s.step_size_up)
    return [k * total + d for k in (0, 1, 2, FAR[1] // total) for d in (0, s.step_size_up)]


def _one_cycle_ends(s) -> list[int]:
    return [f(end) for end, _, _ in s.phases() for f in (math.floor, math.ceil)]


def _cosine_turns(s) -> list[int]:
    # T_max and its multiples, and the zeros of the cosine, at T_max (2k + 1) / (2 num_cycles).
    zeros = [round(s.T_max * (2 * k + 1) / (2 * s.num_cycles)) for k in range(3)]
    return [k * s.T_max for k in (1, 2, 3)] + zeros


# Where each leaf factory changes regime, on its own clock.
BOUNDARIES = {
    "constant": lambda s: [s.total_iters],
    "step": lambda s: [k * s.step_size for k in (1, 2, 3, FAR[1] // s.step_size)],
    "multistep": lambda s: list(s.milestones),
    "exponential": lambda s: [k * s.decay_steps for k in (1, 2, 3)],
    "cosine": _cosine_turns,
    "cosine_restarts": _restart_starts,
    "cyclic": _cyclic_turns,
    "one_cycle": lambda s: [*_one_cycle_ends(s), s.total_steps],
    "one_cycle_momentum": lambda s: [*_one_cycle_ends(s), s.total_steps],
    "linear": lambda s: [s.total_iters],
    "polynomial": lambda s: [s.total_iters],
    "inverse_sqrt": lambda s: [s.num_warmup_steps],
    "plateau": lambda s: [],  # its scale moves when a metric is reported: test_plateau.py
    "wsd": lambda s: [s.num_warmup_steps, s.num_warmup_steps + s.num_stable_steps,
                      s.num_warmup_steps + s.num_stable_steps + s.num_decay_steps],
}


def edges(spec: Schedule, offset: int = 0, scale: int = 1) -> set[int]:
    """The steps where ``spec`` changes regime, on the outer clock: a child placed at
    ``offset`` and slowed by ``scale`` has its own step ``e`` at ``offset + scale * e``."""
    f = spec.factory
    if f == "warmup":
        end = offset + scale * spec.steps
        start = end if spec.prefix else offset  # prefix=False: the schedule's clock is ours
        return {end} | edges(spec.schedule, start, scale)
    if f == "sequential":
        out = set()
        for m, child in zip((0, *spec.milestones), spec.schedules):
            out |= {offset + scale * m} | edges(child, offset + scale * m, scale)
        return out
    if f == "chained":
        return set().union(*(edges(child, offset, scale) for child in spec.schedules))
    if f == "every":
        return edges(spec.schedule, offset, scale * spec.n)
    return {offset + scale * e for e in BOUNDARIES[f](spec)}


def points(spec: Schedule) -> torch.Tensor:
    near = {e + d for e in edges(spec) for d in (-1, 0, 1)}
    t = sorted({*range(301), *FAR, *(x for x in near if 0 <= x <= FAR[1])})
    return torch.tensor(t, dtype=torch.int64)


def check(spec: Schedule, base: float = 1.0) -> None:
    t = points(spec)
    got = spec.lr_triton(t.to(KERNEL_DEVICE), base).cpu()
    ref = spec.lr(t, base)
    off = ~((got - ref).abs() <= SUBNORMAL + RTOL * ref.abs())  # to name the steps, not indices
    assert_close(got, ref, RTOL, SUBNORMAL,
                 what=f"{spec!r}, base {base}, first steps off: {t[off][:5].tolist()}")


FIXED = {
    "one_cycle_momentum": one_cycle_momentum(60, 0.25, "linear", 0.8, 0.95, True),
    "cyclic_momentum": cyclic_momentum(0.8, 0.9, 4, 6, "triangular2"),
    "constant": constant(0.5, 5),
    "constant-zero-factor": constant(0.0, 3),
    "constant-plain": constant(),
    "step": step(7, 0.5),
    "step-every-step": step(1, 0.97),
    "multistep-repeats": multistep([20, 3, 3, 7, 20, 20], 0.5),
    "exponential": exponential(0.95),
    "exponential-staircase": exponential(0.9, decay_steps=10, staircase=True),
    "exponential-rate": exponential(rate=0.01),
    "exponential-rate-staircase": exponential(rate=0.05, decay_steps=7, staircase=True),
    "cosine": cosine(100),
    "cosine-eta": cosine(37, 0.01),
    "cosine-cycles": cosine(50, num_cycles=1.5),
    "cosine-min-lr-rate": cosine(80, min_lr_rate=0.1),
    "cosine-restarts": cosine_restarts(10),
    # The restart at t = 121 is where torch's own epoch formula rounds the wrong way.
    "cosine-restarts-T_mult-3": cosine_restarts(1, 3),
    "cosine-restarts-T_mult-2": cosine_restarts(5, 2, 0.001),
    "cosine-restarts-hard": cosine_restarts(90, num_cycles=3),
    "cyclic-triangular": cyclic(0.01, 0.1, 4),
    "cyclic-triangular2": cyclic(0.01, 0.1, 3, 5, "triangular2"),
    "cyclic-exp-range": cyclic(0.001, 0.1, 1, 1, "exp_range", 0.99),
    "one-cycle": one_cycle(0.1, 100),
    "one-cycle-three-phase": one_cycle(0.1, 100, 0.25, "linear", three_phase=True),
    "one-cycle-three-phase-short": one_cycle(1.0, 7, three_phase=True),
    "one-cycle-fractional-ends": one_cycle(0.1, 33, 0.35),
    "linear-to-zero": linear(0.3, 0.0, 7),
    "linear": linear(),
    "polynomial": polynomial(10),
    "polynomial-power-end": polynomial(50, 2.0, 1e-4),
    "inverse-sqrt": inverse_sqrt(10),
    "inverse-sqrt-no-warmup": inverse_sqrt(0),
    "inverse-sqrt-timescale": inverse_sqrt(20, 5),
    **{f"wsd-{w}-{d}": wsd(5, 9, 21, warmup_type=w, decay_type=d, min_lr_ratio=0.1)
       for w in ("linear", "cosine", "1-sqrt") for d in ("linear", "cosine", "1-sqrt")},
    "wsd-to-zero-cycles": wsd(0, 10, num_stable_steps=0, num_cycles=1.5),
    "warmup-cosine": warmup(cosine(90), 10),
    "warmup-none": warmup(constant(), 0),
    "warmup-linear-from-factor": warmup(linear(1.0, 0.0, 90), 10, start_factor=0.1),
    "warmup-sequential": warmup(sequential([cosine(50), constant(0.1, 10), exponential(0.97)],
                                           [50, 60]), 10),
    "sequential": sequential([linear(0.1, 1.0, 10), cosine(50)], [10]),
    "sequential-of-one-cycle": sequential([one_cycle(0.1, 40, three_phase=True),
                                           cyclic(0.001, 0.01, 5)], [41]),
    "chained-warmup-multistep": chained([warmup(cosine(100), 10), multistep([30, 30, 60], 0.5)]),
    "chained-step-exponential": chained([step(3, 0.5), exponential(0.99)]),
    "every-step": every(step(3, 0.5), 4),
    "every-sequential": every(sequential([linear(0.1, 1.0, 3), cosine(10)], [3]), 3),
    "sequential-every": sequential([every(cosine(10), 5), one_cycle(0.1, 30)], [40]),
    "warmup-every": warmup(every(cosine(20), 3), 7),
    "warmup-plateau": warmup(plateau(), 7),   # a fresh plateau: scale 1 (reports: test_plateau)
    "warmup-not-prefix": warmup(cosine(40, 0.01), 10, 0.1, prefix=False),  # timm's default
    "warmup-not-prefix-sequential": warmup(sequential([step(5), cosine(30)], [12]), 8,
                                           prefix=False),
}


@pytest.mark.parametrize("spec", FIXED.values(), ids=FIXED.keys())
def test_twin_matches_reference(spec):
    check(spec, 0.1)


def test_every_factory_is_covered():
    factories = set()

    def walk(spec):
        factories.add(spec.factory)
        for child in getattr(spec, "schedules", ()) or (getattr(spec, "schedule", None),):
            if child is not None:
                walk(child)

    for spec in FIXED.values():
        walk(spec)
    # cyclic_momentum builds a cyclic spec (peaks swapped): FIXED holds one all the same.
    assert factories == set(FACTORIES) - {"cyclic_momentum"}, set(FACTORIES) ^ factories


# Randomized configurations, bounded so every edge falls in a few hundred steps.

BASES = st.sampled_from([1.0, 0.1, 3e-4]) | st.floats(1e-4, 10.0)
SHAPES = st.sampled_from(["linear", "cosine", "1-sqrt"])
MODES = st.sampled_from(["triangular", "triangular2", "exp_range"])
DECAY = st.floats(0.05, 1.0)


@st.composite
def one_cycles(draw):
    args = (draw(st.floats(1e-3, 1.0)), draw(st.integers(3, 300)), draw(st.floats(0.05, 0.5)),
            draw(st.sampled_from(["cos", "linear"])), draw(st.floats(2.0, 100.0)),
            draw(st.sampled_from([1e2, 1e4, 1e6])), draw(st.booleans()))
    try:
        return one_cycle(*args)
    except ValueError:  # a phase of no length
        assume(False)


@st.composite
def wsds(draw):
    w, d, s = draw(st.integers(0, 40)), draw(st.integers(0, 40)), draw(st.integers(0, 40))
    lengths = draw(st.sampled_from([{"num_stable_steps": s}, {"num_training_steps": w + s + d}]))
    return wsd(w, d, **lengths, warmup_type=draw(SHAPES), decay_type=draw(SHAPES),
               min_lr_ratio=draw(st.just(0.0) | st.floats(0.0, 1.0)),
               num_cycles=draw(st.just(0.5) | st.floats(0.1, 2.0)))


LEAVES = {
    "constant": st.builds(constant, st.floats(0.0, 1.0), st.integers(0, 50)),
    "step": st.builds(step, st.integers(1, 30), DECAY),
    "multistep": st.builds(multistep, st.lists(st.integers(1, 100), max_size=6), DECAY),
    "exponential": st.builds(exponential, st.floats(0.5, 1.0), decay_steps=st.integers(1, 50),
                             staircase=st.booleans())
    | st.builds(exponential, rate=st.floats(0.0, 0.2), decay_steps=st.integers(1, 50),
                staircase=st.booleans()),
    "cosine": st.builds(cosine, st.integers(1, 100), st.just(0.0) | st.floats(0.0, 0.5),
                        num_cycles=st.just(0.5) | st.floats(0.1, 3.0),
                        min_lr_rate=st.just(0.0) | st.floats(0.0, 1.0)),
    "cosine_restarts": st.builds(cosine_restarts, st.integers(1, 30), st.sampled_from([1, 2, 3]),
                                 st.floats(0.0, 0.5))
    | st.builds(cosine_restarts, st.integers(1, 100), eta_min=st.floats(0.0, 0.5),
                num_cycles=st.integers(1, 5) | st.floats(0.5, 5.0)),
    "cyclic": st.builds(cyclic, st.floats(1e-4, 0.1), st.floats(0.01, 1.0), st.integers(1, 30),
                        st.none() | st.integers(1, 30), MODES, st.floats(0.9, 1.0)),
    "one_cycle": one_cycles(),
    "linear": st.builds(linear, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(1, 100)),
    "polynomial": st.builds(polynomial, st.integers(1, 100), st.floats(0.5, 4.0),
                            st.just(0.0) | st.floats(0.0, 0.5)),
    "inverse_sqrt": st.builds(inverse_sqrt, st.integers(0, 50), st.none() | st.integers(1, 100)),
    "wsd": wsds(),
}


@st.composite
def sequentials(draw, children):
    schedules = draw(st.lists(children, min_size=1, max_size=3))
    gaps = draw(st.lists(st.integers(1, 80), min_size=len(schedules) - 1,
                         max_size=len(schedules) - 1))
    return sequential(schedules, [sum(gaps[:i + 1]) for i in range(len(gaps))])


def compositions(children):
    return st.one_of(
        st.builds(warmup, children, st.integers(0, 40), st.just(0.0) | st.floats(0.0, 1.0)),
        sequentials(children),
        st.builds(chained, st.lists(children, min_size=1, max_size=3)),
        st.builds(every, children, st.integers(1, 6)))


# Trees of up to four leaves: warmup(sequential([...])), chained([warmup(...), ...]), ...
TREES = st.recursive(st.one_of(*LEAVES.values()), compositions, max_leaves=4)


@pytest.mark.parametrize("factory", LEAVES)
@SETTINGS
@given(data=st.data(), base=BASES)
def test_twin_matches_reference_randomized(factory, data, base):
    check(data.draw(LEAVES[factory], label="spec"), base)


@settings(SETTINGS, max_examples=40)
@given(spec=TREES, base=BASES)
def test_compositions_match_reference_randomized(spec, base):
    check(spec, base)


# The compile key is the kinds tuple; the numbers travel in the table. New values of the same
# structure must give the same kinds and a different table.
SAME_STRUCTURE = {
    "constant": (constant(0.5, 5), constant(0.1, 9)),
    "step": (step(7, 0.5), step(3, 0.9)),
    "multistep": (multistep([3, 7], 0.5), multistep([10, 20], 0.1)),
    "exponential": (exponential(0.95), exponential(rate=0.3, decay_steps=4, staircase=True)),
    "cosine": (cosine(100), cosine(37, 0.01, num_cycles=1.5, min_lr_rate=0.1)),
    "cosine_restarts": (cosine_restarts(10), cosine_restarts(5, 3, 0.01)),
    "cyclic": (cyclic(0.01, 0.1, 4), cyclic(0.001, 1.0, 3, 5, "exp_range", 0.99)),
    "one_cycle": (one_cycle(0.1, 100), one_cycle(1.0, 50, 0.4, "linear", 10.0, 1e3)),
    "linear": (linear(), linear(0.3, 0.0, 7)),
    "polynomial": (polynomial(10), polynomial(50, 2.0, 1e-4)),
    "inverse_sqrt": (inverse_sqrt(10), inverse_sqrt(20, 5)),
    "wsd": (wsd(5, 9, 21), wsd(10, 20, num_stable_steps=3, min_lr_ratio=0.1, num_cycles=1.5)),
    "warmup": (warmup(cosine(90), 10), warmup(cosine(50), 3, 0.1)),
    "sequential": (sequential([linear(0.1, 1.0, 10), cosine(50)], [10]),
                   sequential([linear(0.5, 1.0, 3), cosine(20, 0.1)], [7])),
    "chained": (chained([step(3, 0.5), exponential(0.99)]),
                chained([step(5, 0.1), exponential(0.9)])),
    "every": (every(cosine(10), 3), every(cosine(20), 7)),
}


@pytest.mark.parametrize("a, b", SAME_STRUCTURE.values(), ids=SAME_STRUCTURE.keys())
def test_new_values_keep_the_compile_key(a, b):
    assert a.kinds == b.kinds
    assert a.table().shape == b.table().shape
    assert not torch.equal(a.table(), b.table())


@pytest.mark.gpu
def test_new_values_do_not_recompile():
    from fused_lrs.kernels import schedule as kernel

    # Same launch shape (n = 300 specializes the same way both times), different numbers.
    t = torch.arange(300, device="cuda")
    cosine(100).lr_triton(t)
    cache = kernel._evaluate_kernel.device_caches[torch.cuda.current_device()][0]
    compiled = len(cache)
    assert_close(cosine(37, 0.01, num_cycles=1.5).lr_triton(t).cpu(),
                 cosine(37, 0.01, num_cycles=1.5).lr(t.cpu()), RTOL)
    assert len(cache) == compiled
