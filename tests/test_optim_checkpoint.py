"""Checkpoints: torch's optimizers to ours and back, resuming in a new process, and validation.

* A checkpoint of each row's peer (``tests/optimizers.py``: its representative and sample,
  each under the next schedule of ``tests/schedule_table.py``) loads into the row's class,
  which then continues as the peer would have (the torch scheduler's position taken over with
  ``set_schedule(spec, t)``, by hand or with ``from_torch`` and ``torch_position``).
* The peer loads a checkpoint saved here and continues as we do.
* Saved at step k and resumed in a new Python process, a run is bitwise the uninterrupted one.
* A bad checkpoint (each row's own state keys and invalid values, another kind's checkpoint)
  raises a clear error and leaves the optimizer exactly as it was.
"""

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_identical, snapshot
from optimizers import OPTIMIZER_INFOS, few_options, representatives
from schedule_table import SCHEDULES
from test_optim_vs_torch import (
    GROUPS,
    SHAPES,
    drive_torch_lr,
    flat_params,
    has_grad,
    make_pair,
    run_both,
)

from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled
from fused_lrs.schedules import cosine, from_torch, torch_position

# Each row's representative and sample, each with the next schedule of the table in turn.
CASES = {param.id: (*param.values, SCHEDULES[i % len(SCHEDULES)])
         for i, param in enumerate(few_options())}
K, N = 12, 30  # save after K steps, continue to N


def pair(case, dtype):
    info, options, (_, factory, spec) = CASES[case]
    return (*make_pair(info, options, dtype, spec, schedule_factory=factory), spec)


def grad_at(k, i, p):
    """The gradient of parameter i at step k: a function of (k, i) alone, so that a resumed
    process feeds exactly what the uninterrupted run fed."""
    gen = torch.Generator().manual_seed(1000 * k + i)
    return torch.randn(p.shape, generator=gen, dtype=p.dtype)


def train(opt, start, stop, sched=None):
    for k in range(start, stop):
        for i, p in enumerate(flat_params(opt)):
            p.grad = grad_at(k, i, p) if has_grad(k, i) else None
        opt.step()
        if sched is not None:
            sched.step()


def copy_params(dst, src):
    with torch.no_grad():
        for p, q in zip(flat_params(dst), src):
            p.copy_(q)


# ---------------------------------------------------------------- torch -> ours

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES)
def test_torch_checkpoint_continues_like_torch(case, dtype, tmp_path):
    ours, theirs, sched, spec = pair(case, dtype)
    train(theirs, 0, K, sched)
    torch.save(theirs.state_dict(), tmp_path / "torch.pt")
    copy_params(ours, flat_params(theirs))
    ours.load_state_dict(torch.load(tmp_path / "torch.pt"))
    # The groups' lr is the base lr again (torch's initial_lr), not the scheduled one.
    assert [g["lr"] for g in ours.param_groups] == [g["initial_lr"] for g in theirs.param_groups]
    ours.set_schedule(spec, K)
    run_both(ours, theirs, sched, dtype, n=N - K)


@pytest.mark.parametrize("case", CASES)
def test_torch_checkpoint_continues_via_from_torch(case, tmp_path):
    """The scheduler restored from its own state_dict gives the spec and the position."""
    info, options, (_, factory, _) = CASES[case]
    ours, theirs, sched, _ = pair(case, torch.float64)
    train(theirs, 0, K, sched)
    torch.save({"optimizer": theirs.state_dict(), "scheduler": sched.state_dict()},
               tmp_path / "torch.pt")
    saved = torch.load(tmp_path / "torch.pt")
    # A new run rebuilds its scheduler and loads the scheduler's state into it.
    scratch = info.peer([{"params": [torch.zeros(1)], "lr": g["initial_lr"]}
                         for g in theirs.param_groups], **options)
    restored = factory(scratch)
    restored.load_state_dict(saved["scheduler"])
    copy_params(ours, flat_params(theirs))
    ours.load_state_dict(saved["optimizer"])
    assert torch_position(restored) == K
    ours.set_schedule(from_torch(restored), torch_position(restored))
    run_both(ours, theirs, sched, torch.float64, n=N - K)


