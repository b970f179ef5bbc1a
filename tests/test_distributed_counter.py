"""The schedule counter in the parameter groups, in one process: what DCP and ZeRO do to an
optimizer, done by hand (the 2-rank runs are in test_distributed.py).

* DCP's ``_init_optim_state`` (a step at lr 0 with zero gradients, to create state) creates the
  state and moves nothing: not the counter, not the weights, even under a schedule whose lr at
  base 0 is not 0 (``cosine(eta_min=...)``), and the run that follows is bitwise a fresh one's.
* A checkpoint that kept only ``state`` and ``param_groups`` (DCP) restores the counter.
* ZeRO's load (states put into ``opt.state``, group entries copied into ``opt.param_groups``,
  no ``load_state_dict``) is adopted by the first read (``schedule_step``, ``last_lr``,
  ``get_last_lr()``, ``state_dict()``) or step, eager or compiled (the compiled step is traced
  again on the new state tensors, and adopts while it traces): the run is bitwise the
  uninterrupted one.
* A bad group counter raises and changes nothing; torch.optim keeps it both ways.
"""

import copy

import pytest
import torch
from conftest import assert_same_optimizer
from optimizers import ANY

if not torch.distributed.is_available():
    pytest.skip("needs torch.distributed", allow_module_level=True)

from torch.distributed.checkpoint.state_dict import _init_optim_state  # noqa: E402

from fused_lrs.optim.checkpoint import COUNTER  # noqa: E402
from fused_lrs.schedules import cosine  # noqa: E402

SPEC = cosine(20, 1e-3)          # lr(t, base 0) = eta_min-ish > 0: lr 0 does not mean no step
K, N = 3, 7


def make(seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in ((4, 3), (5,))]
    return ANY.cls(params, lr=0.01, schedule=SPEC, **ANY.representative)


def params_of(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def resumed_from(opt):
    """A fresh optimizer whose parameters hold ``opt``'s (the model half of a checkpoint)."""
    resumed = make()
    with torch.no_grad():
        for p, q in zip(params_of(resumed), params_of(opt)):
            p.copy_(q)
    return resumed


def train(opt, start, stop, step=None):
    for k in range(start, stop):
        for i, p in enumerate(params_of(opt)):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * k + i))
        (step or opt.step)()


def assert_identical(a, b):
    assert_same_optimizer(a, b, rtol=0, atol=0)


def test_dcp_state_initialisation_moves_nothing():
    opt, plain = make(), make()
    before = [p.detach().clone() for p in params_of(opt)]
    _init_optim_state(opt)
    assert int(opt.schedule_step) == 0
    assert all(torch.equal(p, q) for p, q in zip(params_of(opt), before))
    assert all(float(opt.state[p]["step"]) == 0 for p in params_of(opt))
    assert all(p.grad is None for p in params_of(opt))
    train(opt, 0, K)
    train(plain, 0, K)
    assert_identical(opt, plain)


def test_a_checkpoint_of_state_and_groups_alone_restores_the_counter():
    opt, uninterrupted = make(), make()
    train(opt, 0, K)
    sd = copy.deepcopy(opt.state_dict())
    del sd["fused_lrs"]                             # what DCP keeps
    assert all(int(g[COUNTER]) == K for g in sd["param_groups"])
    resumed = resumed_from(opt)
    resumed.load_state_dict(sd)
    assert all(g[COUNTER] is resumed.schedule_step for g in resumed.param_groups)
    train(resumed, K, N)
    train(uninterrupted, 0, N)
    assert_identical(resumed, uninterrupted)


def zero_load(opt, sd):
    """What ZeroRedundancyOptimizer.load_state_dict does to its local optimizer: state copied
    in (0-dim tensors moved to the CPU), then every group entry but "params" synced into the
    local optimizer's groups."""
    ours = params_of(opt)
    for i, state in sd["state"].items():
        opt.state[ours[i]] = {k: v.clone() for k, v in state.items()}
    for group, saved in zip(opt.param_groups, sd["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})


READS = {"schedule_step": lambda opt: int(opt.schedule_step),
         "last_lr": lambda opt: opt.last_lr.tolist(),
         "get_last_lr": lambda opt: opt.get_last_lr(),
         "state_dict": lambda opt: int(opt.state_dict()["fused_lrs"]["t"])}


@pytest.mark.parametrize("read", READS)
def test_zero_style_load_reads_right_away(read):
    opt = make()
    train(opt, 0, K)
    sd, expected = copy.deepcopy(opt.state_dict()), READS[read](opt)
    resumed = resumed_from(opt)
    zero_load(resumed, sd)
    assert READS[read](resumed) == expected


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_zero_style_load_is_adopted_at_the_next_step(compiled):
    opt, uninterrupted = make(), make()
    train(opt, 0, K)
    sd = copy.deepcopy(opt.state_dict())
    resumed = resumed_from(opt)
    step = torch.compile(resumed.step, backend="aot_eager") if compiled else None
    if compiled:        # compiled and run on the fresh optimizer first; its parameters put back
        train(resumed, 0, 1, step)
        with torch.no_grad():
            for p, q in zip(params_of(resumed), params_of(opt)):
                p.copy_(q)
    zero_load(resumed, sd)
    train(resumed, K, N, step)
    train(uninterrupted, 0, N)
    assert_identical(resumed, uninterrupted)


@pytest.mark.parametrize("value, match", [
    (torch.tensor(-2), "negative"), (torch.tensor(1.5), "integer count"),
    ("3", "integer count"), (torch.tensor([1, 2]), "integer count")])
def test_a_bad_group_counter_raises_and_changes_nothing(value, match):
    opt = make()
    train(opt, 0, K)
    sd = copy.deepcopy(opt.state_dict())
    del sd["fused_lrs"]
    sd["param_groups"][0][COUNTER] = value
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert int(after["fused_lrs"]["t"]) == K
    assert all(torch.equal(after["state"][i][k], before["state"][i][k])
               for i in before["state"] for k in before["state"][i])


def test_torch_keeps_the_group_counter_both_ways():
    opt = make()
    train(opt, 0, K)
    theirs = ANY.peer([p.detach().clone().requires_grad_() for p in params_of(opt)])
    theirs.load_state_dict(opt.state_dict())
    back = make()
    back.load_state_dict(theirs.state_dict())       # no "fused_lrs" entry: torch drops it
    assert int(back.schedule_step) == K


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_torch_load_reads_every_schedule_spec(tmp_path):
    """ZeRO's checkpoint holds ``schedule=`` itself (its groups are its keyword arguments):
    torch.load's default weights_only=True must read every spec class."""
    from schedule_table import SCHEDULES

    from fused_lrs.schedules import Schedule
    allowed = set(torch.serialization.get_safe_globals())
    assert set(_subclasses(Schedule)) <= allowed
    specs = [spec for _, _, spec in SCHEDULES]
    torch.save({"param_groups": [{"schedule": s} for s in specs]}, tmp_path / "zero.pt")
    loaded = torch.load(tmp_path / "zero.pt")
    assert [g["schedule"] for g in loaded["param_groups"]] == specs
