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
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import ANY, OPTIMIZER_INFOS, every_option, representatives
from schedule_table import SCHEDULES
from torch.optim import lr_scheduler as tlr

import fused_lrs
from fused_lrs import schedules as S

SHAPES = [(5, 4), (7,), (1,)]
TOTAL = 60  # OneCycleLR's total_steps: K + N stay inside it
# The rows whose record has a momentum-like coefficient, which torch's schedulers can cycle.
WITH_MOMENTUM = [p for p in representatives() if p.values[0].record.momentum is not None]


def torch_optimizer(info, options, params):
    """The peer with two groups of their own lr and weight decay (torch's base_lrs differ per
    group)."""
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02, "weight_decay": 0.05}]
    return info.peer(groups, lr=0.01, **options)


# The table's schedulers, and what only a migration meets: the momentum cycled by OneCycleLR
# and CyclicLR, and values per group.
SCHEDULERS = {name: factory for name, factory, _ in SCHEDULES} | {
    "CyclicLR-momentum": lambda o: tlr.CyclicLR(o, 0.005, 0.05, 4, 6, "exp_range", gamma=0.97,
                                                base_momentum=0.8, max_momentum=0.95),
    "OneCycleLR-momentum": lambda o: tlr.OneCycleLR(o, 0.05, TOTAL, pct_start=0.25,
                                                    three_phase=True, anneal_strategy="linear"),
    "OneCycleLR-per-group": lambda o: tlr.OneCycleLR(o, [0.05, 0.1], TOTAL),
    "CyclicLR-per-group": lambda o: tlr.CyclicLR(o, [0.005, 0.01], [0.05, 0.03], 5),
}


def grads(gen):
    return [torch.randn(s, generator=gen) for s in SHAPES]


def pair(info, options, make_scheduler, init):
    params = [x.clone().requires_grad_() for x in init]
    opt = torch_optimizer(info, options, params)
    return params, opt, make_scheduler(opt)


def step_torch(params, opt, sched, g, k, every):
    for p, x in zip(params, g):
        p.grad = x.clone()
    opt.step()
    if sched is not None and (k + 1) % every == 0:
        sched.step()


