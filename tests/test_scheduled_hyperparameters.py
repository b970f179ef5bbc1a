"""Scheduled momentum and weight decay, evaluated inside the step like the lr.

torch's OneCycleLR and CyclicLR with cycle_momentum=True rewrite beta1 (Adam) or momentum (SGD)
from the host each step; here ``momentum_schedule=`` moves them on the device. Every optimizer
of the table (its representative; the momentum for those whose record has one) compared with
torch's schedulers driving its peer on the same gradients, every state tensor."""

import math

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import INFO, representatives, swept
from torch.optim import lr_scheduler as tls

from fused_lrs import FusedRMSpropScheduled, FusedSGDScheduled
from fused_lrs import schedules as S

STEPS = 60
SHAPES = [(6, 5), (9,), (1,)]
# The rows whose record has a momentum-like coefficient (Adam's beta1, SGD's momentum).
WITH_MOMENTUM = [p for p in representatives() if p.values[0].record.momentum is not None]


def run_pair(info, ours_factory, torch_factory, before_torch_step=None, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).to(device) for s in SHAPES]
    ps = [x.clone().requires_grad_() for x in init]
    qs = [x.clone().requires_grad_() for x in init]
    ours = ours_factory(ps)
    theirs, sched = torch_factory(qs)
    for k in range(STEPS):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=gen).to(device)
            p.grad, q.grad = g.clone(), g.clone()
        if before_torch_step:
            before_torch_step(theirs, k)
        ours.step()
        theirs.step()
        if sched:
            sched.step()
    assert_same_optimizer(ours, theirs, rtol=1e-5, atol=1e-7, extra_state=info.extra_state)
    return ours


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("info, options", WITH_MOMENTUM)
def test_one_cycle_with_cycled_momentum(info, options, three_phase):
    cycle = dict(total_steps=STEPS, pct_start=0.25, three_phase=three_phase)
    momenta = dict(base_momentum=0.8, max_momentum=0.95)
    run_pair(info,
             lambda ps: info.cls(ps, schedule=S.one_cycle(0.05, **cycle),
                                 momentum_schedule=S.one_cycle_momentum(**cycle, **momenta),
                                 impl="reference", **options),
             lambda qs: (opt := info.peer(qs, lr=0.05, **options),
                         tls.OneCycleLR(opt, 0.05, **cycle, cycle_momentum=True, **momenta)))


ZERO_MOMENTUM = [(FusedSGDScheduled, dict(momentum=0.9, dampening=0.3)),
                 (FusedSGDScheduled, dict(momentum=0.9, nesterov=True)),
                 (FusedRMSpropScheduled, dict(momentum=0.9)),
                 (FusedRMSpropScheduled, dict(momentum=0.9, centered=True))]


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("cls, options", ZERO_MOMENTUM,
                         ids=["sgd-dampening", "sgd-nesterov", "rmsprop", "rmsprop-centered"])
def test_a_scheduled_momentum_of_zero_skips_the_buffer_as_torch_does(cls, options, impl):
    # OneCycleLR with base_momentum=0 writes momentum 0 at its peak (step 15 of 60): torch's
    # SGD (`if momentum != 0`) and RMSprop (`if momentum > 0`) then skip the buffer, which
    # keeps its value, and take the plain step.
    info = INFO[cls]
    cycle = dict(total_steps=STEPS, pct_start=0.25, anneal_strategy="linear")
    momenta = dict(base_momentum=0.0, max_momentum=0.9)
    run_pair(info,
             lambda ps: info.cls(ps, schedule=S.one_cycle(0.05, **cycle),
                                 momentum_schedule=S.one_cycle_momentum(**cycle, **momenta),
                                 impl=impl, **options),
             lambda qs: (opt := info.peer(qs, lr=0.05, **options),
                         tls.OneCycleLR(opt, 0.05, **cycle, cycle_momentum=True, **momenta)),
             device=KERNEL_DEVICE if impl == "triton" else "cpu")


@pytest.mark.parametrize("info, options", WITH_MOMENTUM)
def test_cyclic_with_cycled_momentum(info, options):
    cyc = dict(step_size_up=5, step_size_down=7, mode="triangular2")
    run_pair(info,
             lambda ps: info.cls(ps, lr=0.1, schedule=S.cyclic(0.01, 0.1, **cyc),
                                 momentum_schedule=S.cyclic_momentum(0.8, 0.9, **cyc),
                                 impl="reference", **options),
             lambda qs: (opt := info.peer(qs, lr=0.1, **options),
                         tls.CyclicLR(opt, 0.01, 0.1, **cyc, cycle_momentum=True,
                                      base_momentum=0.8, max_momentum=0.9)))


