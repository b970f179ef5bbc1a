"""fused_lrs.from_torch: a torch optimizer and scheduler, taken over mid-run, continue exactly.

Two identical torch pairs run ``K`` steps on the same gradients; one is converted, the other
continues; both then take ``N`` more steps on the same gradients. Params and every state tensor
must agree with torch continuing: rtol 1e-5 in fp32 (atol 1e-7 for entries near 0), the
tolerance of the optimizer suite; the largest difference measured is 1.3e-6 relative (fp32
rounding over 25 steps).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close
from torch.optim import lr_scheduler as tlr

import fused_lrs
from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled
from fused_lrs import schedules as S

SHAPES = [(5, 4), (7,), (1,)]
TOTAL = 60  # OneCycleLR's total_steps: K + N stay inside it


def torch_optimizer(kind, params):
    """Two groups with their own lr and weight decay (torch's base_lrs differ per group)."""
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02, "weight_decay": 0.05}]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=0.01, betas=(0.9, 0.99), weight_decay=0.01)
    if kind == "adam-amsgrad":
        return torch.optim.Adam(groups, lr=0.01, amsgrad=True)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=0.01, betas=(0.85, 0.98), weight_decay=0.1)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-3)
    assert kind == "sgd-nesterov"
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, dampening=0.0)


