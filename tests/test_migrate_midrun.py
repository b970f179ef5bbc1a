"""fused_lrs.from_torch of what a torch run holds besides its scheduler's state: an lr written
into the groups by hand, and a position inside an epoch (``every > 1``).

torch's StepLR, MultiStepLR, ExponentialLR, ConstantLR, LinearLR and PolynomialLR (and chains
of them, and a SequentialLR past its last milestone into one) multiply ``group["lr"]`` by a
factor of their step count, so an lr written by hand is what they go on scaling; the fused
optimizer continues it. Elsewhere a written lr raises. The lrs are compared step by step: the
lr torch's optimizer reads (``group["lr"]`` before its step) against the fused ``last_lr``
after its step, rtol 1e-12 (float64: torch's product of factors against the closed form; the
largest difference measured here is 1.1e-15 relative). Whole optimizers are compared with
test_migrate's tolerances.
"""

from __future__ import annotations

import copy

import pytest
import torch
from optimizers import ANY, representatives
from test_migrate import continue_run
from torch.optim import lr_scheduler as tlr

import fused_lrs
from fused_lrs.schedules import torch_position

LRS = (0.1, 0.2)      # the two groups' initial lr
WRITTEN = 0.0123      # what the user writes into group 0


def torch_run(make, steps, every=1, write_at=None, pre_steps=0):
    """ANY's peer with two groups, ``pre_steps`` optimizer steps, then ``make(opt)`` and
    ``steps`` more (the scheduler after every ``every``); ``WRITTEN`` goes into group 0 after
    ``write_at`` of them."""
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in LRS]
    opt = ANY.peer([{"params": [p], "lr": lr} for p, lr in zip(params, LRS)])
    for _ in range(pre_steps):
        step(opt)
    sched = make(opt)
    for k in range(steps):
        if k == write_at:
            opt.param_groups[0]["lr"] = WRITTEN
        step(opt, sched, k, every)
    if write_at == steps:
        opt.param_groups[0]["lr"] = WRITTEN
    return opt, sched


def step(opt, sched=None, k=0, every=1):
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    if sched is not None and (k + 1) % every == 0:
        sched.step()


def assert_same_lrs(opt, sched, fused, start, steps, every=1):
    """Step the torch pair and the fused optimizer ``steps`` times from optimizer step
    ``start``; the lrs each step uses must agree."""
    theirs, ours = [], []
    for k in range(start, start + steps):
        theirs.append([float(g["lr"]) for g in opt.param_groups])
        step(opt, sched, k, every)
        step(fused)
        ours.append(fused.last_lr.tolist())
    theirs = torch.tensor(theirs, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), theirs, rtol=1e-12,
                               atol=0, msg=lambda m: f"{m}\ntorch {theirs}\nfused {ours}")


def take_over(opt, sched, **kwargs):
    """from_torch of a copy: the torch pair goes on as it was."""
    return fused_lrs.from_torch(*copy.deepcopy((opt, sched)), impl="reference", **kwargs)


# (scheduler, optimizer steps before the lr is written, steps before the take-over, every):
# written after the scheduler's last step, or written and then scaled by further steps.
CONTINUED = {
    "StepLR": (lambda o: tlr.StepLR(o, 3, 0.5), 4, 4, 1),
    "StepLR-stepped-since": (lambda o: tlr.StepLR(o, 3, 0.5), 4, 9, 1),
    "MultiStepLR": (lambda o: tlr.MultiStepLR(o, [3, 7, 7, 12], 0.3), 5, 5, 1),
    "ExponentialLR": (lambda o: tlr.ExponentialLR(o, 0.9), 6, 10, 1),
    "ConstantLR": (lambda o: tlr.ConstantLR(o, 0.25, 8), 3, 5, 1),   # x4 at step 8
    "LinearLR": (lambda o: tlr.LinearLR(o, 0.2, 1.0, 10), 4, 4, 1),
    "PolynomialLR": (lambda o: tlr.PolynomialLR(o, 15, 2.0), 5, 7, 1),
    "ChainedScheduler": (lambda o: tlr.ChainedScheduler(
        [tlr.StepLR(o, 4, 0.5), tlr.LinearLR(o, 0.5, 1.0, 6)]), 3, 5, 1),
    "SequentialLR-past-milestone": (lambda o: tlr.SequentialLR(
        o, [tlr.LinearLR(o, 0.1, 1.0, 3), tlr.ExponentialLR(o, 0.8)], [3]), 5, 6, 1),
    "StepLR-every-3-mid-epoch": (lambda o: tlr.StepLR(o, 1, 0.5), 7, 8, 3),
}


@pytest.mark.parametrize("make, write_at, take_at, every", CONTINUED.values(), ids=CONTINUED)
def test_written_lr_continues_as_torch(make, write_at, take_at, every):
    opt, sched = torch_run(make, take_at, every, write_at)
    fused = take_over(opt, sched, every=every)
    # The untouched group keeps its initial_lr as base; the written one gets the base that
    # gives the written lr (scaled since) at this position.
    assert fused.param_groups[1]["lr"] == LRS[1]
    assert fused.param_groups[0]["lr"] != LRS[0]
    assert_same_lrs(opt, sched, fused, take_at, 14, every)


