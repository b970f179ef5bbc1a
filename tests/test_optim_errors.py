"""Bad input: a clear exception that names the problem, and nothing modified."""

import inspect

import pytest
import torch
from conftest import assert_identical, snapshot
from optimizers import ANY, INFO, OPTIMIZER_INFOS, infos
from torch.optim import lr_scheduler as tls

from fused_lrs import FusedLionScheduled, FusedSGDScheduled
from fused_lrs.schedules import cosine

INFOS = infos()


def params(*shapes, **kw):
    return [torch.randn(s, **kw).requires_grad_() for s in shapes]


def stepped(info):
    """An optimizer of ``info``'s representative with two groups, after two steps (so it has
    state)."""
    ps = params((3, 2), (4,), (2,))
    opt = info.cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}], schedule=cosine(10),
                   impl="reference", **info.representative)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt


def with_new_param(opt):
    """``opt`` with a third group whose parameter has a gradient and no state yet: a step that
    made state before checking every gradient would show here."""
    new = params(5)[0]
    opt.add_param_group({"params": [new]})
    new.grad = torch.ones(5)
    return opt


# ---------------------------------------------------------------- at step()

@pytest.mark.parametrize("info", INFOS)
def test_sparse_gradient_changes_nothing(info):
    opt = with_new_param(stepped(info))
    before = snapshot(opt)
    p = opt.param_groups[1]["params"][0]
    p.grad = torch.sparse_coo_tensor([[0]], [1.0], p.shape, check_invariants=True)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert_identical(snapshot(opt), before)


@pytest.mark.parametrize("info", INFOS)
def test_gradient_of_the_wrong_dtype_changes_nothing(info):
    opt = with_new_param(stepped(info))
    before = snapshot(opt)
    p = opt.param_groups[1]["params"][0]
    p.grad_dtype = None  # torch refuses such a gradient unless told to allow it
    try:
        p.grad = torch.ones(2, dtype=torch.float64)
    except RuntimeError:
        pytest.skip("this torch refuses a gradient of another dtype")
    with pytest.raises(RuntimeError, match="does not match its parameter"):
        opt.step()
    assert_identical(snapshot(opt), before)


# ---------------------------------------------------------------- parameters

BAD_PARAMS = [
    pytest.param(lambda: params(3, dtype=torch.complex64), "complex", id="complex"),
    pytest.param(lambda: [torch.zeros(3, dtype=torch.int64)], "floating point", id="int64"),
    pytest.param(lambda: [torch.zeros(3, dtype=torch.bool)], "floating point", id="bool"),
    pytest.param(lambda: 2 * params(3), "same parameter twice", id="twice-in-a-group"),
    pytest.param(lambda: params(3) + params(2, device="meta"), "one device", id="cpu-and-meta"),
    pytest.param(lambda: [], "empty parameter list", id="empty"),
]


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize("make, match", BAD_PARAMS)
@pytest.mark.parametrize("info", INFOS)
def test_bad_parameters(info, make, match):
    with pytest.raises(ValueError, match=match):
        info.cls(make())


@pytest.mark.parametrize("info", INFOS)
def test_parameter_in_two_groups(info):
    ps = params(3, 2)
    with pytest.raises(ValueError, match="more than one parameter group"):
        info.cls([{"params": ps}, {"params": ps[:1]}])


@pytest.mark.parametrize("info", INFOS)
def test_devices_across_groups(info):
    with pytest.raises(ValueError, match="one device"):
        info.cls([{"params": params(3)}, {"params": params(3, device="meta")}])


# ---------------------------------------------------------------- hyperparameters

# Each row's invalid values, with the message that names the problem.
HYPER = [pytest.param(info, key, value, match, id=f"{info.name}-{key}={value}")
         for info in OPTIMIZER_INFOS for key, value, match in info.invalid]


@pytest.mark.parametrize("info, key, value, match", HYPER)
def test_bad_hyperparameter(info, key, value, match):
    with pytest.raises(ValueError, match=match):
        info.cls(params(3), **{key: value})
    # Also in a group of its own, whose values torch itself never checks.
    with pytest.raises(ValueError, match=match):
        info.cls([{"params": params(3)}, {"params": params(2), key: value}])


@pytest.mark.parametrize("info, key, value, match", HYPER)
def test_the_peer_refuses_the_same_values_with_the_same_message(info, key, value, match):
    with pytest.raises(ValueError, match=match) as ours:
        info.cls(params(3), **{key: value})
    if (key, repr(value)) in {(k, repr(v)) for k, v in info.peer_unchecked}:
        try:            # the table says the peer does not check it: it must still not
            info.peer(params(3), **{key: value})
        except ValueError as theirs:
            raise AssertionError(f"{info.record.peer} refuses {key}={value!r} ({theirs}): "
                                 "drop it from the row's peer_unchecked") from None
        except Exception:   # noqa: BLE001  (another error: torch's Adam indexes betas[1])
            pass
    elif info.record.peer.startswith("torch."):
        with pytest.raises(ValueError) as theirs:
            info.peer(params(3), **{key: value})
        assert str(ours.value) == str(theirs.value)
    else:       # lion_pytorch asserts (or fails comparing a 2-element lr)
        with pytest.raises((AssertionError, RuntimeError)):
            info.peer(params(3), **{key: value})