@pytest.mark.parametrize("info, options", representatives())
def test_cosine_weight_decay(info, options):
    wd0, T = 0.1, 40
    options = dict(options, weight_decay=wd0)

    def torch_wd(opt, k):
        # The spec's value at step k, derived: wd0 * (1 + cos(pi k / T)) / 2.
        opt.param_groups[0]["weight_decay"] = wd0 * (1 + math.cos(math.pi * k / T)) / 2

    run_pair(info,
             lambda ps: info.cls(ps, lr=0.01, weight_decay_schedule=S.cosine(T),
                                 impl="reference", **options),
             lambda qs: (info.peer(qs, lr=0.01, **options), None),
             before_torch_step=torch_wd)


# The kernel evaluates the momentum and weight-decay schedules in code every algorithm shares:
# the sweep rows carry one-cycle momentum and warmup-cosine decay over 25 steps; every row's
# prepare reads the scheduled values in test_kernel_vs_reference.py.
@pytest.mark.parametrize("info, options", [p for p in swept()
                                           if p.values[0].record.momentum is not None])
def test_kernel_matches_reference_with_scheduled_momentum_and_decay(info, options):
    opts = []
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=gen) for s in [(1025,), (3,), (2049,)]]
    for impl in ("reference", "triton"):
        ps = [x.clone().to(KERNEL_DEVICE).requires_grad_() for x in init]
        opts.append((ps, info.cls(
            ps, lr=0.1, impl=impl, schedule=S.one_cycle(0.1, 30),
            momentum_schedule=S.one_cycle_momentum(30),
            weight_decay_schedule=S.warmup(S.cosine(20), 5), **options)))
    for _ in range(25):
        grads = [torch.randn(x.shape, generator=gen).to(KERNEL_DEVICE) for x in init]
        for ps, opt in opts:
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    (_, ref), (_, tri) = opts
    assert_same_optimizer(tri, ref, rtol=1e-6, scaled=True)


@pytest.mark.parametrize("info, options", WITH_MOMENTUM)
def test_checkpoint_keeps_every_schedule(info, options):
    p = torch.zeros(3, requires_grad=True)
    opt = info.cls([p], schedule=S.cosine(10), momentum_schedule=S.one_cycle_momentum(10),
                   weight_decay_schedule=S.step(3, 0.5), **options)
    fresh = info.cls([torch.zeros(3, requires_grad=True)], **options)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.schedule == opt.schedule
    assert fresh.momentum_schedule == opt.momentum_schedule
    assert fresh.weight_decay_schedule == opt.weight_decay_schedule
    assert torch.equal(fresh._schedule_state.table, opt._schedule_state.table)


MOMENTUM_PEERS = [
    (dict(total_steps=80, pct_start=0.3, anneal_strategy="cos", base_momentum=0.8,
          max_momentum=0.95, three_phase=False),
     lambda o, c: tls.OneCycleLR(o, 0.1, cycle_momentum=True, **c), S.one_cycle_momentum),
    (dict(total_steps=90, pct_start=0.25, anneal_strategy="linear", base_momentum=0.7,
          max_momentum=0.9, three_phase=True),
     lambda o, c: tls.OneCycleLR(o, 0.1, cycle_momentum=True, **c), S.one_cycle_momentum),
    (dict(base_momentum=0.8, max_momentum=0.9, step_size_up=4, step_size_down=7,
          mode="exp_range", gamma=0.98),
     lambda o, c: tls.CyclicLR(o, 0.01, 0.1, cycle_momentum=True, **c), S.cyclic_momentum),
]


@pytest.mark.parametrize("config, peer, factory", MOMENTUM_PEERS,
                         ids=["one_cycle", "one_cycle-three-phase", "cyclic-exp_range"])
def test_momentum_factories_follow_torch(config, peer, factory):
    # torch's group momentum before each step, on a real optimizer, against the spec. A carrier
    # for the schedulers, not an optimizer under test: torch's SGD holds the momentum as a
    # plain group entry.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.5)
    sched = peer(opt, config)
    seen = []
    for _ in range(80):
        seen.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    spec = factory(**config)
    assert_close(spec.lr(torch.arange(80), 0.5), torch.tensor(seen, dtype=torch.float64),
                 rtol=1e-12, what=repr(spec))
