"""The reference path (and the CPU backend) of every optimizer of the table
(``tests/optimizers.py``) against its peer driven by torch's schedulers.

Every test runs our optimizer (``impl="reference"``; ``"torch_fused"`` too where marked) and
the peer side by side on clones of the same parameters, feeds both the same gradients, steps
torch's loop ``opt.step(); sched.step()``, and compares the parameters and every state tensor
(``assert_same_optimizer``). Tolerances: float32 rtol 1e-5 / atol 1e-7, float64 rtol 1e-12 /
atol 1e-15; the lr lists to rtol 1e-12. Bit for bit at a constant lr, over the whole grid, for
the backends a row claims it for (``bitwise_peer``).
"""

import random

import pytest
import torch
from conftest import assert_close, assert_same_optimizer
from optimizers import INFO, OPTIMIZER_INFOS, every_option, infos, representatives
from schedule_table import SCHEDULES
from torch.optim import lr_scheduler as tls

from fused_lrs import FusedAdagradScheduled, FusedAdamScheduled, FusedAdamWScheduled
from fused_lrs.schedules import cosine, exponential, linear, step

N_STEPS = 50
LR = 0.01
# Three groups of SHAPES[start:stop], with lr LR * LR_SCALES and weight decay wd * the third
# entry (wd: the option under test). (0,) is a zero-size parameter.
SHAPES = [(5, 3), (7,), (0,), (1,), (4, 2), (3,)]
GROUPS = [(0, 2, 1.0), (2, 5, 3.0), (5, 6, 0.0)]
LR_SCALES = (1.0, 0.5, 2.0)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-15)}
LR_TOL = dict(rtol=1e-12, atol=1e-18)
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


# ---------------------------------------------------------------- helpers

def flat_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def assert_same_state(ours, theirs, rtol, atol, what=""):
    """Parameters and every state tensor of ``ours`` against the peer's (``extra_state``: what
    ours keeps besides, e.g. our SGD's step count)."""
    assert_same_optimizer(ours, theirs, rtol, atol, what, INFO[type(ours)].extra_state)