@pytest.mark.parametrize("info, key, value, match", HYPER)
def test_add_param_group_with_a_bad_group_changes_nothing(info, key, value, match):
    opt = stepped(info)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": params(2), key: value})
    assert_identical(snapshot(opt), before)


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize("make, match", BAD_PARAMS[:-1] + [
    pytest.param(lambda: params(3, device="meta"), "one device", id="meta-after-cpu")])
@pytest.mark.parametrize("info", INFOS)
def test_add_param_group_with_bad_parameters_changes_nothing(info, make, match):
    opt = stepped(info)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": make()})
    assert_identical(snapshot(opt), before)


@pytest.mark.parametrize("info", INFOS)
def test_add_param_group_with_a_parameter_of_another_group_changes_nothing(info):
    opt = stepped(info)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params(2) + opt.param_groups[0]["params"][:1]})
    assert_identical(snapshot(opt), before)


def test_nesterov_needs_momentum_and_no_dampening():
    # SGD alone: a combination of its own options, which ``invalid`` (one value at a time)
    # cannot express.
    with pytest.raises(ValueError, match="Nesterov"):
        FusedSGDScheduled(params(3), nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        FusedSGDScheduled(params(3), momentum=0.9, dampening=0.1, nesterov=True)


def test_lion_arguments():
    # Lion alone: its peer (lion_pytorch) asserts instead of raising, and takes arguments of
    # its own.
    with pytest.raises(ValueError, match="Invalid learning rate: 0.0"):
        FusedLionScheduled(params(3), lr=0.0)      # lion_pytorch asserts lr > 0
    with pytest.raises(AssertionError):
        INFO[FusedLionScheduled].peer(params(3), lr=0.0)
    with pytest.raises(ValueError, match="expected a pair"):
        FusedLionScheduled(params(3), betas=(0.9,))
    # beta = 1 is allowed, as in lion_pytorch; use_triton is accepted and changes nothing.
    opt = FusedLionScheduled(params(3), betas=(1.0, 1.0), use_triton=True, impl="reference")
    assert opt.param_groups[0]["betas"] == (1.0, 1.0)


# ---------------------------------------------------------------- schedule, impl, flags

@pytest.mark.parametrize("schedule", ["cosine(T_max=10)", 0.5, lambda t: 1.0, cosine],
                         ids=["str", "float", "lambda", "factory"])
@pytest.mark.parametrize("info", INFOS)
def test_schedule_that_is_not_a_spec(info, schedule):
    with pytest.raises(TypeError, match="schedule spec from fused_lrs.schedules"):
        info.cls(params(3), schedule=schedule)
    opt = stepped(info)
    before = (opt.schedule, int(opt.schedule_step))
    with pytest.raises(TypeError, match="schedule spec"):
        opt.set_schedule(schedule)
    assert (opt.schedule, int(opt.schedule_step)) == before


@pytest.mark.parametrize("info", INFOS)
def test_torch_scheduler_as_schedule_hints_at_from_torch(info):
    sched = tls.StepLR(info.peer(params(3), lr=0.1), step_size=3)
    with pytest.raises(TypeError, match=r"from_torch\(scheduler\)"):
        info.cls(params(3), schedule=sched)
    opt = stepped(info)
    with pytest.raises(TypeError, match="from_torch"):
        opt.set_schedule(sched)


@pytest.mark.parametrize("info", [p for p in INFOS if p.values[0].record.momentum is None])
def test_momentum_schedule_without_a_momentum_is_refused(info):
    with pytest.raises(ValueError, match=f"momentum_schedule: {info.record.peer} has no "
                                         "momentum coefficient"):
        info.cls(params(3), momentum_schedule=cosine(10))


@pytest.mark.parametrize("t", [-1, 1.5, True, "3"])
def test_set_schedule_with_a_bad_position_changes_nothing(t):
    opt = stepped(ANY)
    before = (opt.schedule, int(opt.schedule_step))
    with pytest.raises(ValueError, match="t must be an integer"):
        opt.set_schedule(cosine(5), t)
    assert (opt.schedule, int(opt.schedule_step)) == before


@pytest.mark.parametrize("info", INFOS)
def test_differentiable_is_not_implemented(info):
    if "differentiable" not in inspect.signature(info.cls).parameters:
        pytest.skip(f"{info.record.peer} takes no differentiable")
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        info.cls(params(3), differentiable=True)


@pytest.mark.parametrize("info", INFOS)
def test_unknown_impl(info):
    with pytest.raises(ValueError, match="impl must be one of .*'bogus'"):
        info.cls(params(3), impl="bogus")
