"""Bad input: a clear exception that names the problem, and nothing modified."""

import copy
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from fused_lrs.optim import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled
from fused_lrs.schedules import cosine

CLASSES = [FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled]
NAN = math.nan


def params(*shapes, **kw):
    return [torch.randn(s, **kw).requires_grad_() for s in shapes]


def snapshot(opt):
    """Everything a failed call must leave as it was, parameters named by position."""
    flat = [p for g in opt.param_groups for p in g["params"]]
    index = {id(p): i for i, p in enumerate(flat)}
    return {"groups": [{k: [index[id(p)] for p in v] if k == "params" else copy.deepcopy(v)
                        for k, v in g.items()} for g in opt.param_groups],
            "state": {index[id(p)]: {k: v.clone() for k, v in s.items()}
                      for p, s in opt.state.items()},
            "params": [p.detach().clone() for p in flat], "t": int(opt.schedule_step),
            "device": opt._device}


def assert_same(a, b):
    assert a["groups"] == b["groups"]
    assert a["t"] == b["t"] and a["device"] == b["device"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k]), (i, k)
    assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))


def stepped(cls, **kw):
    """An optimizer of ``cls`` with two groups, after two steps (so it has state)."""
    ps = params((3, 2), (4,), (2,))
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}], schedule=cosine(10),
              impl="reference", **kw)
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

@pytest.mark.parametrize("cls", CLASSES)
def test_sparse_gradient_changes_nothing(cls):
    opt = with_new_param(stepped(cls, **({"momentum": 0.9} if cls is FusedSGDScheduled else {})))
    before = snapshot(opt)
    p = opt.param_groups[1]["params"][0]
    p.grad = torch.sparse_coo_tensor([[0]], [1.0], p.shape, check_invariants=True)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert_same(snapshot(opt), before)


def test_gradient_of_the_wrong_dtype_changes_nothing():
    opt = with_new_param(stepped(FusedAdamScheduled))
    before = snapshot(opt)
    p = opt.param_groups[1]["params"][0]
    p.grad_dtype = None  # torch refuses such a gradient unless told to allow it
    try:
        p.grad = torch.ones(2, dtype=torch.float64)
    except RuntimeError:
        pytest.skip("this torch refuses a gradient of another dtype")
    with pytest.raises(RuntimeError, match="does not match its parameter"):
        opt.step()
    assert_same(snapshot(opt), before)


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
@pytest.mark.parametrize("cls", CLASSES)
def test_bad_parameters(cls, make, match):
    with pytest.raises(ValueError, match=match):
        cls(make())


@pytest.mark.parametrize("cls", CLASSES)
def test_parameter_in_two_groups(cls):
    ps = params(3, 2)
    with pytest.raises(ValueError, match="more than one parameter group"):
        cls([{"params": ps}, {"params": ps[:1]}])


@pytest.mark.parametrize("cls", CLASSES)
def test_devices_across_groups(cls):
    with pytest.raises(ValueError, match="one device"):
        cls([{"params": params(3)}, {"params": params(3, device="meta")}])


# ---------------------------------------------------------------- hyperparameters

ADAM_BAD = [("lr", -1e-3), ("lr", NAN), ("lr", torch.tensor([1e-3, 1e-3])), ("eps", -1e-8),
            ("eps", NAN), ("weight_decay", -0.1), ("weight_decay", NAN),
            ("betas", (-0.1, 0.999)), ("betas", (0.9, 1.0)), ("betas", (1.0, 0.9)),
            ("betas", (NAN, 0.999)), ("betas", (0.9, NAN)), ("betas", (0.9,))]
SGD_BAD = [("lr", -0.1), ("lr", NAN), ("momentum", -0.9), ("momentum", NAN),
           ("dampening", -0.1), ("dampening", NAN), ("dampening", 1.5),
           ("weight_decay", -0.1), ("weight_decay", NAN)]
NAMES = {"lr": "learning rate", "eps": "epsilon", "weight_decay": "weight_decay",
         "betas": "beta", "momentum": "momentum", "dampening": "dampening"}