def make_pair(info, options, dtype, spec=None, lr_scales=LR_SCALES, schedule_factory=None,
              impl="reference", peer=None):
    """Our optimizer and its peer on clones of the same parameters, grouped as GROUPS
    (``peer``: another way to build the peer)."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    options = dict(options)
    wd = options.pop("weight_decay", 0.0)

    def groups(params):
        return [{"params": params[a:b], "lr": LR * x, "weight_decay": wd * w}
                for (a, b, w), x in zip(GROUPS, lr_scales)]

    ours = info.cls(groups([p.clone().requires_grad_() for p in init]), schedule=spec,
                    impl=impl, **options)
    # The CPU backend runs torch's fused kernels where the peer has them: then its peer is the
    # fused optimizer.
    theirs = (peer or info.peer)(groups([p.clone().requires_grad_() for p in init]),
                                 fused=impl == "torch_fused", **options)
    sched = schedule_factory(theirs) if schedule_factory else None
    return ours, theirs, sched


def has_grad(k, i):
    """Which parameters get a gradient at step k: param 1 skips every third step, param 5
    starts late (its state is created at step 4), and step 20 has no gradient at all."""
    return not (k == 20 or (i == 1 and k % 3 == 2) or (i == 5 and k < 4))


def set_grads(ours, theirs, gen, k=None):
    """The same random gradients on both; at step ``k`` only where ``has_grad`` (every
    parameter when ``k`` is None)."""
    for i, (p, q) in enumerate(zip(flat_params(ours), flat_params(theirs))):
        if k is None or has_grad(k, i):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        else:
            p.grad = q.grad = None


def run_both(ours, theirs, sched, dtype, n=N_STEPS, on_step=None):
    """``n`` more steps of torch's loop on both, from wherever they stand (``t0``): the lrs are
    checked every step, the whole state every fifth step. ``on_step(t)`` runs before step t+1."""
    gen = torch.Generator().manual_seed(1)
    t0 = int(ours.schedule_step)
    if sched is not None and t0 == 0:
        assert_close(ours.get_last_lr(), sched.get_last_lr(), **LR_TOL, what="lr(0)")
    for k in range(t0, t0 + n):
        if on_step is not None:
            on_step(k)
        set_grads(ours, theirs, gen, k)
        used = sched.get_last_lr() if sched is not None else None   # torch's lr for this step
        ours.step()
        theirs.step()
        if sched is not None:
            sched.step()
            # get_last_lr() is the lr the step just made used (torch's scheduler has moved on).
            assert_close(ours.get_last_lr(), used, **LR_TOL,
                         what=f"get_last_lr after step {k + 1}")
        if (k - t0) % 5 == 0 or k == t0 + n - 1:
            assert_same_state(ours, theirs, **TOL[dtype], what=f"after step {k + 1}")
    assert int(ours.schedule_step) == t0 + n


# ---------------------------------------------------------------- equivalence

OPTIONS = every_option()


@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("info, options, schedule", [
    pytest.param(*param.values, SCHEDULES[i % len(SCHEDULES)],
                 id=f"{param.id}-{SCHEDULES[i % len(SCHEDULES)][0]}")
    for i, param in enumerate(OPTIONS)])
def test_every_option_matches_torch(info, options, schedule, dtype, impl):
    """Every option combination, each with the next schedule in turn, on the reference and on
    the CPU backend (torch's fused kernels where the peer has them)."""
    _, factory, spec = schedule
    run_both(*make_pair(info, options, dtype, spec, schedule_factory=factory, impl=impl), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("info, options", representatives())
@pytest.mark.parametrize("name, factory, spec", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_every_schedule_matches_torch(name, factory, spec, info, options, dtype):
    run_both(*make_pair(info, options, dtype, spec, schedule_factory=factory), dtype)


def random_options(info, rng):
    """A union of a random number of the row's option entries, drawn again while the class
    refuses the union (SGD's nesterov entry with its dampening one)."""
    entries = [options for _, options in info.options]
    while True:
        options = {}
        for entry in rng.sample(entries, rng.randint(1, len(entries))):
            options.update(entry)
        try:
            info.cls([torch.zeros(1, requires_grad=True)], **options)
        except ValueError:
            continue
        return options


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("info", infos())
def test_random_configurations_match_torch(info, seed):
    """A random union of the row's option entries, schedule, dtype, backend and group lrs,
    against the peer (three groups; some gradients None; every state tensor)."""
    rng = random.Random(f"{info.name}-{seed}")
    options = random_options(info, rng)
    _, factory, spec = rng.choice(SCHEDULES)
    dtype = rng.choice([torch.float32, torch.float64])
    impl = rng.choice(["reference", "torch_fused"])
    scales = tuple(rng.choice([0.5, 1.0, 2.0, 3.0]) for _ in GROUPS)
    run_both(*make_pair(info, options, dtype, spec, lr_scales=scales, schedule_factory=factory,
                        impl=impl), dtype, n=30)


@pytest.mark.parametrize("info, options, impl", [
    pytest.param(*param.values, impl, id=f"{param.id}-{impl}")
    for info in OPTIMIZER_INFOS for impl in sorted(info.bitwise_peer) for param in info.grid()])
def test_bitwise_the_peer_at_a_constant_lr(info, options, impl):
    """At a constant lr (the same double on both sides) the rows that claim it (the table's
    ``bitwise_peer``) run every operation the peer runs, in its order: fp32, every state,
    bit for bit (the CPU backend against the peer's fused kernel where it has one)."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in ((33, 7), (7,), (1,))]
    ps, qs = ([p.clone().requires_grad_() for p in init] for _ in range(2))
    ours = info.cls(ps, lr=0.01, impl=impl, **options)
    theirs = info.peer(qs, lr=0.01, fused=impl == "torch_fused", **options)
    for _ in range(10):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    assert ours.impl == impl
    assert_same_optimizer(ours, theirs, rtol=0.0, extra_state=info.extra_state)


def test_adamw_class_matches_torch_adam_decoupled():
    """FusedAdamWScheduled is torch.optim.Adam(decoupled_weight_decay=True)."""
    def adam_decoupled(groups, fused=False, **kw):
        return torch.optim.Adam(groups, decoupled_weight_decay=True, **kw)

    run_both(*make_pair(INFO[FusedAdamWScheduled], dict(weight_decay=0.1), torch.float64,
                        cosine(20), schedule_factory=lambda o: tls.CosineAnnealingLR(o, 20),
                        peer=adam_decoupled), torch.float64)


def test_adagrad_fills_every_sum_with_the_constructors_initial_value():
    # Adagrad alone (its state is made at construction): torch fills every parameter's sum with
    # the constructor's initial_accumulator_value, whatever a group says.
    def params(*shape):
        return [torch.zeros(shape, requires_grad=True)]

    groups = [{"params": params(3)}, {"params": params(2), "initial_accumulator_value": 0.5}]
    ours = FusedAdagradScheduled(groups, initial_accumulator_value=0.1)
    theirs = torch.optim.Adagrad([{**g, "params": [p.detach().clone().requires_grad_()
                                                  for p in g["params"]]} for g in groups],
                                 initial_accumulator_value=0.1)
    assert_same_optimizer(ours, theirs, rtol=0.0)


@pytest.mark.parametrize("info, options", representatives())
def test_group_with_lr_zero_stays_put(info, options):
    ours, theirs, sched = make_pair(info, options, torch.float32, step(7, 0.5),
                                    lr_scales=(1.0, 0.0, 2.0),
                                    schedule_factory=lambda o: tls.StepLR(o, 7, 0.5))
    frozen = [p.detach().clone() for p in ours.param_groups[1]["params"]]
    run_both(ours, theirs, sched, torch.float32)
    for p, before in zip(ours.param_groups[1]["params"], frozen):
        assert torch.equal(p, before)
    assert ours.get_last_lr()[1] == 0.0


# ---------------------------------------------------------------- lr, counters, hooks

@pytest.mark.parametrize("info, options", representatives())
def test_last_lr_is_float64_on_the_params_device(info, options):
    for device in ("cpu", "meta"):
        opt = info.cls([torch.zeros(3, device=device, requires_grad=True)], lr=0.1,
                       schedule=cosine(10), impl="reference", **options)
        assert opt.last_lr.dtype == torch.float64
        assert opt.last_lr.device.type == device
        assert opt.last_lr.shape == (1,)
        assert opt.schedule_step.dtype == torch.int64
        assert opt.schedule_step.device.type == device


@pytest.mark.parametrize("info, options", representatives())
def test_get_last_lr_before_the_first_step_is_lr0(info, options):
    ps = [torch.zeros(2, requires_grad=True) for _ in range(2)]
    opt = info.cls([{"params": ps[:1], "lr": 0.1}, {"params": ps[1:], "lr": 0.3}],
                   schedule=linear(0.25, 1.0, 4), impl="reference", **options)
    assert_close(opt.get_last_lr(), [0.025, 0.075], rtol=1e-15)


def test_schedule_step_counts_steps_without_any_grad():
    # Adam alone: the expected move is derived from Adam's update (its first step moves each
    # entry by the lr, whatever the gradient); every row's counts: the test after this one.
    p = torch.zeros(3, requires_grad=True)
    opt = FusedAdamScheduled([p], lr=0.1, schedule=step(2, 0.5), impl="reference")
    for _ in range(3):
        opt.step()
    assert int(opt.schedule_step) == 3
    assert opt.state.get(p, {}) == {}
    assert opt.get_last_lr() == [0.1 * 0.5]
    p.grad = torch.ones(3)
    opt.step()
    # The fourth step used lr(3) = 0.05: one Adam step moves each entry by lr.
    assert_close(p, torch.full((3,), -0.05), rtol=1e-6)
    assert float(opt.state[p]["step"]) == 1


@pytest.mark.parametrize("info, options", representatives())
def test_param_step_does_not_advance_without_grad(info, options):
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = info.cls([a, b], impl="reference", **options)
    for k in range(6):
        a.grad = torch.ones(3)
        b.grad = torch.ones(3) if k % 2 else None
        opt.step()
    assert float(opt.state[a]["step"]) == 6
    assert float(opt.state[b]["step"]) == 3
    assert opt.state[a]["step"].dtype == torch.float32


@pytest.mark.parametrize("info, options", representatives())
def test_step_hooks_fire_once_per_step_like_torch(info, options):
    calls = {"ours": [], "torch": []}
    ours = info.cls([torch.zeros(2, requires_grad=True)], impl="reference", **options)
    theirs = info.peer([torch.zeros(2, requires_grad=True)], **options)
    for name, opt in (("ours", ours), ("torch", theirs)):
        opt.register_step_pre_hook(lambda o, args, kw, n=name: calls[n].append("pre"))
        opt.register_step_post_hook(lambda o, args, kw, n=name: calls[n].append("post"))
        for _ in range(3):
            opt.step()
    assert calls["ours"] == calls["torch"] == ["pre", "post"] * 3


@pytest.mark.parametrize("info, options", representatives())
def test_step_returns_the_closure_loss(info, options):
    p = torch.ones(2, requires_grad=True)
    opt = info.cls([p], impl="reference", **options)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 2.0
    assert not torch.equal(p.detach(), torch.ones(2))


@pytest.mark.parametrize("info, options", representatives())
def test_zero_grad_sets_grads_to_none_by_default(info, options):
    p = torch.zeros(3, requires_grad=True)
    opt = info.cls([p], lr=0.1, **options)
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert p.grad is None
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))


# ---------------------------------------------------------------- groups and hyperparameters

def drive_torch_lr(theirs, spec, bases, k):
    """torch's groups set by hand to ``spec.lr(k, base)``: for setups torch's schedulers cannot
    follow (a group added after the scheduler was built)."""
    for group, base in zip(theirs.param_groups, bases):
        group["lr"] = float(spec.lr(k, base))


@pytest.mark.parametrize("info, options", representatives())
def test_add_param_group_steps_with_its_own_lr(info, options):
    spec = exponential(0.9)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((4,), (2, 3))]
    ps = [p.clone().requires_grad_() for p in init]
    qs = [p.clone().requires_grad_() for p in init]
    ours = info.cls([ps[0]], lr=0.01, schedule=spec, impl="reference", **options)
    theirs = info.peer([qs[0]], lr=0.01, **options)
    bases = [0.01]
    grads = torch.Generator().manual_seed(1)
    for k in range(20):
        if k == 5:
            ours.add_param_group({"params": [ps[1]], "lr": 0.05})
            theirs.add_param_group({"params": [qs[1]], "lr": 0.05})
            bases.append(0.05)
        drive_torch_lr(theirs, spec, bases, k)
        set_grads(ours, theirs, grads)
        ours.step()
        theirs.step()
        assert_same_state(ours, theirs, **TOL[torch.float64], what=f"step {k + 1}")
    # The 20th step used lr(19).
    assert_close(ours.get_last_lr(), [0.01 * 0.9 ** 19, 0.05 * 0.9 ** 19], rtol=1e-12)


@pytest.mark.parametrize("info, options", representatives())
def test_tensor_lr(info, options):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in ((5, 3), (7,))]
    ours = info.cls([p.clone().requires_grad_() for p in init], lr=torch.tensor(0.01),
                    schedule=step(4, 0.5), impl="reference", **options)
    theirs = info.peer([p.clone().requires_grad_() for p in init], lr=torch.tensor(0.01),
                       **options)
    run_both(ours, theirs, tls.StepLR(theirs, 4, 0.5), torch.float32, n=20)


@pytest.mark.parametrize("info", [p.values[0] for p in representatives()],
                         ids=lambda info: info.name)
def test_hyperparameter_changes_between_steps(info):
    """The row's ``changes``, made to every group of both optimizers before the given steps."""
    ours, theirs, sched = make_pair(info, {}, torch.float64, step(7, 0.5),
                                    schedule_factory=lambda o: tls.StepLR(o, 7, 0.5))

    def change(k):
        for opt in (ours, theirs):
            for group in opt.param_groups:
                group.update(info.changes.get(k, {}))

    run_both(ours, theirs, sched, torch.float64, on_step=change)
