"""Every schedule factory against the torch or HF scheduler it mirrors, run on a real optimizer.

The peer's sequence is what a training loop sees: ``group["lr"]`` read before each
``opt.step()``, with ``opt.step(); sched.step()`` in between. Entry ``t`` of that sequence is the
lr after ``t`` completed steps, which is what ``spec.lr(t)`` promises (``schedules/base.py``).
Each loop runs past every edge of its configuration: t = 0, each milestone and cycle boundary,
the end of warmup, ``T_max`` and beyond. t = 10^7, which no loop reaches, is compared with the
peer's own closed form (``peer_closed_form``).

Tolerances, relative:
  * ``CLOSED`` (1e-9): the peer evaluates a closed form (LambdaLR, CyclicLR, OneCycleLR,
    CosineAnnealingWarmRestarts), so only the order of a few float operations differs.
  * ``PRODUCT`` (1e-9): torch's get_lr is recursive but only multiplies by a constant (StepLR,
    MultiStepLR, ExponentialLR, ConstantLR): n steps cost at most n ulps, far inside 1e-9 here.
  * ``RECURSIVE`` (1e-7): torch's get_lr is a recursion on a ratio of its closed form
    (CosineAnnealingLR, LinearLR, PolynomialLR). The ratio is ill-conditioned where the closed
    form nears 0 (1 + cos near its zero, 1 - t/T near T), and the error accumulates.
An absolute term (``atol``, 1e-12 times the base lr) is given only where the lr legitimately
reaches 0 and the peer computes that 0 as a residue: LinearLR with end_factor = 0, whose ratio
at total_iters is 1 - s / (T s - (T - 1) s), a few ulps rather than 0. Where the cosines pass
through 0 (torch's at T_max, 3 T_max; HF's past T) the spec rounds the phase as the peer does
and gets the same exact 0, so no atol is needed there.
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import transformers.optimization as hf
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as tlr

from fused_lrs.schedules import (
    FACTORIES,
    Schedule,
    chained,
    constant,
    cosine,
    cosine_restarts,
    cyclic,
    every,
    exponential,
    inverse_sqrt,
    linear,
    multistep,
    one_cycle,
    polynomial,
    sequential,
    step,
    warmup,
    wsd,
)

CLOSED = PRODUCT = 1e-9
RECURSIVE = 1e-7
THROUGH_ZERO = 1e-12
FAR = (10**7 - 1, 10**7)

# Bounded so the whole file stays a few seconds; derandomized so CI sees the same examples.
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)

BASE = st.sampled_from([1.0, 0.1, 3e-4]) | st.floats(1e-4, 10.0)
FRACTION = st.floats(0.0, 1.0)
FACTOR = st.floats(0.01, 1.0)  # torch's LinearLR and ConstantLR divide by it
SHAPES = st.sampled_from(["linear", "cosine", "1-sqrt"])


def config(**fields) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"base": BASE, **fields})


@dataclass(frozen=True)
class Peer:
    """One row of the table: a factory configuration and the peer that must agree with it."""

    id: str
    configs: st.SearchStrategy[dict]   # randomized, bounded configurations
    examples: tuple[dict, ...]         # fixed configurations that pin an edge
    spec: Callable[[dict], Schedule]
    peer: Callable[[torch.optim.Optimizer, dict], tlr.LRScheduler]
    steps: Callable[[dict], int]       # loop length: past every edge of the configuration
    rtol: float
    atol: float = 0.0                  # times the base lr
    far: bool = True                   # also compare at t = 10^7 with the peer's closed form
    per: int = 1                       # the peer is stepped once per `per` optimizer steps


def _one_cycle(c) -> Schedule:
    return one_cycle(c["max_lr"], c["total_steps"], c["pct_start"], c["anneal"], c["div"],
                     c["final_div"], c["three_phase"])


def _one_cycle_valid(c) -> bool:
    try:
        _one_cycle(c)
    except ValueError:
        return False
    return True


def _wsd_lengths(c) -> dict:
    # Both ways of giving the stable phase: directly, or through the training length.
    if c["by_training"]:
        return {"num_training_steps": c["W"] + c["S"] + c["D"]}
    return {"num_stable_steps": c["S"]}


def _min_lr(c) -> dict:
    # HF's min_lr is absolute (the spec's eta_min), min_lr_rate a fraction of the base lr.
    if c["rate"]:
        return {"min_lr_rate": c["floor"]}
    return {"min_lr": c["floor"] * c["base"]}


def _cosine_floor(c) -> dict:
    if c["rate"]:
        return {"min_lr_rate": c["floor"]}
    return {"eta_min": c["floor"] * c["base"]}


PEERS = [
    Peer("ConstantLR",
         config(factor=FACTOR, total_iters=st.integers(1, 50)),
         ({"base": 0.1, "factor": 0.5, "total_iters": 5},
          {"base": 1.0, "factor": 1.0, "total_iters": 3}),
         lambda c: constant(c["factor"], c["total_iters"]),
         lambda opt, c: tlr.ConstantLR(opt, c["factor"], c["total_iters"]),
         lambda c: c["total_iters"] + 10, PRODUCT),
    Peer("StepLR",
         config(step_size=st.integers(1, 30), gamma=st.floats(0.05, 2.0)),
         ({"base": 0.1, "step_size": 1, "gamma": 0.5}, {"base": 1.0, "step_size": 7, "gamma": 0.1}),
         lambda c: step(c["step_size"], c["gamma"]),
         lambda opt, c: tlr.StepLR(opt, c["step_size"], c["gamma"]),
         lambda c: 8 * c["step_size"] + 3, PRODUCT),
    Peer("MultiStepLR",
         config(milestones=st.lists(st.integers(1, 100), max_size=6),
                gamma=st.floats(0.05, 2.0)),
         # A milestone listed k times multiplies by gamma**k (torch counts them with a Counter).
         ({"base": 0.1, "milestones": [20, 3, 3, 7, 20, 20], "gamma": 0.5},
          {"base": 1.0, "milestones": [1], "gamma": 0.1}),
         lambda c: multistep(c["milestones"], c["gamma"]),
         lambda opt, c: tlr.MultiStepLR(opt, c["milestones"], c["gamma"]),
         lambda c: max(c["milestones"], default=0) + 10, PRODUCT),
    Peer("ExponentialLR",
         config(gamma=st.floats(0.9, 1.05)),
         ({"base": 0.1, "gamma": 0.95}, {"base": 1.0, "gamma": 1.0}),
         lambda c: exponential(c["gamma"]),
         lambda opt, c: tlr.ExponentialLR(opt, c["gamma"]),
         lambda c: 300, PRODUCT),
    # eta_min = 0 passes through 0 at T_max, 3 T_max, ... (cos(pi) = -1 exactly on both sides)
    Peer("CosineAnnealingLR",
         config(T_max=st.integers(1, 100), eta=st.just(0.0) | FRACTION),
         ({"base": 0.1, "T_max": 10, "eta": 0.0}, {"base": 1.0, "T_max": 1, "eta": 0.0},
          {"base": 0.5, "T_max": 37, "eta": 0.2}),
         lambda c: cosine(c["T_max"], c["eta"] * c["base"]),
         lambda opt, c: tlr.CosineAnnealingLR(opt, c["T_max"], c["eta"] * c["base"]),
         lambda c: 3 * c["T_max"] + 2, RECURSIVE),
    Peer("CosineAnnealingWarmRestarts",
         config(T_0=st.integers(1, 20), T_mult=st.sampled_from([1, 2, 3]), eta=FRACTION),
         # T_0 = 1, T_mult = 3 reaches the restart at t = 121, where torch's own epoch formula
         # rounds log_3(243) down (see test_warm_restarts_epoch_formula_quirk); the loop is exact.
         ({"base": 0.1, "T_0": 10, "T_mult": 1, "eta": 0.0},
          {"base": 1.0, "T_0": 1, "T_mult": 3, "eta": 0.0},
          {"base": 0.3, "T_0": 5, "T_mult": 2, "eta": 0.1}),
         lambda c: cosine_restarts(c["T_0"], c["T_mult"], c["eta"] * c["base"]),
         lambda opt, c: tlr.CosineAnnealingWarmRestarts(opt, c["T_0"], c["T_mult"],
                                                        c["eta"] * c["base"]),
         lambda c: (130 if c["T_0"] == 1 and c["T_mult"] == 3 else
                    c["T_0"] * (1 + c["T_mult"] + c["T_mult"] ** 2) + 2), CLOSED),
    Peer("CyclicLR",
         config(low=st.floats(1e-4, 0.1), high=st.floats(0.01, 1.0),
                up=st.integers(1, 30), down=st.none() | st.integers(1, 30),
                mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
                gamma=st.floats(0.95, 1.0)),
         ({"base": 0.1, "low": 0.01, "high": 0.1, "up": 4, "down": None, "mode": "triangular",
           "gamma": 1.0},
          {"base": 0.1, "low": 0.01, "high": 0.1, "up": 3, "down": 5, "mode": "triangular2",
           "gamma": 1.0},
          {"base": 0.1, "low": 0.001, "high": 0.1, "up": 1, "down": 1, "mode": "exp_range",
           "gamma": 0.99}),
         lambda c: cyclic(c["low"], c["high"], c["up"], c["down"], c["mode"], c["gamma"]),
         # SGD here has no momentum to cycle.
         lambda opt, c: tlr.CyclicLR(opt, c["low"], c["high"], c["up"], c["down"], c["mode"],
                                     c["gamma"], cycle_momentum=False),
         lambda c: 3 * (c["up"] + (c["down"] or c["up"])) + 2, CLOSED),
    # torch raises past total_steps, so the loop gives t = 0..total_steps; far away the spec
    # holds the last value (cyclic.py), which peer_closed_form compares against.
    Peer("OneCycleLR",
         config(max_lr=st.floats(1e-3, 1.0), total_steps=st.integers(3, 300),
                pct_start=st.floats(0.05, 0.5), anneal=st.sampled_from(["cos", "linear"]),
                div=st.floats(2.0, 100.0), final_div=st.sampled_from([1e4, 1e2, 1e6]),
                three_phase=st.booleans()).filter(_one_cycle_valid),
         ({"base": 0.1, "max_lr": 0.1, "total_steps": 100, "pct_start": 0.3, "anneal": "cos",
           "div": 25.0, "final_div": 1e4, "three_phase": False},
          {"base": 0.1, "max_lr": 0.1, "total_steps": 100, "pct_start": 0.25, "anneal": "linear",
           "div": 25.0, "final_div": 1e4, "three_phase": True},
          {"base": 0.1, "max_lr": 1.0, "total_steps": 7, "pct_start": 0.3, "anneal": "cos",
           "div": 10.0, "final_div": 1e4, "three_phase": True}),
         _one_cycle,
         lambda opt, c: tlr.OneCycleLR(opt, c["max_lr"], c["total_steps"], pct_start=c["pct_start"],
                                       anneal_strategy=c["anneal"], cycle_momentum=False,
                                       div_factor=c["div"], final_div_factor=c["final_div"],
                                       three_phase=c["three_phase"]),
         lambda c: c["total_steps"] + 1, CLOSED),
    # end_factor = 0 reaches 0 at total_iters, where torch's ratio leaves a 1e-16 residue.
    Peer("LinearLR",
         config(start=FACTOR, end=st.just(0.0) | FRACTION, total_iters=st.integers(1, 100)),
         ({"base": 0.1, "start": 0.3, "end": 0.0, "total_iters": 7},
          {"base": 1.0, "start": 1.0 / 3, "end": 1.0, "total_iters": 5}),
         lambda c: linear(c["start"], c["end"], c["total_iters"]),
         lambda opt, c: tlr.LinearLR(opt, c["start"], c["end"], c["total_iters"]),
         lambda c: c["total_iters"] + 20, RECURSIVE, THROUGH_ZERO),
    Peer("PolynomialLR",
         config(total_iters=st.integers(1, 100), power=st.floats(0.5, 4.0)),
         ({"base": 0.1, "total_iters": 10, "power": 1.0}, {"base": 1.0, "total_iters": 1,
                                                          "power": 2.0}),
         lambda c: polynomial(c["total_iters"], c["power"]),
         lambda opt, c: tlr.PolynomialLR(opt, c["total_iters"], c["power"]),
         lambda c: c["total_iters"] + 20, RECURSIVE),
    # The usual torch warmup: LinearLR, then CosineAnnealingLR from the milestone on. The
    # milestone need not equal LinearLR's total_iters.
    Peer("SequentialLR(LinearLR, CosineAnnealingLR)",
         config(start=FACTOR, W=st.integers(1, 30), M=st.integers(1, 40),
                T_max=st.integers(1, 60), eta=st.just(0.0) | FRACTION),
         ({"base": 0.1, "start": 0.1, "W": 10, "M": 10, "T_max": 50, "eta": 0.0},
          {"base": 1.0, "start": 0.5, "W": 10, "M": 4, "T_max": 5, "eta": 0.1}),
         lambda c: sequential([linear(c["start"], 1.0, c["W"]),
                               cosine(c["T_max"], c["eta"] * c["base"])], [c["M"]]),
         lambda opt, c: tlr.SequentialLR(opt, [
             tlr.LinearLR(opt, c["start"], 1.0, c["W"]),
             tlr.CosineAnnealingLR(opt, c["T_max"], c["eta"] * c["base"])], [c["M"]]),
         lambda c: c["M"] + 3 * c["T_max"] + 2, RECURSIVE),
    Peer("SequentialLR(ConstantLR, ExponentialLR, PolynomialLR)",
         config(factor=FACTOR, k=st.integers(1, 20), gamma=st.floats(0.8, 1.0),
                M1=st.integers(1, 30), gap=st.integers(1, 30), T=st.integers(1, 40),
                power=st.floats(0.5, 3.0)),
         ({"base": 0.1, "factor": 0.25, "k": 5, "gamma": 0.9, "M1": 8, "gap": 10, "T": 20,
           "power": 2.0},),
         lambda c: sequential([constant(c["factor"], c["k"]), exponential(c["gamma"]),
                               polynomial(c["T"], c["power"])], [c["M1"], c["M1"] + c["gap"]]),
         lambda opt, c: tlr.SequentialLR(opt, [
             tlr.ConstantLR(opt, c["factor"], c["k"]), tlr.ExponentialLR(opt, c["gamma"]),
             tlr.PolynomialLR(opt, c["T"], c["power"])], [c["M1"], c["M1"] + c["gap"]]),
         lambda c: c["M1"] + c["gap"] + c["T"] + 10, RECURSIVE),
    # Restarted at the milestone by get_lr (it has no closed form), from T_cur = 0.
    Peer("SequentialLR(LinearLR, CosineAnnealingWarmRestarts)",
         config(start=FACTOR, W=st.integers(1, 20), T_0=st.integers(1, 10),
                T_mult=st.sampled_from([1, 2, 3]), eta=FRACTION),
         ({"base": 0.1, "start": 0.2, "W": 5, "T_0": 4, "T_mult": 2, "eta": 0.01},),
         lambda c: sequential([linear(c["start"], 1.0, c["W"]),
                               cosine_restarts(c["T_0"], c["T_mult"], c["eta"] * c["base"])],
                              [c["W"]]),
         lambda opt, c: tlr.SequentialLR(opt, [
             tlr.LinearLR(opt, c["start"], 1.0, c["W"]),
             tlr.CosineAnnealingWarmRestarts(opt, c["T_0"], c["T_mult"], c["eta"] * c["base"])],
             [c["W"]]),
         lambda c: c["W"] + c["T_0"] * (1 + c["T_mult"] + c["T_mult"] ** 2) + 2, RECURSIVE),
    Peer("ChainedScheduler(StepLR, ExponentialLR)",
         config(step_size=st.integers(1, 30), g1=st.floats(0.1, 1.0), g2=st.floats(0.95, 1.0)),
         ({"base": 0.1, "step_size": 3, "g1": 0.5, "g2": 0.99},),
         lambda c: chained([step(c["step_size"], c["g1"]), exponential(c["g2"])]),
         lambda opt, c: tlr.ChainedScheduler([tlr.StepLR(opt, c["step_size"], c["g1"]),
                                              tlr.ExponentialLR(opt, c["g2"])]),
         lambda c: 200, PRODUCT),
    Peer("ChainedScheduler(ConstantLR, MultiStepLR)",
         config(factor=FACTOR, k=st.integers(1, 30),
                milestones=st.lists(st.integers(1, 40), max_size=4), gamma=st.floats(0.1, 1.0)),
         # The constant phase ends on a milestone listed twice.
         ({"base": 0.1, "factor": 0.5, "k": 10, "milestones": [4, 10, 10], "gamma": 0.3},),
         lambda c: chained([constant(c["factor"], c["k"]), multistep(c["milestones"], c["gamma"])]),
         lambda opt, c: tlr.ChainedScheduler([tlr.ConstantLR(opt, c["factor"], c["k"]),
                                              tlr.MultiStepLR(opt, c["milestones"], c["gamma"])]),
         lambda c: max([c["k"], *c["milestones"]]) + 10, PRODUCT),
    # A linear warmup chained onto a cosine: the product of their factors. It holds past T_max
    # because the warmup is over (factor 1) by then: see test_chained_cosine_past_T_max_quirk.
    Peer("ChainedScheduler(LinearLR, CosineAnnealingLR)",
         config(start=FACTOR, W=st.integers(1, 30), extra=st.integers(1, 60)),
         ({"base": 0.1, "start": 0.1, "W": 5, "extra": 15},),
         lambda c: chained([linear(c["start"], 1.0, c["W"]), cosine(c["W"] + c["extra"])]),
         lambda opt, c: tlr.ChainedScheduler([tlr.LinearLR(opt, c["start"], 1.0, c["W"]),
                                              tlr.CosineAnnealingLR(opt, c["W"] + c["extra"])]),
         lambda c: 3 * (c["W"] + c["extra"]) + 2, RECURSIVE),
    # A torch scheduler stepped once per epoch of n batches.
    Peer("StepLR per epoch",
         config(step_size=st.integers(1, 10), gamma=st.floats(0.1, 1.0)),
         ({"base": 0.1, "step_size": 3, "gamma": 0.5},),
         lambda c: every(step(c["step_size"], c["gamma"]), 4),
         lambda opt, c: tlr.StepLR(opt, c["step_size"], c["gamma"]),
         lambda c: 20 * c["step_size"] + 2, PRODUCT, per=4),
    Peer("SequentialLR(LinearLR, CosineAnnealingLR) per epoch",
         config(W=st.integers(1, 10), T_max=st.integers(1, 20)),
         ({"base": 0.1, "W": 3, "T_max": 10},),
         lambda c: every(sequential([linear(0.1, 1.0, c["W"]), cosine(c["T_max"])], [c["W"]]), 3),
         lambda opt, c: tlr.SequentialLR(opt, [tlr.LinearLR(opt, 0.1, 1.0, c["W"]),
                                               tlr.CosineAnnealingLR(opt, c["T_max"])], [c["W"]]),
         lambda c: 3 * (c["W"] + 2 * c["T_max"]) + 2, RECURSIVE, per=3),
    # HF's schedules are LambdaLR closed forms.
    Peer("hf.get_constant_schedule_with_warmup",
         config(W=st.integers(0, 50)),
         ({"base": 0.1, "W": 0}, {"base": 0.1, "W": 1}, {"base": 1.0, "W": 10}),
         lambda c: warmup(constant(), c["W"]),
         lambda opt, c: hf.get_constant_schedule_with_warmup(opt, c["W"]),
         lambda c: c["W"] + 10, CLOSED),
    Peer("hf.get_linear_schedule_with_warmup",
         config(W=st.integers(0, 50), decay=st.integers(1, 200)),
         ({"base": 0.1, "W": 10, "decay": 90}, {"base": 1.0, "W": 0, "decay": 1}),
         lambda c: warmup(linear(1.0, 0.0, c["decay"]), c["W"]),
         lambda opt, c: hf.get_linear_schedule_with_warmup(opt, c["W"], c["W"] + c["decay"]),
         lambda c: c["W"] + c["decay"] + 20, CLOSED),
    # num_cycles > 0.5 takes the cosine through 0 inside the run, and HF keeps going past T.
    Peer("hf.get_cosine_schedule_with_warmup",
         config(W=st.integers(0, 50), decay=st.integers(1, 200),
                cycles=st.just(0.5) | st.floats(0.1, 3.0)),
         ({"base": 0.1, "W": 10, "decay": 90, "cycles": 0.5},
          {"base": 1.0, "W": 3, "decay": 40, "cycles": 1.5}),
         lambda c: warmup(cosine(c["decay"], num_cycles=c["cycles"]), c["W"]),
         lambda opt, c: hf.get_cosine_schedule_with_warmup(opt, c["W"], c["W"] + c["decay"],
                                                           c["cycles"]),
         lambda c: c["W"] + c["decay"] + 20, CLOSED),
    Peer("hf.get_cosine_with_hard_restarts_schedule_with_warmup",
         config(W=st.integers(0, 50), decay=st.integers(1, 200),
                cycles=st.integers(1, 5) | st.floats(0.5, 4.0)),
         ({"base": 0.1, "W": 10, "decay": 90, "cycles": 3},
          {"base": 1.0, "W": 0, "decay": 12, "cycles": 4}),
         lambda c: warmup(cosine_restarts(c["decay"], num_cycles=c["cycles"]), c["W"]),
         lambda opt, c: hf.get_cosine_with_hard_restarts_schedule_with_warmup(
             opt, c["W"], c["W"] + c["decay"], c["cycles"]),
         lambda c: c["W"] + c["decay"] + 20, CLOSED),
    Peer("hf.get_polynomial_decay_schedule_with_warmup",
         config(W=st.integers(0, 50), decay=st.integers(1, 200), power=st.floats(0.5, 4.0),
                end=st.just(0.0) | st.floats(0.0, 0.99)),
         ({"base": 0.1, "W": 10, "decay": 90, "power": 1.0, "end": 1e-6},
          {"base": 1.0, "W": 0, "decay": 5, "power": 2.0, "end": 0.0}),
         lambda c: warmup(polynomial(c["decay"], c["power"], c["end"] * c["base"]), c["W"]),
         lambda opt, c: hf.get_polynomial_decay_schedule_with_warmup(
             opt, c["W"], c["W"] + c["decay"], c["end"] * c["base"], c["power"]),
         lambda c: c["W"] + c["decay"] + 20, CLOSED),
    Peer("hf.get_inverse_sqrt_schedule",
         config(W=st.integers(0, 50), timescale=st.none() | st.integers(1, 100)),
         ({"base": 0.1, "W": 10, "timescale": None}, {"base": 0.1, "W": 0, "timescale": None},
          {"base": 1.0, "W": 20, "timescale": 5}),
         lambda c: inverse_sqrt(c["W"], c["timescale"]),
         lambda opt, c: hf.get_inverse_sqrt_schedule(opt, c["W"], c["timescale"]),
         lambda c: c["W"] + 100, CLOSED),
    Peer("hf.get_wsd_schedule",
         config(W=st.integers(0, 30), S=st.integers(0, 30), D=st.integers(0, 30),
                by_training=st.booleans(), warm=SHAPES, decay=SHAPES,
                ratio=st.just(0.0) | FRACTION, cycles=st.just(0.5) | st.floats(0.1, 2.0)),
         tuple({"base": 0.1, "W": 5, "S": 7, "D": 9, "by_training": True, "warm": w, "decay": d,
                "ratio": 0.1, "cycles": 0.5}
               for w in ("linear", "cosine", "1-sqrt") for d in ("linear", "cosine", "1-sqrt")) +
         ({"base": 1.0, "W": 0, "S": 0, "D": 10, "by_training": False, "warm": "linear",
           "decay": "cosine", "ratio": 0.0, "cycles": 1.5},),
         lambda c: wsd(c["W"], c["D"], **_wsd_lengths(c), warmup_type=c["warm"],
                       decay_type=c["decay"], min_lr_ratio=c["ratio"], num_cycles=c["cycles"]),
         lambda opt, c: hf.get_wsd_schedule(opt, c["W"], c["D"], **_wsd_lengths(c),
                                            warmup_type=c["warm"], decay_type=c["decay"],
                                            min_lr_ratio=c["ratio"], num_cycles=c["cycles"]),
         lambda c: c["W"] + c["S"] + c["D"] + 10, CLOSED),
    Peer("hf.get_cosine_with_min_lr_schedule_with_warmup",
         config(W=st.integers(0, 50), decay=st.integers(1, 200),
                cycles=st.just(0.5) | st.floats(0.1, 3.0), rate=st.booleans(),
                floor=st.just(0.0) | FRACTION),
         ({"base": 0.1, "W": 10, "decay": 90, "cycles": 0.5, "rate": False, "floor": 0.1},
          {"base": 0.1, "W": 10, "decay": 90, "cycles": 0.5, "rate": True, "floor": 0.1}),
         lambda c: warmup(cosine(c["decay"], num_cycles=c["cycles"], **_cosine_floor(c)),
                          c["W"]),
         lambda opt, c: hf.get_cosine_with_min_lr_schedule_with_warmup(
             opt, c["W"], c["W"] + c["decay"], c["cycles"], **_min_lr(c)),
         lambda c: c["W"] + c["decay"] + 20, CLOSED),
]


def peer_lrs(peer: Callable[[torch.optim.Optimizer], tlr.LRScheduler], base: float, n: int,
             per: int = 1):
    """The lr the peer hands each of the first ``n`` steps of a real optimizer, the peer
    stepped after every ``per``-th optimizer step (once per epoch of ``per`` batches)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = peer(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for k in range(1, n):  # no step past the last value read: OneCycleLR raises there
        opt.step()
        if k % per == 0:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return torch.tensor(lrs, dtype=torch.float64)


def peer_closed_form(sched: tlr.LRScheduler, t: int) -> float | None:
    """The peer's own closed form at ``t``, for steps no loop reaches (``None`` where Python's
    float power raises OverflowError, see test_far_overflow_quirks). Mutates ``sched``."""
    try:
        return _closed_form(sched, t)
    except OverflowError:
        return None


def _closed_form(sched: tlr.LRScheduler, t: int) -> float:
    base = sched.optimizer.param_groups[0]["initial_lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_lr outside step(), and step(epoch), both warn
        if isinstance(sched, tlr.SequentialLR):
            i = bisect_right(sched._milestones, t)
            return _closed_form(sched._schedulers[i], t - ([0, *sched._milestones])[i])
        if isinstance(sched, tlr.ChainedScheduler):  # rows here chain factor schedules only
            return base * math.prod(_closed_form(s, t) / base for s in sched._schedulers)
        if isinstance(sched, tlr.LambdaLR):
            return base * sched.lr_lambdas[0](t)
        if isinstance(sched, tlr.CosineAnnealingWarmRestarts):
            sched.step(t)
            return sched.optimizer.param_groups[0]["lr"]
        if isinstance(sched, tlr.OneCycleLR):
            t = min(t, sched.total_steps)  # torch raises beyond; the spec holds this value
        sched.last_epoch = t
        if hasattr(sched, "_get_closed_form_lr"):
            return sched._get_closed_form_lr()[0]
        return sched.get_lr()[0]  # CyclicLR and OneCycleLR: get_lr is their closed form


def check(case: Peer, c: dict) -> None:
    base = c["base"]
    spec = case.spec(c)
    n = case.steps(c)
    expected = peer_lrs(lambda opt: case.peer(opt, c), base, n, case.per)
    assert_close(spec.lr(torch.arange(n), base), expected, case.rtol, case.atol * base,
                 what=f"{spec!r} vs {case.id}, base {base}")
    if case.far:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
        sched = case.peer(opt, c)
        far = [(t, peer_closed_form(sched, t // case.per)) for t in FAR]
        far = [(t, lr) for t, lr in far if lr is not None]
        if far:
            t, expected = zip(*far)
            # The row's tolerance: for a recursive peer the closed form stands in for a loop
            # that is itself only within RECURSIVE of it.
            expected = torch.tensor(expected, dtype=torch.float64)
            assert_close(spec.lr(torch.tensor(t), base), expected, case.rtol, case.atol * base,
                         what=f"{spec!r} vs {case.id} at t = {t}")


EXAMPLES = [pytest.param(case, c, id=f"{case.id}-{i}")
            for case in PEERS for i, c in enumerate(case.examples)]


@pytest.mark.parametrize("case, c", EXAMPLES)
def test_matches_peer(case, c):
    check(case, c)


@pytest.mark.parametrize("case", PEERS, ids=[case.id for case in PEERS])
@SETTINGS
@given(data=st.data())
def test_matches_peer_randomized(case, data):
    check(case, data.draw(case.configs, label="config"))


@pytest.mark.parametrize("case, c", EXAMPLES)
def test_lr_at_zero_is_peer_initial_lr(case, c):
    # The group lr right after the peer is built is what the first step uses: lr(0), exactly.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c["base"])
    case.peer(opt, c)
    assert case.spec(c).lr(0, c["base"]).item() == opt.param_groups[0]["lr"]


def test_every_factory_has_a_peer():
    names = {case.spec(c).factory for case in PEERS for c in case.examples}
    names |= {"exponential"}  # the continuous forms: test_exponential_closed_form below
    # The momentum factories follow torch's group momentum, not its lr: their peer test is
    # test_scheduled_hyperparameters.py::test_momentum_factories_follow_torch.
    names |= {"one_cycle_momentum", "cyclic_momentum"}
    # plateau follows the metrics reported to it, not the step count: its peer test (random
    # metric sequences against torch's ReduceLROnPlateau) is tests/test_plateau.py.
    names |= {"plateau"}
    assert names >= set(FACTORIES), set(FACTORIES) - names


@SETTINGS
@given(base=BASE, gamma=st.floats(0.5, 1.0), rate=st.floats(0.0, 0.2),
       decay_steps=st.integers(1, 50), staircase=st.booleans())
def test_exponential_closed_form(base, gamma, rate, decay_steps, staircase):
    """``exponential(rate=k)`` and the staircase forms have no torch peer: the closed form,
    written here in plain Python: base * gamma ** e or base * exp(-rate * e), with
    e = t / decay_steps, floored for a staircase."""

    def exponent(t):
        return t // decay_steps if staircase else t / decay_steps

    t = [*range(301), *FAR]
    by_gamma = exponential(gamma, decay_steps=decay_steps, staircase=staircase)
    by_rate = exponential(rate=rate, decay_steps=decay_steps, staircase=staircase)
    expected = torch.tensor([base * gamma ** exponent(x) for x in t], dtype=torch.float64)
    assert_close(by_gamma.lr(torch.tensor(t), base), expected, CLOSED, what=repr(by_gamma))
    expected = torch.tensor([base * math.exp(-rate * exponent(x)) for x in t], dtype=torch.float64)
    assert_close(by_rate.lr(torch.tensor(t), base), expected, CLOSED, what=repr(by_rate))


def test_constant_with_no_iterations_follows_torch_closed_form():
    """Quirk: torch's ConstantLR(total_iters=0) multiplies by ``factor`` at t = 0 (its first
    get_lr branch) and never undoes it, since ``last_epoch == total_iters`` is never seen again;
    its closed form gives the base lr for every t >= 0 = total_iters. The spec follows the
    closed form and the documented meaning ("factor for t < total_iters")."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    loop = peer_lrs(lambda opt: tlr.ConstantLR(opt, 0.5, 0), 0.1, 5)
    assert loop.tolist() == [0.05] * 5
    sched = tlr.ConstantLR(opt, 0.5, 0)
    assert constant(0.5, 0).lr(torch.arange(5), 0.1).tolist() == [0.1] * 5
    assert peer_closed_form(sched, 3) == 0.1


def test_warm_restarts_epoch_formula_quirk():
    """Quirk: CosineAnnealingWarmRestarts.step(epoch) finds the cycle with a float
    ``int(math.log(...))``, which rounds log_3(243) = 5 down to 4 for T_0 = 1, T_mult = 3, so at
    the restart t = 121 it reports T_cur = T_i (the lr floor) instead of T_cur = 0 (the base lr).
    The loop (``step()``, counting T_cur up) restarts correctly, and the spec agrees with it."""
    base = 1.0
    loop = peer_lrs(lambda opt: tlr.CosineAnnealingWarmRestarts(opt, 1, 3), base, 123)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    by_epoch = peer_closed_form(tlr.CosineAnnealingWarmRestarts(opt, 1, 3), 121)
    assert loop[121].item() == base and by_epoch == 0.0
    assert cosine_restarts(1, 3).lr(121, base).item() == base


def test_far_overflow_quirks():
    """Quirk: where a power overflows float64, Python raises OverflowError and so do torch's
    peers; the spec gives the IEEE value. StepLR with gamma > 1 grows to inf; CyclicLR's
    triangular2 amplitude 1 / 2 ** (cycle - 1) raises after ~1024 cycles in torch, while the
    spec's amplitude goes to 0 and the lr to its floor base_lr, the mathematical limit."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert peer_closed_form(tlr.StepLR(opt, 3, 1.5), 10**7) is None
    assert step(3, 1.5).lr(10**7, 0.1).item() == math.inf
    sched = tlr.CyclicLR(opt, 0.01, 0.1, 3, mode="triangular2", cycle_momentum=False)
    assert peer_closed_form(sched, 10**7) is None
    assert cyclic(0.01, 0.1, 3, mode="triangular2").lr(torch.tensor(FAR)).tolist() == [0.01] * 2


def test_chained_cosine_past_T_max_quirk():
    """Quirk: past T_max, CosineAnnealingLR's recursion restarts from an increment computed from
    its own base lr, ``lr + base * (1 - cos(pi / T_max)) / 2``, not from the lr it is handed, so
    chained after a factor that is not 1 there (LinearLR ending at 0.5) torch drops that factor
    at t = T_max + 1. The spec keeps the product, torch's sequence up to T_max."""
    base, T = 0.1, 20
    loop = peer_lrs(lambda opt: tlr.ChainedScheduler([tlr.CosineAnnealingLR(opt, T),
                                                      tlr.LinearLR(opt, 0.1, 0.5, 5)]), base, 2 * T)
    spec = chained([cosine(T), linear(0.1, 0.5, 5)])
    assert_close(spec.lr(torch.arange(T + 1), base), loop[:T + 1], RECURSIVE)
    increment = base * (1 - math.cos(math.pi / T)) / 2
    assert loop[T + 1].item() == pytest.approx(increment, rel=1e-12)
    assert spec.lr(T + 1, base).item() == pytest.approx(0.5 * increment, rel=1e-12)