def continue_run(info, options, make_scheduler, before, after, every=1, check_groups=None,
                 write=None, **take):
    """Run two torch pairs ``before`` steps, ``write(opt)`` into both optimizers, convert one
    (``from_torch(..., **take)``), run it and the other ``after`` more; compare params and
    every state tensor. Returns the fused optimizer."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    ps, opt, sched = pair(info, options, make_scheduler, init)
    qs, twin, twin_sched = pair(info, options, make_scheduler, init)
    for k in range(before):
        g = grads(gen)
        step_torch(ps, opt, sched, g, k, every)
        step_torch(qs, twin, twin_sched, g, k, every)
    if write is not None:
        write(opt)
        write(twin)
    fused = fused_lrs.from_torch(opt, sched, every=every, impl="reference", **take)
    assert type(fused) is info.cls
    if check_groups:
        check_groups(fused, opt)
    for k in range(before, before + after):
        g = grads(gen)
        for p, x in zip(ps, g):
            p.grad = x.clone()
        fused.step()
        step_torch(qs, twin, twin_sched, g, k, every)
    assert_same_optimizer(fused, twin, rtol=1e-5, atol=1e-7, extra_state=info.extra_state)
    return fused


def cycles_momentum(name: str) -> bool:
    """Whether scheduler ``name`` cycles the momentum (OneCycleLR's and CyclicLR's default):
    torch refuses that on an optimizer that has none ("optimizer must support momentum or beta1
    with `cycle_momentum` option enabled")."""
    return name.startswith(("OneCycleLR", "CyclicLR"))


def schedulers(info) -> list[str]:
    """The schedulers a row's peer accepts."""
    return [n for n in SCHEDULERS if info.record.momentum is not None or not cycles_momentum(n)]


@pytest.mark.parametrize("info, options, name", [
    pytest.param(*param.values, name, id=f"{param.id}-{name}")
    for param in representatives() for name in schedulers(param.values[0])])
def test_continues_torch_mid_run(info, options, name):
    """Every scheduler, under each row's representative."""
    continue_run(info, options, SCHEDULERS[name], before=11, after=25)


@pytest.mark.parametrize("info, options, name", [
    pytest.param(*param.values, names[i % len(names)], id=f"{param.id}-{names[i % len(names)]}")
    for i, param in enumerate(every_option()) for names in [schedulers(param.values[0])]
    # a peer that takes no maximize (lion_pytorch) has no maximizing run to take over
    if param.values[0].peer_maximize or not param.values[1].get("maximize")])
def test_every_option_continues_torch_mid_run(info, options, name):
    """Each row's whole option grid, each with the next scheduler in turn: every state the
    peer keeps is taken over."""
    continue_run(info, options, SCHEDULERS[name], before=11, after=25)


# At an epoch boundary; the warning for the peers without a step count: test_migrate_midrun.py
@pytest.mark.filterwarnings("ignore:.*keeps no step count:UserWarning")
@pytest.mark.parametrize("info, options, name", [
    pytest.param(*param.values, name, id=f"{param.id}-{name}") for param in representatives()
    for name in ("OneCycleLR-momentum", "step", "CyclicLR-momentum")
    if name in schedulers(param.values[0])])
def test_fresh_and_every(info, options, name):
    continue_run(info, options, SCHEDULERS[name], before=0, after=12)
    continue_run(info, options, SCHEDULERS[name], before=9, after=9, every=3)  # per 3 steps


@pytest.mark.parametrize("info, options", WITH_MOMENTUM)
def test_groups_hold_base_values(info, options):
    def check(fused, opt):
        for ours, theirs in zip(fused.param_groups, opt.param_groups):
            assert ours["lr"] == theirs["initial_lr"] != theirs["lr"]
            # The momentum-like coefficient is its base (torch's max_momentum), the rest kept.
            assert info.record.read_momentum(ours) == theirs["max_momentum"]
            if "betas" in theirs:
                assert ours["betas"][1] == theirs["betas"][1]
            assert not {"initial_lr", "max_lr", "min_lr", "max_momentum",
                        "base_momentum"} & set(ours)
            assert ours["weight_decay"] == theirs["weight_decay"]
        assert fused.momentum_schedule == S.one_cycle_momentum(TOTAL, 0.25, "linear",
                                                               three_phase=True)
        assert int(fused.schedule_step) == 11

    continue_run(info, options, SCHEDULERS["OneCycleLR-momentum"], 11, 3, check_groups=check)


@pytest.mark.parametrize("info, options", representatives())
def test_classes_defaults_and_copy(info, options):
    p = torch.zeros(3, requires_grad=True)
    opt = info.peer([p], lr=0.3, **options)
    p.grad = torch.ones(3)
    opt.step()
    fused = fused_lrs.from_torch(opt)
    assert type(fused) is info.cls and fused.defaults["lr"] == opt.defaults["lr"]
    assert fused.schedule == S.constant() and int(fused.schedule_step) == 0
    before = {k: v.clone() for k, v in opt.state[p].items() if v is not None}
    fused.step()  # steps its own copy of the state
    for k, v in before.items():
        assert torch.equal(opt.state[p][k], v), k


def test_without_the_scheduler_holds_the_current_lr():
    p = torch.zeros(2, requires_grad=True)
    opt = ANY.peer([p], lr=1.0)
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
@pytest.mark.parametrize("info, options", representatives())
def test_one_cycle_max_lr_per_group(info, options, config):
    if info.record.momentum is None:
        config = {**config, "cycle_momentum": False}     # torch refuses it: no momentum

    def make(o):
        return tlr.OneCycleLR(o, [0.05, 0.2], TOTAL, **config)

    def check(fused, opt):
        assert fused.schedule.groups == 2 and fused.schedule.max_lr == (0.05, 0.2)

    continue_run(info, options, make, before=13, after=TOTAL - 13, check_groups=check)


@pytest.mark.parametrize("info, options, cycle_momentum", [
    pytest.param(*param.values, cycle, id=f"{param.id}-{cycle}") for param in representatives()
    for cycle in (True, False) if not cycle or param.values[0].record.momentum is not None])
def test_cyclic_lists_per_group(info, options, cycle_momentum):
    def make(o):
        return tlr.CyclicLR(o, [0.005, 0.01], [0.05, 0.03], 4, 7, "triangular2",
                            cycle_momentum=cycle_momentum)

    def check(fused, opt):
        assert fused.schedule == S.cyclic((0.005, 0.01), (0.05, 0.03), 4, 7, "triangular2")

    continue_run(info, options, make, before=9, after=20, check_groups=check)


def test_one_cycle_phase_ends_between_steps_per_group():
    # pct_start * total_steps = 30.3: phase 1 ends between steps 29 and 30, as torch has it.
    continue_run(ANY, ANY.representative, lambda o: tlr.OneCycleLR(o, [0.1, 0.2], 101),
                 before=20, after=81)


@pytest.mark.parametrize("g", [0, 1])
def test_per_group_schedule_has_a_triton_twin(g):
    opt = torch_optimizer(ANY, {}, [torch.zeros(1, requires_grad=True) for _ in SHAPES])
    t = torch.arange(0, TOTAL + 5, device=KERNEL_DEVICE)
    for sched in (tlr.OneCycleLR(opt, [0.05, 0.2], TOTAL, three_phase=True),
                  tlr.CyclicLR(opt, [0.005, 0.01], [0.05, 0.03], 4, 7, "exp_range", gamma=0.99)):
        spec = S.convert.take_over(sched).schedule.for_group(g)
        assert_close(spec.lr_triton(t, 0.2), spec.lr(t, 0.2), rtol=1e-12, what=repr(spec))


def test_per_group_refusals():
    o = torch_optimizer(ANY, {}, [torch.zeros(1, requires_grad=True) for _ in SHAPES])
    with pytest.raises(ValueError, match="max_momentum .*differing between param groups"):
        fused_lrs.from_torch(o, tlr.OneCycleLR(o, 0.1, 50, max_momentum=[0.9, 0.95]))
    spec = S.from_torch(tlr.OneCycleLR(o, [0.1, 0.2], 50, cycle_momentum=False))
    with pytest.raises(ValueError, match="schedule holds values for 2 parameter groups, the "
                                         "optimizer has 1"):
        ANY.cls([torch.zeros(1, requires_grad=True)], schedule=spec)
    with pytest.raises(ValueError, match="one_cycle holds one value per parameter group.*"
                                         "for_group"):
        spec.lr(3)


def unmirrored():
    """A torch optimizer that no row mirrors."""
    return next(cls for cls in (torch.optim.Rprop, torch.optim.LBFGS, torch.optim.SparseAdam)
                if fused_lrs.algorithms.for_peer(cls) is None)


def test_refusals_name_what_to_use():
    p = torch.zeros(2, requires_grad=True)
    opt = ANY.peer([p], lr=0.1)
    with pytest.raises(TypeError, match="LambdaLR holds an arbitrary Python function.*warmup\\("):
        fused_lrs.from_torch(opt, tlr.LambdaLR(opt, lambda t: 0.9 ** t))
    with pytest.raises(TypeError, match="MultiplicativeLR holds"):
        fused_lrs.from_torch(opt, tlr.MultiplicativeLR(opt, lambda t: 0.9))

    class MyStep(tlr.StepLR):
        pass

    with pytest.raises(TypeError, match="cannot convert .*MyStep"):
        fused_lrs.from_torch(opt, MyStep(opt, 3))
    other = ANY.peer([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="attached to another optimizer"):
        fused_lrs.from_torch(opt, tlr.StepLR(other, 3))
    cls = unmirrored()
    names = ".*".join(info.record.peer for info in OPTIMIZER_INFOS)
    with pytest.raises(TypeError, match=f"cannot convert {cls.__module__}.{cls.__name__};"
                                        f".*{names}"):
        fused_lrs.from_torch(cls([p]))

    class MyPeer(ANY.record.peer_class()):
        pass

    with pytest.raises(TypeError, match="cannot convert .*MyPeer.*not subclasses"):
        fused_lrs.from_torch(MyPeer([p]))
    opt = ANY.peer([p], lr=0.1)
    seq = tlr.SequentialLR(opt, [tlr.OneCycleLR(opt, 0.1, 20), tlr.StepLR(opt, 3)], [10])
    with pytest.raises(ValueError, match="OneCycleLR inside a SequentialLR cycles the momentum"):
        fused_lrs.from_torch(opt, seq)


@pytest.mark.parametrize("info, options", WITH_MOMENTUM)
def test_schedules_from_torch_warns_about_cycled_momentum(info, options):
    def peer():
        return info.peer([torch.zeros(1, requires_grad=True)], lr=0.1, **options)

    opt = peer()
    with pytest.warns(UserWarning, match="OneCycleLR cycles the momentum.*fused_lrs.from_torch"
                                         "\\(optimizer, scheduler\\) converts both"):
        S.from_torch(tlr.OneCycleLR(opt, 0.1, 20))
    chain = tlr.ChainedScheduler([tlr.CyclicLR(peer(), 0.01, 0.1, 5)])
    with pytest.warns(UserWarning, match="CyclicLR cycles the momentum"):
        S.from_torch(chain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = peer()
        S.from_torch(tlr.CyclicLR(opt, 0.01, 0.1, 5, cycle_momentum=False))
        fused_lrs.from_torch(opt, tlr.OneCycleLR(opt, 0.1, 20))  # converts both: no warning