@pytest.mark.parametrize("info, options", representatives())
def test_written_lr_whole_optimizer(info, options):
    def write(opt):
        opt.param_groups[1]["lr"] = 0.003

    continue_run(info, options, lambda o: tlr.MultiStepLR(o, [4, 9, 15], 0.5), before=11,
                 after=12, write=write)


# Schedulers that do not scale group["lr"] by factors: torch sets the lr from its bases
# (CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts, a SequentialLR at its next milestone),
# keeps an affine recursion (CosineAnnealingLR), or holds an lr the schedule has at 0.
REFUSED = {
    "CosineAnnealingLR": (lambda o: tlr.CosineAnnealingLR(o, 20), 5, 5),
    "CosineAnnealingLR-stepped-since": (
        lambda o: tlr.CosineAnnealingLR(o, 20, eta_min=1e-3), 5, 9),
    "CyclicLR": (lambda o: tlr.CyclicLR(o, 0.01, 0.1, 4, cycle_momentum=False), 5, 5),
    "OneCycleLR": (lambda o: tlr.OneCycleLR(o, 0.1, 30, cycle_momentum=False), 5, 5),
    "CosineAnnealingWarmRestarts": (lambda o: tlr.CosineAnnealingWarmRestarts(o, 5), 7, 7),
    "SequentialLR-before-milestone": (lambda o: tlr.SequentialLR(
        o, [tlr.StepLR(o, 2), tlr.ExponentialLR(o, 0.9)], [10]), 4, 4),
    "LinearLR-at-0": (lambda o: tlr.LinearLR(o, 1.0, 0.0, 5), 7, 7),
    "ChainedScheduler-with-cosine": (lambda o: tlr.ChainedScheduler(
        [tlr.StepLR(o, 4), tlr.CosineAnnealingLR(o, 50)]), 3, 3),
}


@pytest.mark.parametrize("make, write_at, take_at", REFUSED.values(), ids=REFUSED)
def test_written_lr_refused(make, write_at, take_at):
    opt, sched = torch_run(make, take_at)
    take_over(opt, sched)                   # unwritten, the same run is taken over
    opt, sched = torch_run(make, take_at, write_at=write_at)
    groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                            for g in opt.param_groups])
    position, last = torch_position(sched), list(sched.get_last_lr())
    found = opt.param_groups[0]["lr"]       # WRITTEN, or what a recursion made of it since
    with pytest.raises(ValueError, match=f"param group 0 has lr {found}, but its "
                                         f"{type(sched).__name__} gives .*param_groups\\[0\\]"):
        fused_lrs.from_torch(opt, sched)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups
    assert torch_position(sched) == position and sched.get_last_lr() == last


@pytest.mark.parametrize("info, options", representatives())
def test_mid_epoch_continues_torch(info, options):
    """10 optimizer steps with the scheduler stepped after every 4th: 2 into the third epoch,
    from the state's step counts, or from steps= where the peer keeps none."""
    def make(o):
        return tlr.StepLR(o, 1, 0.5)

    take = {} if info.record.saves_step else {"steps": 10}
    fused = continue_run(info, options, make, before=10, after=10, every=4, **take)
    assert int(fused.schedule_step) == 20
    # at an epoch boundary; without a count the position is the epoch's start, with a warning
    if info.record.saves_step:
        continue_run(info, options, make, before=8, after=6, every=4)
    else:
        with pytest.warns(UserWarning, match="keeps no step count.*pass steps="):
            continue_run(info, options, make, before=8, after=6, every=4)


def test_mid_epoch_lrs_step_by_step():
    opt, sched = torch_run(lambda o: tlr.StepLR(o, 1, 0.5), 6, every=4)
    fused = take_over(opt, sched, every=4)
    assert int(fused.schedule_step) == 6
    assert_same_lrs(opt, sched, fused, 6, 10, every=4)


def test_position_refusals():
    def make(o):
        return tlr.StepLR(o, 1, 0.5)

    # Built after 5 optimizer steps: counts 13, the scheduler at epoch 2 of every=4.
    opt, sched = torch_run(make, 8, every=4, pre_steps=5)
    with pytest.raises(ValueError, match="largest 'step' count is 13 optimizer steps, but the "
                                         "scheduler has taken 2 steps of every=4, .* 8 to 11; "
                                         "pass steps="):
        take_over(opt, sched, every=4)
    fused = take_over(opt, sched, every=4, steps=8)
    assert int(fused.schedule_step) == 8
    assert_same_lrs(opt, sched, fused, 8, 8, every=4)
    for steps in (7, 12):
        with pytest.raises(ValueError, match=f"steps= is {steps} optimizer steps"):
            take_over(opt, sched, every=4, steps=steps)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        take_over(opt, sched, every=4, steps=8.0)
    with pytest.raises(ValueError, match="no scheduler was given"):
        fused_lrs.from_torch(opt, steps=8)