HYPER = ([pytest.param(cls, k, v, id=f"{cls.__name__}-{k}={v}") for k, v in ADAM_BAD
          for cls in CLASSES[:2]]
         + [pytest.param(FusedSGDScheduled, k, v, id=f"SGD-{k}={v}") for k, v in SGD_BAD])


@pytest.mark.parametrize("cls, key, value", HYPER)
def test_bad_hyperparameter(cls, key, value):
    with pytest.raises(ValueError, match=NAMES[key] if key != "lr" else "(learning rate|lr)"):
        cls(params(3), **{key: value})
    # Also in a group of its own, whose values torch itself never checks.
    with pytest.raises(ValueError, match=NAMES[key] if key != "lr" else "(learning rate|lr)"):
        cls([{"params": params(3)}, {"params": params(2), key: value}])


@pytest.mark.parametrize("cls, key, value", HYPER)
def test_add_param_group_with_a_bad_group_changes_nothing(cls, key, value):
    opt = stepped(cls)
    before = snapshot(opt)
    with pytest.raises(ValueError):
        opt.add_param_group({"params": params(2), key: value})
    assert_same(snapshot(opt), before)


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize("make, match", BAD_PARAMS[:-1] + [
    pytest.param(lambda: params(3, device="meta"), "one device", id="meta-after-cpu")])
@pytest.mark.parametrize("cls", CLASSES)
def test_add_param_group_with_bad_parameters_changes_nothing(cls, make, match):
    opt = stepped(cls)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": make()})
    assert_same(snapshot(opt), before)


@pytest.mark.parametrize("cls", CLASSES)
def test_add_param_group_with_a_parameter_of_another_group_changes_nothing(cls):
    opt = stepped(cls)
    before = snapshot(opt)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params(2) + opt.param_groups[0]["params"][:1]})
    assert_same(snapshot(opt), before)


def test_nesterov_needs_momentum_and_no_dampening():
    with pytest.raises(ValueError, match="Nesterov"):
        FusedSGDScheduled(params(3), nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        FusedSGDScheduled(params(3), momentum=0.9, dampening=0.1, nesterov=True)


# ---------------------------------------------------------------- schedule, impl, flags

@pytest.mark.parametrize("schedule", ["cosine(T_max=10)", 0.5, lambda t: 1.0, cosine],
                         ids=["str", "float", "lambda", "factory"])
@pytest.mark.parametrize("cls", CLASSES)
def test_schedule_that_is_not_a_spec(cls, schedule):
    with pytest.raises(TypeError, match="schedule spec from fused_lrs.schedules"):
        cls(params(3), schedule=schedule)
    opt = stepped(cls)
    before = (opt.schedule, int(opt.schedule_step))
    with pytest.raises(TypeError, match="schedule spec"):
        opt.set_schedule(schedule)
    assert (opt.schedule, int(opt.schedule_step)) == before


@pytest.mark.parametrize("cls", CLASSES)
def test_torch_scheduler_as_schedule_hints_at_from_torch(cls):
    sched = tls.StepLR(torch.optim.SGD(params(3), lr=0.1), step_size=3)
    with pytest.raises(TypeError, match=r"from_torch\(scheduler\)"):
        cls(params(3), schedule=sched)
    opt = stepped(cls)
    with pytest.raises(TypeError, match="from_torch"):
        opt.set_schedule(sched)


@pytest.mark.parametrize("t", [-1, 1.5, True, "3"])
def test_set_schedule_with_a_bad_position_changes_nothing(t):
    opt = stepped(FusedAdamScheduled)
    before = (opt.schedule, int(opt.schedule_step))
    with pytest.raises(ValueError, match="t must be an integer"):
        opt.set_schedule(cosine(5), t)
    assert (opt.schedule, int(opt.schedule_step)) == before


@pytest.mark.parametrize("cls", CLASSES)
def test_differentiable_is_not_implemented(cls):
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        cls(params(3), differentiable=True)


@pytest.mark.parametrize("cls", CLASSES)
def test_unknown_impl(cls):
    with pytest.raises(ValueError, match="impl must be one of .*'bogus'"):
        cls(params(3), impl="bogus")