@pytest.mark.parametrize("case", [p.id for p in representatives()])
def test_old_torch_checkpoint_without_newer_flags_loads(case):
    """Groups saved before an option existed get its default, as torch's ``__setstate__`` gives
    it: the entries it fills in a group of the record's ``group_keys`` alone, dropped where the
    saved value is that default (dropping the others would change the run)."""
    info = CASES[f"{case}-representative"][0]
    ours, theirs, sched, spec = pair(f"{case}-representative", torch.float64)
    train(theirs, 0, K, sched)
    sd = copy.deepcopy(theirs.state_dict())
    keep = info.record.group_keys + ("params",)
    old = info.peer([torch.zeros(1)])
    old.__setstate__({"state": {}, "param_groups": [{k: v for k, v in g.items() if k in keep}
                                                    for g in sd["param_groups"]]})
    dropped = set()
    for group, filled in zip(sd["param_groups"], old.param_groups):
        for key in set(filled) - set(keep):
            if group[key] == filled[key]:
                del group[key]
                dropped.add(key)
    if not dropped:
        pytest.skip(f"{info.record.peer} saves no flag beyond its group_keys")
    copy_params(ours, flat_params(theirs))
    ours.load_state_dict(sd)
    for group, filled in zip(ours.param_groups, old.param_groups):
        assert {k: group[k] for k in dropped} == {k: filled[k] for k in dropped}
    ours.set_schedule(spec, K)
    run_both(ours, theirs, sched, torch.float64, n=5)


def test_adam_checkpoint_in_the_adamw_class_keeps_decoupled_weight_decay():
    # The AdamW class alone: torch's AdamW keeps its decay decoupled whatever it loads.
    adamw = FusedAdamWScheduled([torch.zeros(s) for s in SHAPES[:2]])
    adam = torch.optim.Adam(flat_params(adamw), weight_decay=0.1)
    adamw.load_state_dict(adam.state_dict())
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


# ---------------------------------------------------------------- ours -> torch

@pytest.mark.parametrize("case", CASES)
def test_torch_loads_our_checkpoint(case, tmp_path):
    info, _, (_, _, spec) = CASES[case]
    ours, theirs, _, _ = pair(case, torch.float64)
    train(ours, 0, K)
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    copy_params(theirs, flat_params(ours))
    theirs.load_state_dict(torch.load(tmp_path / "ours.pt"))
    for mine, their in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in mine.items() if k != "params"} == \
            {k: v for k, v in their.items() if k != "params"}
    # What ours keeps besides the peer's state (our SGD's 'step') rides along in the peer's
    # state, which never reads it: drop it, so the comparison below sees the peer's own state.
    for state in theirs.state.values():
        for key in info.extra_state & set(state):
            del state[key]
        # torch's load_state_dict casts every state but 'step' to the parameter's dtype, also
        # the 0-dim ones its own init makes float32 (NAdam's mu_product, ASGD's eta and mu):
        # put them back in the dtype a torch optimizer that was never loaded has.
        for scalar in info.record.scalars:
            state[scalar.key] = state[scalar.key].float()
    bases = [g["lr"] for g in theirs.param_groups]
    run_both(ours, theirs, None, torch.float64, n=N - K,
             on_step=lambda k: drive_torch_lr(theirs, spec, bases, k))


@pytest.mark.parametrize("info", [info for info in OPTIMIZER_INFOS if info.record.scalars],
                         ids=lambda info: info.name)
def test_scalar_states_load_back_exactly_for_16_bit_parameters(info):
    """torch's load_state_dict casts every state but "step" to its parameter's dtype: the scalar
    states come back float32 and exact (in bf16, NAdam's mu_product after 3 steps keeps 8
    bits)."""
    p = torch.randn(8, dtype=torch.bfloat16, requires_grad=True)
    opt = info.cls([p], lr=0.01, impl="reference", **info.representative)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    q = p.detach().clone().requires_grad_()
    loaded = info.cls([q], lr=0.01, impl="reference", **info.representative)
    loaded.load_state_dict(opt.state_dict())
    for key in info.record.scalar_keys:
        value = loaded.state[q][key]
        assert value.dtype == torch.float32 and value.shape == (), key
        assert torch.equal(value, opt.state[p][key]), key