SCHEDULERS = {
    "ConstantLR": lambda o: tlr.ConstantLR(o, 0.5, 12),
    "StepLR": lambda o: tlr.StepLR(o, 5, 0.7),
    "MultiStepLR": lambda o: tlr.MultiStepLR(o, [4, 9, 9, 20], 0.6),
    "ExponentialLR": lambda o: tlr.ExponentialLR(o, 0.95),
    "CosineAnnealingLR": lambda o: tlr.CosineAnnealingLR(o, 25, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda o: tlr.CosineAnnealingWarmRestarts(o, 6, 2, 1e-4),
    "LinearLR": lambda o: tlr.LinearLR(o, 0.1, 1.0, 15),
    "PolynomialLR": lambda o: tlr.PolynomialLR(o, 30, 2.0),
    "SequentialLR": lambda o: tlr.SequentialLR(
        o, [tlr.LinearLR(o, 0.1, 1.0, 8), tlr.CosineAnnealingLR(o, 30)], [8]),
    "ChainedScheduler": lambda o: tlr.ChainedScheduler(
        [tlr.StepLR(o, 7, 0.5), tlr.ExponentialLR(o, 0.97)]),
    "CyclicLR": lambda o: tlr.CyclicLR(o, 0.005, 0.05, 4, 6, "triangular2",
                                       cycle_momentum=False),
    "CyclicLR-momentum": lambda o: tlr.CyclicLR(o, 0.005, 0.05, 4, 6, "exp_range", gamma=0.97,
                                                base_momentum=0.8, max_momentum=0.95),
    "OneCycleLR": lambda o: tlr.OneCycleLR(o, 0.05, TOTAL, cycle_momentum=False),
    "OneCycleLR-momentum": lambda o: tlr.OneCycleLR(o, 0.05, TOTAL, pct_start=0.25,
                                                    three_phase=True, anneal_strategy="linear"),
    "OneCycleLR-per-group": lambda o: tlr.OneCycleLR(o, [0.05, 0.1], TOTAL),
    "CyclicLR-per-group": lambda o: tlr.CyclicLR(o, [0.005, 0.01], [0.05, 0.03], 5),
}
OPTIMIZERS = ["adam", "adam-amsgrad", "adamw", "sgd", "sgd-nesterov"]


def grads(gen):
    return [torch.randn(s, generator=gen) for s in SHAPES]


def pair(kind, make_scheduler, init):
    params = [x.clone().requires_grad_() for x in init]
    opt = torch_optimizer(kind, params)
    return params, opt, make_scheduler(opt)


def step_torch(params, opt, sched, g, k, every):
    for p, x in zip(params, g):
        p.grad = x.clone()
    opt.step()
    if sched is not None and (k + 1) % every == 0:
        sched.step()


def continue_run(kind, make_scheduler, before, after, every=1, check_groups=None):
    """Run two torch pairs ``before`` steps, convert one, run it and the other ``after`` more;
    compare params and every state tensor. Returns the fused optimizer."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    ps, opt, sched = pair(kind, make_scheduler, init)
    qs, twin, twin_sched = pair(kind, make_scheduler, init)
    for k in range(before):
        g = grads(gen)
        step_torch(ps, opt, sched, g, k, every)
        step_torch(qs, twin, twin_sched, g, k, every)
    fused = fused_lrs.from_torch(opt, sched, every=every, impl="reference")
    if check_groups:
        check_groups(fused, opt)
    for k in range(before, before + after):
        g = grads(gen)
        for p, x in zip(ps, g):
            p.grad = x.clone()
        fused.step()
        step_torch(qs, twin, twin_sched, g, k, every)
    for i, (p, q) in enumerate(zip(ps, qs)):
        assert_close(p, q, rtol=1e-5, atol=1e-7, what=f"param {i}")
        assert set(fused.state[p]) >= set(twin.state[q]), (fused.state[p].keys(),
                                                           twin.state[q].keys())
        for key, value in twin.state[q].items():
            assert_close(fused.state[p][key], value, rtol=1e-5, atol=1e-7, what=f"{i} {key}")
    return fused


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_continues_torch_mid_run(name, kind):
    continue_run(kind, SCHEDULERS[name], before=11, after=25)


@pytest.mark.parametrize("name", ["OneCycleLR-momentum", "StepLR", "CyclicLR-momentum"])
def test_fresh_and_every(name):
    continue_run("adamw", SCHEDULERS[name], before=0, after=12)
    continue_run("sgd", SCHEDULERS[name], before=9, after=9, every=3)  # scheduler per 3 steps


def test_groups_hold_base_values():
    def check(fused, opt):
        assert type(fused) is FusedAdamScheduled
        for ours, theirs in zip(fused.param_groups, opt.param_groups):
            assert ours["lr"] == theirs["initial_lr"] != theirs["lr"]
            assert ours["betas"] == (theirs["max_momentum"], theirs["betas"][1])
            assert not {"initial_lr", "max_lr", "min_lr", "max_momentum",
                        "base_momentum"} & set(ours)
            assert ours["weight_decay"] == theirs["weight_decay"]
        assert fused.momentum_schedule == S.one_cycle_momentum(TOTAL, 0.25, "linear",
                                                               three_phase=True)
        assert int(fused.schedule_step) == 11

    continue_run("adam", SCHEDULERS["OneCycleLR-momentum"], 11, 3, check_groups=check)


def test_classes_defaults_and_copy():
    p = torch.zeros(3, requires_grad=True)
    for opt, cls in [(torch.optim.Adam([p], lr=0.3, eps=1e-6), FusedAdamScheduled),
                     (torch.optim.AdamW([p], weight_decay=0.2), FusedAdamWScheduled),
                     (torch.optim.SGD([p], lr=0.2, dampening=0.1), FusedSGDScheduled)]:
        p.grad = torch.ones(3)
        opt.step()
        fused = fused_lrs.from_torch(opt)
        assert type(fused) is cls and fused.defaults["lr"] == opt.defaults["lr"]
        assert fused.schedule == S.constant() and int(fused.schedule_step) == 0
        before = {k: v.clone() for k, v in opt.state[p].items() if v is not None}
        fused.step()  # steps its own copy of the state
        for k, v in before.items():
            assert torch.equal(opt.state[p][k], v), k


def test_without_the_scheduler_holds_the_current_lr():
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = tlr.StepLR(opt, 1, 0.5)
    opt.step()
    sched.step()
    with pytest.warns(UserWarning, match="initial_lr.*none was given"):
        fused = fused_lrs.from_torch(opt)
    assert fused.param_groups[0]["lr"] == 0.5 and "initial_lr" not in fused.param_groups[0]


# Per-group values: a OneCycleLR or CyclicLR with one value per group converts to a spec with
# per-group values (each group's block of the table holds its own numbers).
@pytest.mark.parametrize("config", [
    dict(),
    dict(three_phase=True),
    dict(anneal_strategy="linear"),
    dict(anneal_strategy="linear", three_phase=True, cycle_momentum=False),
    dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
], ids=["cos", "cos-three-phase", "linear", "linear-three-phase", "custom-factors"])
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_one_cycle_max_lr_per_group(kind, config):
    def make(o):
        return tlr.OneCycleLR(o, [0.05, 0.2], TOTAL, **config)

    def check(fused, opt):
        assert fused.schedule.groups == 2 and fused.schedule.max_lr == (0.05, 0.2)

    continue_run(kind, make, before=13, after=TOTAL - 13, check_groups=check)


@pytest.mark.parametrize("cycle_momentum", [True, False])
@pytest.mark.parametrize("kind", ["adamw", "sgd-nesterov"])
def test_cyclic_lists_per_group(kind, cycle_momentum):
    def make(o):
        return tlr.CyclicLR(o, [0.005, 0.01], [0.05, 0.03], 4, 7, "triangular2",
                            cycle_momentum=cycle_momentum)

    def check(fused, opt):
        assert fused.schedule == S.cyclic((0.005, 0.01), (0.05, 0.03), 4, 7, "triangular2")

    continue_run(kind, make, before=9, after=20, check_groups=check)


def test_one_cycle_phase_ends_between_steps_per_group():
    # pct_start * total_steps = 30.3: phase 1 ends between steps 29 and 30, as torch has it.
    continue_run("sgd", lambda o: tlr.OneCycleLR(o, [0.1, 0.2], 101), before=20, after=81)


@pytest.mark.parametrize("g", [0, 1])
def test_per_group_schedule_has_a_triton_twin(g):
    opt = torch_optimizer("sgd", [torch.zeros(1, requires_grad=True) for _ in SHAPES])
    t = torch.arange(0, TOTAL + 5, device=KERNEL_DEVICE)
    for sched in (tlr.OneCycleLR(opt, [0.05, 0.2], TOTAL, three_phase=True),
                  tlr.CyclicLR(opt, [0.005, 0.01], [0.05, 0.03], 4, 7, "exp_range", gamma=0.99)):
        spec = S.convert.take_over(sched).schedule.for_group(g)
        assert_close(spec.lr_triton(t, 0.2), spec.lr(t, 0.2), rtol=1e-12, what=repr(spec))


def test_per_group_refusals():
    o = torch_optimizer("sgd", [torch.zeros(1, requires_grad=True) for _ in SHAPES])
    with pytest.raises(ValueError, match="max_momentum .*differing between param groups"):
        fused_lrs.from_torch(o, tlr.OneCycleLR(o, 0.1, 50, max_momentum=[0.9, 0.95]))
    spec = S.from_torch(tlr.OneCycleLR(o, [0.1, 0.2], 50, cycle_momentum=False))
    with pytest.raises(ValueError, match="schedule holds values for 2 parameter groups, the "
                                         "optimizer has 1"):
        FusedSGDScheduled([torch.zeros(1, requires_grad=True)], schedule=spec)
    with pytest.raises(ValueError, match="one_cycle holds one value per parameter group.*"
                                         "for_group"):
        spec.lr(3)


def test_refusals_name_what_to_use():
    p = torch.zeros(2, requires_grad=True)
    sgd = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match="LambdaLR holds an arbitrary Python function.*warmup\\("):
        fused_lrs.from_torch(sgd, tlr.LambdaLR(sgd, lambda t: 0.9 ** t))
    with pytest.raises(TypeError, match="MultiplicativeLR holds"):
        fused_lrs.from_torch(sgd, tlr.MultiplicativeLR(sgd, lambda t: 0.9))

    class MyStep(tlr.StepLR):
        pass

    with pytest.raises(TypeError, match="cannot convert .*MyStep"):
        fused_lrs.from_torch(sgd, MyStep(sgd, 3))
    other = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="attached to another optimizer"):
        fused_lrs.from_torch(sgd, tlr.StepLR(other, 3))
    with pytest.raises(TypeError, match="cannot convert torch.optim.lbfgs.LBFGS.*Adam"):
        fused_lrs.from_torch(torch.optim.LBFGS([p]))

    class MyAdam(torch.optim.Adam):
        pass

    with pytest.raises(TypeError, match="cannot convert .*MyAdam.*not subclasses"):
        fused_lrs.from_torch(MyAdam([p]))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    seq = tlr.SequentialLR(sgd, [tlr.OneCycleLR(sgd, 0.1, 20), tlr.StepLR(sgd, 3)], [10])
    with pytest.raises(ValueError, match="OneCycleLR inside a SequentialLR cycles the momentum"):
        fused_lrs.from_torch(sgd, seq)


def test_schedules_from_torch_warns_about_cycled_momentum():
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    with pytest.warns(UserWarning, match="OneCycleLR cycles the momentum.*fused_lrs.from_torch"
                                         "\\(optimizer, scheduler\\) converts both"):
        S.from_torch(tlr.OneCycleLR(sgd, 0.1, 20))
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    chain = tlr.ChainedScheduler([tlr.CyclicLR(sgd, 0.01, 0.1, 5)])
    with pytest.warns(UserWarning, match="CyclicLR cycles the momentum"):
        S.from_torch(chain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
        S.from_torch(tlr.CyclicLR(sgd, 0.01, 0.1, 5, cycle_momentum=False))
        fused_lrs.from_torch(sgd, tlr.OneCycleLR(sgd, 0.1, 20))  # converts both: no warning
