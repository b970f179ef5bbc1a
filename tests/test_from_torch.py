"""from_torch and torch_position against torch's own schedulers, run on a real optimizer.

The expected sequence is what a training loop sees: ``group["lr"]`` read before each
``opt.step()``, with ``opt.step(); sched.step()`` in between, so entry ``t`` is ``lr(t)``. The
spec is evaluated on the group's ``initial_lr``, the base lr the optimizer classes take over.

Tolerance: relative 1e-7, as for the recursive peers in test_schedules_peers.py (torch's
CosineAnnealingLR, LinearLR and PolynomialLR step a ratio of their closed form), plus 1e-12 of
the base lr absolute for the lrs that pass through 0.
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from optimizers import ANY
from schedule_table import SCHEDULES
from torch.optim import lr_scheduler as tlr

from fused_lrs.schedules import (
    chained,
    constant,
    cosine,
    every,
    from_torch,
    linear,
    plateau,
    sequential,
    step,
    torch_position,
)

# These tests convert the lr alone; the warning that the cycled momentum stays behind is
# itself tested in test_migrate.py.
pytestmark = pytest.mark.filterwarnings("ignore:from_torch.*cycles the momentum:UserWarning")

BASE = 0.1
STEPS = 60
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)


def carrier(groups=1):
    """A torch optimizer for the schedulers to drive (ANY's peer: it has a momentum-like
    coefficient, which OneCycleLR and CyclicLR cycle by default)."""
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
    return ANY.peer(params, lr=BASE)


def record(opt, sched, steps, every=1):
    """lr before each of ``steps`` optimizer steps; the scheduler steps after every ``every``."""
    lrs = []
    for k in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (k + 1) % every == 0:
            try:
                sched.step()
            except ValueError as e:  # OneCycleLR refuses to step past total_steps
                assert "Tried to step" in str(e)
                break
    return torch.tensor(lrs, dtype=torch.float64)


def check(spec, opt, expected, start=0):
    t = torch.arange(start, start + len(expected))
    base = opt.param_groups[0]["initial_lr"]
    assert_close(spec.lr(t, base), expected, rtol=1e-7, atol=1e-12 * base, what=repr(spec))


def build(opt, made):
    """A torch scheduler from a drawn ``(class, kwargs)``, composites from their members."""
    cls, kwargs = made
    if cls is tlr.SequentialLR:
        members = [build(opt, m) for m in kwargs["schedulers"]]
        return tlr.SequentialLR(opt, members, kwargs["milestones"])
    if cls is tlr.ChainedScheduler:
        return tlr.ChainedScheduler([build(opt, m) for m in kwargs["schedulers"]])
    return cls(opt, **kwargs)


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False)


# One strategy per built-in scheduler, drawn as (class, kwargs) so a failure prints its config.
LEAVES = {
    tlr.StepLR: st.fixed_dictionaries({"step_size": st.integers(1, 20),
                                       "gamma": floats(0.1, 0.99)}),
    tlr.MultiStepLR: st.fixed_dictionaries({
        "milestones": st.lists(st.integers(1, 70), min_size=1, max_size=4),  # repeats count
        "gamma": floats(0.1, 0.99)}),
    tlr.ConstantLR: st.fixed_dictionaries({"factor": floats(0.05, 1.0),
                                           "total_iters": st.integers(0, 70)}),
    tlr.ExponentialLR: st.fixed_dictionaries({"gamma": floats(0.8, 1.1)}),
    tlr.CosineAnnealingLR: st.fixed_dictionaries({
        "T_max": st.integers(1, 100), "eta_min": st.just(0.0) | floats(1e-3, 0.05)}),
    tlr.CosineAnnealingWarmRestarts: st.fixed_dictionaries({
        "T_0": st.integers(1, 20), "T_mult": st.integers(1, 3),
        "eta_min": st.just(0.0) | floats(1e-3, 0.05)}),
    tlr.CyclicLR: st.fixed_dictionaries({
        "base_lr": floats(1e-3, 0.05), "max_lr": floats(0.06, 0.5),
        "step_size_up": st.integers(1, 20), "step_size_down": st.none() | st.integers(1, 20),
        "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
        "gamma": floats(0.9, 1.0)}),
    tlr.OneCycleLR: st.fixed_dictionaries({
        "max_lr": floats(0.01, 1.0), "total_steps": st.integers(20, 100),
        "pct_start": floats(0.1, 0.45), "anneal_strategy": st.sampled_from(["cos", "linear"]),
        "div_factor": floats(5.0, 50.0), "final_div_factor": floats(10.0, 1e4),
        "three_phase": st.booleans()}),
    tlr.LinearLR: st.fixed_dictionaries({
        "start_factor": floats(0.05, 1.0), "end_factor": floats(0.0, 1.0),
        "total_iters": st.integers(1, 70)}),
    tlr.PolynomialLR: st.fixed_dictionaries({"total_iters": st.integers(1, 70),
                                             "power": floats(0.5, 3.0)}),
}
# Members whose effect in a ChainedScheduler is a plain factor (see convert.py); cosine stays
# within T_max, past which torch's recursion adds an increment of its own base lr.
FACTORS = {cls: LEAVES[cls] for cls in (tlr.StepLR, tlr.MultiStepLR, tlr.ConstantLR,
                                        tlr.ExponentialLR, tlr.LinearLR, tlr.PolynomialLR)}
FACTORS[tlr.CosineAnnealingLR] = st.fixed_dictionaries({"T_max": st.integers(STEPS, 200),
                                                        "eta_min": st.just(0.0)})


def made(table):
    return st.one_of(*(st.tuples(st.just(cls), kw) for cls, kw in table.items()))


@st.composite
def sequentials(draw):
    # OneCycleLR rewrites initial_lr, so it may only come first (tested apart below).
    first = draw(made(LEAVES))
    rest = {c: s for c, s in LEAVES.items() if c is not tlr.OneCycleLR}
    members = [first] + draw(st.lists(made(rest), min_size=1, max_size=2))
    milestones = sorted(draw(st.sets(st.integers(1, STEPS - 1), min_size=len(members) - 1,
                                     max_size=len(members) - 1)))
    return tlr.SequentialLR, {"schedulers": members, "milestones": milestones}


CHAINS = st.tuples(st.just(tlr.ChainedScheduler),
                   st.fixed_dictionaries({"schedulers": st.lists(made(FACTORS), min_size=1,
                                                                 max_size=3)}))


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_matches_torch(cls, data):
    opt = carrier()
    sched = build(opt, (cls, data.draw(LEAVES[cls], label="kwargs")))
    spec = from_torch(sched)
    assert torch_position(sched) == 0
    check(spec, opt, record(opt, sched, STEPS))
    assert from_torch(sched) == spec  # the spec does not depend on the position


@SETTINGS
@given(made=sequentials())
def test_sequential_matches_torch(made):
    opt = carrier()
    sched = build(opt, made)
    spec = from_torch(sched)
    check(spec, opt, record(opt, sched, STEPS))


@SETTINGS
@given(made=CHAINS)
def test_chained_matches_torch(made):
    opt = carrier()
    sched = build(opt, made)
    spec = from_torch(sched)
    check(spec, opt, record(opt, sched, STEPS))


@SETTINGS
@given(made=made(LEAVES), n=st.integers(2, 5))
def test_every_matches_a_per_epoch_scheduler(made, n):
    opt = carrier()
    sched = build(opt, made)
    spec = from_torch(sched, every=n)
    assert spec == every(from_torch(sched), n)
    check(spec, opt, record(opt, sched, STEPS, every=n))
    assert torch_position(sched, every=n) == sched.last_epoch * n


# Mid-run: a scheduler of the table stepped 17 times converts to the same spec, at position 17.
MID_RUN = [factory for _, factory, _ in SCHEDULES]
MID_IDS = [name for name, _, _ in SCHEDULES]


@pytest.mark.parametrize("make", MID_RUN, ids=MID_IDS)
def test_mid_run(make):
    fresh = from_torch(make(carrier()))
    opt = carrier()
    sched = make(opt)
    record(opt, sched, 17)
    record(opt, sched, 1, every=2)  # one more opt.step() without a scheduler step: 17 done
    spec = from_torch(sched)
    assert spec == fresh
    assert torch_position(sched) == 17
    check(spec, opt, record(opt, sched, 30), start=17)


@pytest.mark.parametrize("make", MID_RUN, ids=MID_IDS)
def test_restored_from_state_dict(make):
    opt = carrier()
    sched = make(opt)
    record(opt, sched, 17)
    record(opt, sched, 1, every=2)
    opt2 = carrier()
    opt2.load_state_dict(opt.state_dict())
    restored = make(opt2)
    restored.load_state_dict(sched.state_dict())
    assert torch_position(restored) == 17
    assert from_torch(restored) == from_torch(sched)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("make", MID_RUN, ids=MID_IDS)
def test_triton_twin_of_converted(make, n):
    spec = from_torch(make(carrier()), every=n)
    t = torch.arange(0, 200, dtype=torch.int64, device=KERNEL_DEVICE)
    assert_close(spec.lr_triton(t, BASE), spec.lr(t, BASE), rtol=1e-9, atol=1e-12 * BASE,
                 what=repr(spec))


def test_fresh_spec_examples():
    opt = carrier()
    seq = tlr.SequentialLR(opt, [tlr.LinearLR(opt, 0.1, 1.0, 5), tlr.CosineAnnealingLR(opt, 20)],
                           [5])
    assert from_torch(seq) == sequential([linear(0.1, 1.0, 5), cosine(20)], [5])
    one = tlr.OneCycleLR(carrier(), max_lr=0.01, total_steps=100)  # decimals recovered exactly
    assert repr(from_torch(one)).startswith("one_cycle(max_lr=0.01, total_steps=100, "
                                            "pct_start=0.3, anneal_strategy='cos', "
                                            "div_factor=25.0, final_div_factor=10000.0")
    opt = carrier()
    chain = tlr.ChainedScheduler([tlr.StepLR(opt, 3), tlr.ConstantLR(opt, 0.5, 4)])
    assert from_torch(chain) == chained([step(3), constant(0.5, 4)])


def test_every_position_and_validation():
    opt = carrier()
    sched = tlr.StepLR(opt, 2)
    record(opt, sched, 3)
    assert torch_position(sched, every=10) == 30
    with pytest.raises(ValueError, match="every"):
        from_torch(sched, every=0)


def test_multiple_groups():
    opt = carrier(groups=2)
    spec = from_torch(tlr.CyclicLR(opt, [0.01, 0.01], [0.1, 0.1], 5))  # equal values are fine
    assert spec.base_lr == 0.01 and spec.max_lr == 0.1
    # values that differ become one per group (their runs: test_migrate.py, test_per_group.py)
    spec = from_torch(tlr.CyclicLR(carrier(groups=2), [0.01, 0.02], 0.1, 5, cycle_momentum=False))
    assert spec.base_lr == (0.01, 0.02) and spec.max_lr == 0.1 and spec.groups == 2
    spec = from_torch(tlr.OneCycleLR(carrier(groups=2), [0.1, 0.2], 50, cycle_momentum=False))
    assert spec.max_lr == (0.1, 0.2) and spec.groups == 2
    spec = from_torch(tlr.ReduceLROnPlateau(carrier(groups=2), "max", min_lr=[0.0, 1e-3]))
    assert spec == plateau("max", min_lr=[0.0, 1e-3])


@pytest.mark.parametrize("name, make", [
    ("LambdaLR", lambda o: tlr.LambdaLR(o, lambda t: 0.5 ** t)),
    ("MultiplicativeLR", lambda o: tlr.MultiplicativeLR(o, lambda t: 0.9)),
])
def test_python_functions_are_refused(name, make):
    with pytest.raises(TypeError, match=f"{name} holds an arbitrary Python function") as e:
        from_torch(make(carrier()))
    assert "GPU kernel" in str(e.value) and "warmup(" in str(e.value) and "wsd(" in str(e.value)


def test_refused_schedulers():
    with pytest.raises(TypeError, match="custom scale_fn"):
        from_torch(tlr.CyclicLR(carrier(), 0.01, 0.1, scale_fn=lambda x: 1.0))

    class MyStep(tlr.StepLR):
        pass

    with pytest.raises(TypeError, match="cannot convert .*MyStep"):
        from_torch(MyStep(carrier(), 3))
    with pytest.raises(TypeError, match="cannot convert builtins.int"):
        from_torch(3)


def test_refused_compositions():
    opt = carrier()
    chain = tlr.ChainedScheduler([tlr.StepLR(opt, 3), tlr.CyclicLR(opt, 0.01, 0.1, 5)])
    with pytest.raises(ValueError, match="member 1 is a CyclicLR, which does not just multiply"):
        from_torch(chain)
    opt = carrier()
    inner = tlr.ChainedScheduler([tlr.StepLR(opt, 3), tlr.ExponentialLR(opt, 0.9)])
    seq = tlr.SequentialLR(opt, [tlr.ConstantLR(opt, 0.5, 2), inner], [4])
    with pytest.raises(ValueError, match="member 1 is a ChainedScheduler"):
        from_torch(seq)
    opt = carrier()
    seq = tlr.SequentialLR(opt, [tlr.StepLR(opt, 3), tlr.OneCycleLR(opt, 0.1, 20)], [4])
    with pytest.raises(ValueError, match="initial_lr"):  # OneCycleLR rewrote the StepLR's base
        from_torch(seq)
    opt = carrier()
    first = tlr.StepLR(opt, 3)
    record(opt, first, 2)
    with pytest.raises(ValueError, match="different positions"):
        from_torch(tlr.ChainedScheduler([first, tlr.ExponentialLR(opt, 0.9)]))