# ---------------------------------------------------------------- resume in a new process

RESUME = """
import sys
import torch
import test_optim_checkpoint as T

k, n, jobs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
for case, ckpt, out in zip(jobs[::3], jobs[1::3], jobs[2::3]):
    opt = T.fresh(case)  # default hyperparameters and schedule: all must come from the checkpoint
    saved = torch.load(ckpt)
    T.copy_params(opt, saved["params"])
    opt.load_state_dict(saved["optimizer"])
    T.train(opt, k, n)
    torch.save(T.checkpoint(opt), out)
"""
# Each row's representative (under the schedule it is paired with in CASES).
RESUMED = [f"{p.id}-representative" for p in representatives()]


def fresh(case):
    """Our optimizer of ``case`` with the right groups and nothing else set."""
    params = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    return CASES[case][0].cls([{"params": params[a:b]} for a, b, _ in GROUPS],
                              impl="reference")


def checkpoint(opt):
    return {"params": [p.detach().clone() for p in flat_params(opt)],
            "optimizer": opt.state_dict()}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Each case of RESUMED saved after K steps here, then loaded and run to N in one new
    Python process (one, because starting torch and its compiler costs seconds)."""
    tmp = tmp_path_factory.mktemp("resume")
    jobs = []
    for case in RESUMED:
        ours, _, _, _ = pair(case, torch.float32)
        train(ours, 0, K)
        torch.save(checkpoint(ours), tmp / f"{case}-k.pt")
        jobs += [case, str(tmp / f"{case}-k.pt"), str(tmp / f"{case}-n.pt")]
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)]))
    result = subprocess.run([sys.executable, "-c", RESUME, str(K), str(N), *jobs], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return {case: torch.load(tmp / f"{case}-n.pt") for case in RESUMED}


@pytest.mark.parametrize("case", RESUMED)
def test_resume_in_a_new_process_is_bitwise(case, resumed):
    ours, _, _, _ = pair(case, torch.float32)
    train(ours, 0, N)
    assert_identical(resumed[case], checkpoint(ours))
    assert int(resumed[case]["optimizer"]["fused_lrs"]["t"]) == N


# ---------------------------------------------------------------- validation

def param_groups():
    ps = [torch.randn(s, generator=torch.Generator().manual_seed(i), requires_grad=True)
          for i, s in enumerate([(3, 2), (4,), (2,)])]
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}]


def with_state(info, steps=3, peer=False):
    """Ours (or the peer) of ``info``'s representative after ``steps`` steps."""
    if peer:
        opt = info.peer(param_groups(), lr=0.1, **info.representative)
    else:
        opt = info.cls(param_groups(), schedule=cosine(10), impl="reference",
                       **info.representative)
    train(opt, 0, steps)
    return opt


DELETE = object()


def _set(path, value):
    """A corruption: ``sd[path[0]][path[1]]... = value``, or deleted for ``DELETE``."""
    def corrupt(sd):
        target = sd
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return sd
    return corrupt


