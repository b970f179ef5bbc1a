"""What happens to an optimizer's state between steps: cleared, recast, reloaded, copied,
compiled and collected. Each case came from a review that reproduced a defect; each test fails
without its fix.
"""

import gc
import weakref

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import ANY, INFO, representatives

from fused_lrs import (
    FusedAdamScheduled,
    FusedAdamWScheduled,
    FusedRMSpropScheduled,
    FusedSGDScheduled,
)
from fused_lrs.optim import op
from fused_lrs.schedules import cosine, plateau

# Every row's representative where its state is concerned; ANY for what the backends share.
CPU_IMPLS = ["torch_fused", "reference"]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("info, options", representatives())
def test_state_clear_resets_the_state_as_in_torch(info, options, impl):
    p = torch.nn.Parameter(torch.randn(8))
    q = torch.nn.Parameter(p.detach().clone())
    ours = info.cls([p], lr=0.1, impl=impl, **options)
    # torch_fused runs the peer's fused kernel where it has one: then that is the peer.
    theirs = info.peer([q], lr=0.1, fused=impl == "torch_fused", **options)
    gen = torch.Generator().manual_seed(0)
    for k in range(4):
        g = torch.randn(8, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        if k == 1:
            ours.state.clear()
            theirs.state.clear()
    assert_same_optimizer(ours, theirs, rtol=1e-5, atol=1e-7, extra_state=info.extra_state)
    assert set(ours.state_dict()["state"]) == {0}


@pytest.mark.parametrize("edit", ["replace", "reorder"])
@pytest.mark.parametrize("impl", [*CPU_IMPLS, "triton"])
def test_a_group_list_edited_in_place_steps_the_tensors_it_now_holds(impl, edit):
    # torch reads param_groups every step: a tensor put in place of another, or the list
    # reordered, steps the tensors the list holds now, each with its own gradient (sizes 3 and
    # 5: a stale description would hand a tensor another's gradient). The old tensor keeps a
    # stale gradient and must not move.
    device = KERNEL_DEVICE if impl == "triton" else "cpu"
    init = [torch.randn(3), torch.randn(5), torch.randn(3)]
    runs = []
    for cls, kw in ((ANY.cls, dict(impl=impl)), (ANY.peer, {})):
        a, b, new = (torch.nn.Parameter(t.clone().to(device)) for t in init)
        opt = cls([a, b], lr=0.1, **kw)
        a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
        opt.step()
        params = opt.param_groups[0]["params"]
        if edit == "replace":
            params[0] = new
        else:
            params.reverse()
        gen = torch.Generator().manual_seed(1)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        a_before = a.detach().clone()
        opt.step()
        runs.append((opt, a, a_before))
    (ours, a, a_before), (theirs, *_) = runs
    assert_same_optimizer(ours, theirs, rtol=1e-5, atol=1e-7)
    if edit == "replace":
        assert torch.equal(a.detach(), a_before), "the replaced tensor moved"


# Options whose state tensor a group keeps only while the option is on, (on, then off).
TURNED_OFF = [
    (FusedSGDScheduled, dict(momentum=0.9, dampening=0.5), dict(momentum=0.0)),
    (FusedAdamScheduled, dict(amsgrad=True), dict(amsgrad=False)),
    (FusedAdamWScheduled, dict(amsgrad=True), dict(amsgrad=False)),
    (FusedRMSpropScheduled, dict(centered=True, momentum=0.9), dict(centered=False)),
    (FusedRMSpropScheduled, dict(centered=True, momentum=0.9), dict(momentum=0.0)),
]


@pytest.mark.parametrize("impl", [*CPU_IMPLS, "triton"])
@pytest.mark.parametrize("cls, on, off", TURNED_OFF,
                         ids=[f"{c.__name__}-{next(iter(off))}" for c, _, off in TURNED_OFF])
def test_an_option_turned_off_mid_run_steps_as_torch_does(cls, on, off, impl):
    # torch reads the group's options every step: the state tensor stays, untouched, and the
    # update runs without it. Two groups, the option turned off in the second only.
    device = KERNEL_DEVICE if impl == "triton" else "cpu"
    info = INFO[cls]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(5, generator=gen) for _ in range(2)]
    runs = []
    for make, kw in ((cls, dict(impl=impl)), (info.peer, {})):
        ps = [torch.nn.Parameter(t.clone().to(device)) for t in init]
        opt = make([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.01, **on, **kw)
        runs.append((ps, opt))
    for k in range(5):
        if k == 2:
            for _, opt in runs:
                opt.param_groups[1].update(off)
        grads = [torch.randn(5, generator=gen) for _ in range(2)]
        for ps, opt in runs:
            for p, g in zip(ps, grads):
                p.grad = g.to(device)
            opt.step()
    (_, ours), (_, theirs) = runs
    assert_same_optimizer(ours, theirs, rtol=1e-5, atol=1e-7, extra_state=info.extra_state)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_hold_schedule_on_skip_may_change_after_the_first_step(impl):
    p = torch.nn.Parameter(torch.randn(8))
    opt = ANY.cls([p], lr=0.1, impl=impl)
    p.grad = torch.randn(8)
    opt.step()
    opt.hold_schedule_on_skip = True
    opt.grad_scale, opt.found_inf = None, torch.ones(())     # what GradScaler hands over
    opt.step()
    assert int(opt.schedule_step) == 1                       # held: the skip did not count


def test_a_refused_compiled_step_inserts_no_empty_state(monkeypatch):
    # Under CUDA-graph capture (monkeypatched here) a step that would make state is refused.
    from fused_lrs.optim import compiled

    p = torch.nn.Parameter(torch.randn(4))
    opt = ANY.cls([p], lr=0.1)
    p.grad = torch.randn(4)
    monkeypatch.setattr(compiled, "capturing", lambda opt: True)
    with pytest.raises(Exception, match="no optimizer state"):
        torch.compile(opt.step, fullgraph=True, backend="eager")()
    assert len(opt.state) == 0
    opt.load_state_dict(opt.state_dict())                    # its own checkpoint still loads


def test_torch_fused_refuses_a_model_cast_after_build_and_changes_nothing():
    a, b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
    opt = ANY.cls([{"params": [a]}, {"params": [b]}], lr=0.1, impl="torch_fused")
    a.grad, b.grad = torch.randn(8), torch.randn(8)
    opt.step()
    for p in (a, b):
        p.data = p.data.bfloat16()
        p.grad = torch.randn(8, dtype=torch.bfloat16)
    before = (a.detach().clone(), b.detach().clone(), opt.state[a]["step"].item(),
              opt.state[b]["step"].item(), int(opt.schedule_step))
    with pytest.raises(TypeError, match="was the model cast after the optimizer was built"):
        opt.step()
    after = (a.detach(), b.detach(), opt.state[a]["step"].item(), opt.state[b]["step"].item(),
             int(opt.schedule_step))
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert after[2:] == before[2:]


def test_a_checkpoint_with_an_invalid_schedule_changes_nothing():
    p = torch.nn.Parameter(torch.randn(4))
    opt = ANY.cls([p], lr=0.1, schedule=cosine(10))
    p.grad = torch.randn(4)
    saved = opt.state_dict()
    saved["fused_lrs"] = {**saved["fused_lrs"], "momentum_schedule": repr(plateau())}
    saved["param_groups"][0]["lr"] = 0.5
    opt.step()
    before = (opt.param_groups[0]["lr"], {k: v.clone() for k, v in opt.state[p].items()},
              opt.momentum_schedule, int(opt.schedule_step))
    with pytest.raises(ValueError, match="momentum_schedule holds a plateau"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] == before[0] and opt.momentum_schedule is None
    assert all(torch.equal(opt.state[p][k], v) for k, v in before[1].items())
    assert int(opt.schedule_step) == before[3]


def test_loaded_step_counts_are_copies_not_the_source_optimizers():
    # B loads A's live state_dict; A's counts must keep advancing (torch_fused re-points the
    # step tensors it plans with into one buffer).
    a = torch.nn.Parameter(torch.randn(4))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = ANY.cls([a], lr=0.1)
    a.grad = torch.randn(4)
    opt_a.step()
    opt_b = ANY.cls([b], lr=0.1)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.state[b]["step"] is not opt_a.state[a]["step"]
    b.grad = torch.randn(4)
    opt_b.step()
    opt_a.step()
    opt_a.step()
    assert opt_a.state[a]["step"].item() == 3 and opt_b.state[b]["step"].item() == 2


def test_compiled_steps_keep_one_backend_per_optimizer_and_free_it():
    # aot_eager hands the op clones, whose addresses change every call: one backend per
    # optimizer, released with it, not one per call kept forever.
    refs = []
    for _ in range(2):
        p = torch.nn.Parameter(torch.randn(64))
        opt = ANY.cls([p], lr=0.1)
        opt.init_state()
        owner = opt._owner

        @torch.compile(fullgraph=True, backend="aot_eager")
        def step(opt=opt):
            opt.step()
        for _ in range(4):
            p.grad = torch.randn(64)
            step()
        assert [k for k in op._BACKENDS if k[2] == owner] == [("torch_fused", "cpu", owner, False)]
        refs.append(weakref.ref(p))
        del opt, step, p
        torch._dynamo.reset()
        gc.collect()
        assert not [k for k in op._BACKENDS if k[2] == owner]
    assert all(r() is None for r in refs)


def test_the_kernel_refuses_a_new_gradient_of_another_dtype_or_layout():
    # New gradient addresses on an otherwise unchanged step (zero_grad(set_to_none=True)):
    # their dtype and strides are checked, not only their addresses. Plain SGD, whose step
    # after the refusal has a value to derive (p - lr g).
    p = torch.nn.Parameter(torch.arange(6.0, device=KERNEL_DEVICE).reshape(2, 3))
    opt = FusedSGDScheduled([p], lr=1.0, impl="triton")
    p.grad = torch.ones_like(p)
    opt.step()
    before, t = p.detach().clone(), int(opt.schedule_step)
    p.grad = torch.arange(6.0, device=KERNEL_DEVICE).reshape(3, 2).t()   # transposed strides
    with pytest.raises(ValueError, match="in the parameter's layout"):
        opt.step()
    assert torch.equal(p.detach(), before) and int(opt.schedule_step) == t
    p.grad = torch.ones_like(p)
    opt.step()                                              # a good gradient steps again
    assert_close(p, before - 1.0, rtol=0, atol=0, what="param")


def test_a_new_backend_refuses_to_be_captured_before_an_eager_step(monkeypatch):
    from fused_lrs.optim.backends.triton import TritonBackend

    p = torch.nn.Parameter(torch.randn(64, device=KERNEL_DEVICE))
    opt = ANY.cls([p], lr=0.1, impl="triton")
    p.grad = torch.randn_like(p)
    opt.step()
    opt.set_schedule(cosine(10))            # a new backend at the next step
    monkeypatch.setattr(TritonBackend, "_capturing", lambda self: True)
    before, t = p.detach().clone(), int(opt.schedule_step)
    with pytest.raises(RuntimeError, match="take one eager step"):
        opt.step()
    assert torch.equal(p.detach(), before) and int(opt.schedule_step) == t
