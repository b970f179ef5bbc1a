"""plateau(...) and opt.report(metric): torch's ReduceLROnPlateau, on the device.

Against torch: ANY's peer (``tests/optimizers.py``) with ReduceLROnPlateau and ANY with
``plateau(...)`` take the same steps and get the same metrics. After every report the fused
optimizer's lr equals the torch group's lr to 1e-15 relative (the fused side stores the scale lr
/ base_lr, so base_lr * scale is within an ulp of torch's lr), its counters equal torch's
``best``, ``num_bad_epochs``, ``cooldown_counter`` and ``last_epoch`` exactly, and the
parameters agree to 1e-6 relative (fp32 rounding over 20 steps).
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch._dynamo
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from hypothesis import given, settings
from hypothesis import strategies as st
from optimizers import ANY, representatives
from torch._dynamo.testing import CompileCounterWithBackend
from torch.optim import lr_scheduler as tlr

import fused_lrs
from fused_lrs import schedules as S

# The plateau is a schedule: one row carries these tests, and from_torch runs every row.
FUSED, OPTIONS = ANY.cls, ANY.representative


def _table(opt):
    return opt._schedule_state.table


def _plateau(opt):
    return opt._schedule_state.plateau

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)
LRS = (0.5, 0.08)   # two groups, two base lrs


def params(seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(5, generator=gen).to(device).requires_grad_(),
            torch.randn(3, generator=gen).to(device).requires_grad_()]


def groups(ps):
    return [{"params": [ps[0]], "lr": LRS[0]}, {"params": [ps[1]], "lr": LRS[1]}]


def grad(k, p):
    return torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + k)).to(p.device)


def counters(sched) -> list[float]:
    return [sched.best, sched.num_bad_epochs, sched.cooldown_counter, sched.last_epoch]


def run_both(config, metrics, impl="reference", device="cpu", as_tensor=True):
    """Step a torch pair and the fused optimizer on the same gradients and metrics; check the
    lrs and counters after every report, the parameters at the end."""
    ps, qs = params(device=device), params(device=device)
    opt = ANY.peer(groups(ps), **OPTIONS)
    sched = tlr.ReduceLROnPlateau(opt, **config)
    fused = FUSED(groups(qs), schedule=S.plateau(**config), impl=impl, **OPTIONS)
    for k, m in enumerate(metrics):
        for p, q in zip(ps, qs):
            p.grad, q.grad = grad(k, p), grad(k, q)
        opt.step()
        fused.step()
        metric = torch.tensor(m, device=device) if as_tensor else m  # fp32 tensor, or a float
        sched.step(metric)
        fused.report(metric)
        what = f"after report {k} ({m}) of {metrics}, {config}"
        assert_close(fused.last_lr, [g["lr"] for g in opt.param_groups], rtol=1e-15, what=what)
        assert _plateau(fused).tolist() == counters(sched), what
    for p, q in zip(ps, qs):
        assert_close(q, p, rtol=1e-6, atol=1e-7, what="params")
    return fused


METRIC = st.one_of(st.sampled_from([1.0, 0.99, 0.9999, 1.0001, 2.0, 0.5, -1.0, math.nan,
                                    math.inf, -math.inf]),
                   st.floats(-2.0, 2.0, allow_nan=False))


@SETTINGS
@given(mode=st.sampled_from(["min", "max"]), threshold_mode=st.sampled_from(["rel", "abs"]),
       threshold=st.sampled_from([0.0, 1e-4, 0.05]), factor=st.sampled_from([0.5, 0.1, 0.0]),
       patience=st.integers(0, 3), cooldown=st.integers(0, 3),
       min_lr=st.sampled_from([0.0, 0.02, [0.1, 0.001]]), eps=st.sampled_from([1e-8, 0.0, 0.05]),
       metrics=st.lists(METRIC, min_size=1, max_size=20))
def test_random_metric_sequences_match_torch(mode, threshold_mode, threshold, factor, patience,
                                             cooldown, min_lr, eps, metrics):
    config = dict(mode=mode, factor=factor, patience=patience, threshold=threshold,
                  threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps)
    run_both(config, metrics)


NAMED = {  # a decline, a plateau that reduces twice, the floor, a cooldown, a rise in "max"
    "min": (dict(patience=1, factor=0.5, min_lr=[0.05, 0.001]), [3.0, 2.0, 2.0, 2.0, 2.0, 2.0,
                                                                  1.0, 1.0, 1.0, 1.0, 1.0]),
    "max-abs-cooldown": (dict(mode="max", threshold_mode="abs", threshold=0.1, patience=0,
                              cooldown=2, factor=0.3), [1.0, 1.05, 1.2, 1.25, 1.3, 1.31, 1.0]),
}


@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
@pytest.mark.parametrize("name", NAMED)
def test_backends_and_float_metrics(name, impl):
    config, metrics = NAMED[name]
    fused = run_both(config, metrics, impl=impl, as_tensor=False)
    assert fused.last_lr.tolist() != list(LRS)  # the sequences do reduce


@pytest.mark.parametrize("name", NAMED)
def test_kernel_reads_the_scale_from_the_table(name):
    # impl="triton": the kernel reads its group's block of the table (interpreted on CPU).
    config, metrics = NAMED[name]
    run_both(config, metrics, impl="triton", device=KERNEL_DEVICE)


def test_report_reads_nothing_back(monkeypatch):
    config = dict(patience=0, min_lr=[0.1, 0.0])
    opt = FUSED(groups(params()), schedule=S.plateau(**config), **OPTIONS)
    torch_opt = ANY.peer(groups(params()), **OPTIONS)
    sched = tlr.ReduceLROnPlateau(torch_opt, **config)
    opt.report(1.0)  # the first report builds the cached base and min_lr tensors
    sched.step(1.0)

    def refuse(*args, **kwargs):
        raise AssertionError("report() read a device value back to the host")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for m in (2.0, 3.0, 4.0):
        opt.report(torch.tensor(m))
    monkeypatch.undo()
    for m in (2.0, 3.0, 4.0):
        sched.step(m)
    assert_close(opt.last_lr, [g["lr"] for g in torch_opt.param_groups], rtol=1e-15)
    assert _plateau(opt).tolist() == counters(sched)


def test_compiled_report_does_not_recompile():
    torch._dynamo.reset()
    eager = FUSED(groups(params()), schedule=S.plateau(patience=1, factor=0.5))
    compiled = FUSED(groups(params()), schedule=S.plateau(patience=1, factor=0.5))
    counter = CompileCounterWithBackend("aot_eager")
    report = torch.compile(compiled.report, backend=counter, fullgraph=True)
    for k, m in enumerate([3.0, 2.0, 2.5, 2.5, 1.0, 1.5, 1.5, 1.5, 0.5]):
        eager.report(torch.tensor(m, dtype=torch.float64))
        report(torch.tensor(m, dtype=torch.float64))
        assert torch.equal(_table(compiled), _table(eager))
        assert torch.equal(_plateau(compiled), _plateau(eager))
        if k == 0:
            # The first call compiles report's graph (dynamo also counts one empty frame).
            compiled_frames = counter.frame_count
    assert counter.frame_count == compiled_frames, "a new metric recompiled"
    last_lr = torch.compile(lambda: compiled.last_lr, backend="eager", fullgraph=True)
    assert torch.equal(last_lr(), eager.last_lr)
    assert eager.last_lr.tolist() != list(LRS)  # the metrics did reduce the lr
    torch._dynamo.reset()


def test_composes_with_warmup():
    # warmup(plateau(...), 4): the ramp for 4 steps, then base_lr * scale. Reports during the
    # warmup count as torch's would; the expected scale is a torch ReduceLROnPlateau's.
    config = dict(patience=1, factor=0.5)
    ps = params()
    fused = FUSED(groups(ps), schedule=S.warmup(S.plateau(**config), 4))
    shadow = ANY.peer([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = tlr.ReduceLROnPlateau(shadow, **config)
    for k, m in enumerate([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]):
        ramp = min(k / 4, 1.0) if k < 4 else shadow.param_groups[0]["lr"]
        for p in ps:
            p.grad = grad(k, p)
        fused.step()
        assert_close(fused.last_lr, [b * ramp for b in LRS], rtol=1e-15, what=f"step {k}")
        sched.step(m)
        fused.report(m)


def _resume(load):
    """Six steps and reports on ``a``; ``b`` (same parameters) gets a's checkpoint through
    ``load(b, saved, a)``; then both go on for the rest of the metrics. Returns (a, b, params)."""
    config, metrics = NAMED["min"]
    spec = S.plateau(**config)
    a_params, b_params = params(), params()
    a = FUSED(groups(a_params), schedule=spec, **OPTIONS)
    for k, m in enumerate(metrics[:6]):
        for p in a_params:
            p.grad = grad(k, p)
        a.step()
        a.report(m)
    saved = copy.deepcopy(a.state_dict())  # torch's load would share a's buffers otherwise
    assert saved["fused_lrs"]["plateau"]["state"].tolist() == _plateau(a).tolist()
    with torch.no_grad():
        for p, q in zip(a_params, b_params):
            q.copy_(p)
    b = FUSED(groups(b_params), schedule=spec, **OPTIONS)
    load(b, saved, a)
    for k, m in enumerate(metrics[6:], start=6):
        for x, y in zip(a_params, b_params):
            x.grad, y.grad = grad(k, x), grad(k, y)
        a.step()
        b.step()
        a.report(m)
        b.report(m)
    return a, b, a_params, b_params


def _dcp_load(opt, saved, _):
    # torch.distributed.checkpoint keeps only "state" and "param_groups"
    opt.load_state_dict({k: v for k, v in saved.items() if k != "fused_lrs"})


def _zero_load(opt, saved, _):
    # ZeroRedundancyOptimizer.load_state_dict: states and group entries written in directly
    ours = [p for g in opt.param_groups for p in g["params"]]
    for i, state in saved["state"].items():
        opt.state[ours[i]] = {k: v.clone() for k, v in state.items()}
    for group, entry in zip(opt.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in entry.items() if k != "params"})


def test_checkpoint_carries_the_state():
    def load(b, saved, a):
        fresh = FUSED(groups(params()), **OPTIONS)   # the schedule comes too
        fresh.load_state_dict(copy.deepcopy(saved))
        assert fresh.schedule == a.schedule and torch.equal(_table(fresh), _table(a))
        b.load_state_dict(saved)
        assert torch.equal(_table(b), _table(a))

    a, b, a_params, b_params = _resume(load)
    assert torch.equal(_plateau(b), _plateau(a)) and torch.equal(_table(b), _table(a))
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
    # a copy (deepcopy, pickle) carries the state too, and its reports are its own
    for c in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert torch.equal(_plateau(c), _plateau(a)) and torch.equal(_table(c), _table(a))
        c.report(-1.0)
        assert _plateau(c).tolist()[0] == -1.0 != _plateau(a).tolist()[0]


def test_bad_plateau_checkpoint_changes_nothing():
    opt = FUSED(groups(params()), schedule=S.plateau())
    opt.report(1.0)
    good = opt.state_dict()
    before = (_table(opt).clone(), _plateau(opt).clone())
    for entry, match in [({"state": torch.zeros(3), "scales": torch.ones(2)}, "'state'"),
                         ({"state": torch.zeros(4), "scales": torch.ones(3)}, "'scales'"),
                         ({"state": [0.0] * 4, "scales": torch.ones(2)}, "'state'")]:
        bad = {**good, "fused_lrs": {**good["fused_lrs"], "plateau": entry}}
        with pytest.raises(ValueError, match=f"plateau {match} must be a float tensor"):
            opt.load_state_dict(bad)
        assert torch.equal(_table(opt), before[0]) and torch.equal(_plateau(opt), before[1])
    bad = {**good, "fused_lrs": {**good["fused_lrs"], "schedule": "cosine(10)"}}
    with pytest.raises(ValueError, match="schedule holds no plateau"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("load", [_dcp_load, _zero_load], ids=["dcp", "zero"])
def test_the_groups_carry_the_plateau_where_dcp_and_zero_keep_them(load):
    a, b, a_params, b_params = _resume(load)
    assert _plateau(a).tolist() != [math.inf, 0.0, 0.0, 0.0]       # it did move
    assert torch.equal(_plateau(b), _plateau(a)) and torch.equal(_table(b), _table(a))
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)


def test_a_bad_plateau_entry_in_the_groups_changes_nothing():
    opt = FUSED(groups(params()), schedule=S.plateau())
    opt.report(1.0)
    good = opt.state_dict()
    before = (_table(opt).clone(), _plateau(opt).clone(), opt.param_groups[0]["lr"])
    bad = copy.deepcopy(good)
    del bad["fused_lrs"]
    bad["param_groups"][1]["plateau_scale"] = torch.ones(2)
    bad["param_groups"][0]["lr"] = 1.0
    with pytest.raises(ValueError, match="group 1 of the checkpoint: 'plateau_scale' must be"):
        opt.load_state_dict(bad)
    assert torch.equal(_table(opt), before[0]) and torch.equal(_plateau(opt), before[1])
    assert opt.param_groups[0]["lr"] == before[2]


@pytest.mark.parametrize("info, options", representatives())
def test_from_torch_continues_a_plateau_mid_run(info, options):
    metrics = [3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    config = dict(patience=1, factor=0.5, cooldown=1, min_lr=[0.1, 0.01])

    def pair():
        ps = params()
        opt = info.peer(groups(ps), **options)
        return ps, opt, tlr.ReduceLROnPlateau(opt, **config)

    (ps, opt, sched), (qs, twin, twin_sched) = pair(), pair()
    for k, m in enumerate(metrics):
        if k == 5:
            assert [g["lr"] for g in opt.param_groups] != list(LRS)  # reduced before the switch
            fused = fused_lrs.from_torch(opt, sched, impl="reference")
            assert fused.schedule == S.plateau(**config)
            assert _plateau(fused).tolist() == counters(sched)
        for p, q in zip(ps, qs):
            p.grad, q.grad = grad(k, p), grad(k, q)
        (fused if k >= 5 else opt).step()
        twin.step()
        (fused.report if k >= 5 else sched.step)(m)
        twin_sched.step(m)
    assert_close(fused.last_lr, [g["lr"] for g in twin.param_groups], rtol=1e-15)
    assert _plateau(fused).tolist() == counters(twin_sched)
    assert_same_optimizer(fused, twin, rtol=1e-5, atol=1e-7, extra_state=info.extra_state)


def test_schedules_from_torch_warns_that_the_state_stays_behind():
    opt = ANY.peer(groups(params()))
    sched = tlr.ReduceLROnPlateau(opt)
    assert S.from_torch(sched) == S.plateau()  # fresh: nothing left behind, no warning
    sched.step(1.0)
    with pytest.warns(UserWarning, match="1 metrics.*fused_lrs.from_torch\\(optimizer"):
        S.from_torch(sched)


def test_report_refusals_change_nothing():
    opt = FUSED(groups(params()), schedule=S.plateau())
    before = (_table(opt).clone(), _plateau(opt).clone())
    with pytest.raises(ValueError, match="metric must hold one value"):
        opt.report(torch.ones(2))
    with pytest.raises(TypeError, match="metric must be a number or a 0-dim tensor"):
        opt.report("0.5")
    assert torch.equal(_table(opt), before[0]) and torch.equal(_plateau(opt), before[1])
    with pytest.raises(ValueError, match="holds no plateau"):
        FUSED(groups(params()), schedule=S.cosine(10)).report(1.0)
    with pytest.raises(ValueError, match="momentum_schedule holds a plateau"):
        FUSED(groups(params()), momentum_schedule=S.plateau(), **OPTIONS)
    with pytest.raises(ValueError, match="may hold one plateau, this one holds 2"):
        FUSED(groups(params()),
                          schedule=S.chained([S.plateau(), S.plateau()])).report(1.0)
    with pytest.raises(ValueError, match="values for 3 parameter groups, the optimizer has 2"):
        FUSED(groups(params()), schedule=S.plateau(min_lr=[0.0, 0.1, 0.2]))


def test_a_new_group_keeps_the_state():
    ps = params()
    opt = FUSED([{"params": [ps[0]], "lr": 0.5}], schedule=S.plateau(patience=0))
    opt.report(1.0)
    opt.report(1.0)  # reduces: scale 0.1
    opt.add_param_group({"params": [ps[1]], "lr": 0.08})
    assert_close(opt.last_lr, [0.05, 0.08], rtol=1e-15)  # the new group starts at scale 1
    assert _plateau(opt).tolist()[1:] == [0.0, 0.0, 2.0]
    assert not math.isinf(_plateau(opt).tolist()[0])