def corruptions(info):
    """The bad checkpoints of ``info``'s representative that it must refuse: ``(id, corrupt,
    message)``, the state keys the row's own (its first and last state tensor, a required
    one), the bad hyperparameters its ``invalid`` ones."""
    group = info.cls([torch.zeros(1)], **info.representative).param_groups[0]
    slots = [slot.key for slot in info.record.slots if slot.present(group)]
    required = sorted(info.record.expected_state(group)[0] - {"step"})
    bad = [
        ("not a state_dict", lambda sd: {"weights": 1}, "not an optimizer state_dict"),
        ("one group too few", lambda sd: {**sd, "param_groups": sd["param_groups"][:1]},
         "1 parameter groups, this optimizer has 2"),
        ("a parameter too few", _set(("param_groups", 0, "params"), [0]), "group 0 .* 1 param"),
        ("a wrong state shape", _set(("state", 0, slots[0]), torch.zeros(2, 3)), "shape"),
        ("an integer state", _set(("state", 1, slots[-1]), torch.zeros(4, dtype=torch.int64)),
         "dtype torch.int64"),
        ("a step that is not a count", _set(("state", 0, "step"), torch.ones(2)), "'step'"),
        ("state of an unknown parameter", _set(("state", 7), {}), "parameter 7"),
        ("a negative lr", _set(("param_groups", 1, "lr"), -0.1), "group 1 .*learning rate"),
        ("an invalid schedule", _set(("fused_lrs", "schedule"), "cosine(T_max=-1)"),
         "fused_lrs"),
        ("not a schedule", _set(("fused_lrs", "schedule"), "__import__('os')"), "fused_lrs"),
        ("no schedule counter", _set(("fused_lrs", "t"), DELETE), "fused_lrs"),
        ("a negative schedule counter", _set(("fused_lrs", "t"), torch.tensor(-1)),
         "negative"),
        # int() would truncate either to 2, a counter the checkpoint does not hold
        ("a fractional schedule counter", _set(("fused_lrs", "t"), torch.tensor(2.5)),
         "fused_lrs.*integer count.*torch.float32"),
        ("a float schedule counter", _set(("fused_lrs", "t"), 2.5), "fused_lrs.*integer count"),
    ]
    if required:        # (torch's SGD saves its buffer, or None, once momentum made one)
        bad += [("a missing state tensor", _set(("state", 0, required[-1]), DELETE), "needs"),
                ("a None state tensor", _set(("state", 0, required[0]), None),
                 f"'{required[0]}' is NoneType")]
    bad += [(f"invalid-{key}-{j}", _set(("param_groups", 0, key), value), match)
            for j, (key, value, match) in enumerate(info.invalid)]
    return [pytest.param(info, corrupt, match, id=f"{info.name}-{name}")
            for name, corrupt, match in bad]


@pytest.mark.parametrize("info, corrupt, match",
                         [param for info in OPTIMIZER_INFOS for param in corruptions(info)])
def test_bad_checkpoint_raises_and_changes_nothing(info, corrupt, match):
    opt = with_state(info)
    sd = corrupt(copy.deepcopy(opt.state_dict()))
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_identical(snapshot(opt), before, "optimizer")


def test_amsgrad_without_max_exp_avg_sq_raises_and_changes_nothing():
    # Adam alone: an option (amsgrad) turned on in a checkpoint whose state lacks the tensor it
    # needs; no other row has an option that adds a state tensor to an existing state.
    opt = FusedAdamScheduled(param_groups(), schedule=cosine(10), impl="reference")
    train(opt, 0, 3)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["amsgrad"] = True
    before = snapshot(opt)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        opt.load_state_dict(sd)
    assert_identical(snapshot(opt), before, "optimizer")


def other_kind(info):
    """The first other row whose saved groups lack one of ``info``'s group entries."""
    return next(other for other in OPTIMIZER_INFOS
                if set(info.record.group_keys) - set(other.record.group_keys))


@pytest.mark.parametrize("info", [p.values[0] for p in representatives()],
                         ids=lambda info: info.name)
def test_a_checkpoint_of_another_kind_raises_and_changes_nothing(info):
    opt = with_state(info)
    other = other_kind(info)
    before = snapshot(opt)
    for sd in (with_state(other).state_dict(), with_state(other, steps=0).state_dict(),
               with_state(other, steps=1, peer=True).state_dict(),
               with_state(other, steps=0, peer=True).state_dict()):
        with pytest.raises(ValueError, match="another kind of optimizer"):
            opt.load_state_dict(sd)
        assert_identical(snapshot(opt), before, "optimizer")


@pytest.mark.parametrize("case", RESUMED)
def test_deepcopy_and_pickle_keep_schedule_and_counter(case):
    ours, _, _, _ = pair(case, torch.float32)
    train(ours, 0, K)
    copies = [copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))]
    train(ours, K, N)
    for other in copies:
        assert repr(other.schedule) == repr(ours.schedule) and other.impl == ours.impl
        train(other, K, N)
        assert_identical(checkpoint(other), checkpoint(ours))
