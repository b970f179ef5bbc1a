"""Every factory validates every argument at construction, and specs are immutable values.

An invalid argument raises ValueError whose message starts with the factory's name and names the
argument; a child that is not a spec raises TypeError, with a pointer to ``from_torch`` when it is
a torch scheduler. (That lr(0) is each peer's initial lr is tested next to the peer table, in
test_schedules_peers.py::test_lr_at_zero_is_peer_initial_lr.)
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.optim import lr_scheduler as tlr

from fused_lrs.schedules import (
    FACTORIES,
    Schedule,
    chained,
    cosine,
    every,
    exponential,
    linear,
    sequential,
    step,
    warmup,
)

NAN, INF = math.nan, math.inf

# One valid call of every factory; each invalid case below changes one argument of it.
VALID = {
    "constant": {"factor": 0.5, "total_iters": 5},
    "step": {"step_size": 3, "gamma": 0.5},
    "multistep": {"milestones": [3, 5, 5], "gamma": 0.5},
    "exponential": {"gamma": 0.9, "decay_steps": 2, "staircase": False},
    "cosine": {"T_max": 10, "eta_min": 0.0, "num_cycles": 0.5, "min_lr_rate": 0.0},
    "cosine_restarts": {"T_0": 10, "T_mult": 2, "eta_min": 0.0},
    "cyclic": {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "step_size_down": 3,
               "mode": "exp_range", "gamma": 0.99},
    "one_cycle": {"max_lr": 0.1, "total_steps": 100, "pct_start": 0.3, "anneal_strategy": "cos",
                  "div_factor": 25.0, "final_div_factor": 1e4, "three_phase": False},
    "one_cycle_momentum": {"total_steps": 100, "pct_start": 0.3, "anneal_strategy": "cos",
                           "base_momentum": 0.85, "max_momentum": 0.95, "three_phase": False},
    "cyclic_momentum": {"base_momentum": 0.8, "max_momentum": 0.9, "step_size_up": 5,
                        "step_size_down": 3, "mode": "triangular", "gamma": 1.0},
    "linear": {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 5},
    "polynomial": {"total_iters": 10, "power": 2.0, "lr_end": 0.0},
    "inverse_sqrt": {"num_warmup_steps": 10, "timescale": 20},
    "wsd": {"num_warmup_steps": 5, "num_decay_steps": 5, "num_training_steps": 20,
            "warmup_type": "linear", "decay_type": "cosine", "min_lr_ratio": 0.0,
            "num_cycles": 0.5},
    "warmup": {"schedule": cosine(10), "steps": 5, "start_factor": 0.0, "prefix": False},
    "sequential": {"schedules": [linear(), cosine(10), step(3)], "milestones": [5, 8]},
    "chained": {"schedules": [step(3), exponential(0.9)]},
    "every": {"schedule": cosine(10), "n": 3},
    "plateau": {"mode": "max", "factor": 0.5, "patience": 3, "threshold": 0.01,
                "threshold_mode": "abs", "cooldown": 2, "min_lr": [1e-4, 1e-5], "eps": 1e-9},
}

NOT_INT = [2.0, True, "3", None]     # integral float, bool, string, None where an int is needed
NOT_REAL = [NAN, INF, -INF, True, "0.5", None]

# (factory, argument, invalid values, other arguments changed to reach the check)
INVALID = [
    ("constant", "factor", [-0.1, 1.5, *NOT_REAL], {}),
    ("constant", "total_iters", [-1, *NOT_INT], {}),
    ("step", "step_size", [0, -3, *NOT_INT], {}),
    ("step", "gamma", [0.0, -0.5, *NOT_REAL], {}),
    ("multistep", "milestone", [5, None, [0], [-1, 3], [2.5], [True], ["3"]], {}),
    ("multistep", "gamma", [0.0, -1.0, *NOT_REAL], {}),
    ("exponential", "gamma", [0.0, -0.9, *NOT_REAL[:-1]], {}),
    ("exponential", "rate", [-0.1, *NOT_REAL[:-1]], {"gamma": None}),
    # exactly one of gamma and rate: neither, or both
    ("exponential", "rate", [None], {"gamma": None}),
    ("exponential", "rate", [0.1], {}),
    ("exponential", "decay_steps", [0, -1, *NOT_INT], {}),
    ("exponential", "staircase", [1, 0, "no", None], {}),
    ("cosine", "T_max", [0, -1, *NOT_INT], {}),
    ("cosine", "eta_min", [-1e-3, *NOT_REAL], {}),
    ("cosine", "num_cycles", [0.0, -0.5, *NOT_REAL], {}),
    ("cosine", "min_lr_rate", [-0.1, 1.1, *NOT_REAL], {}),
    ("cosine_restarts", "T_0", [0, *NOT_INT], {}),
    ("cosine_restarts", "T_mult", [0, -2, *NOT_INT], {}),
    ("cosine_restarts", "eta_min", [-0.1, *NOT_REAL], {}),
    ("cosine_restarts", "num_cycles", [0.0, -1.0, NAN, INF, True], {"T_mult": 1}),
    ("cosine_restarts", "T_mult", [2, 3], {"num_cycles": 2.0}),  # HF restarts are equal cycles
    ("cyclic", "base_lr", [-0.01, *NOT_REAL], {}),
    ("cyclic", "max_lr", [-0.1, *NOT_REAL], {}),
    ("cyclic", "step_size_up", [0, *NOT_INT], {}),
    ("cyclic", "step_size_down", [0, 2.0, True, "3"], {}),
    ("cyclic", "mode", ["triangle", "", "Triangular", None], {}),
    ("cyclic", "gamma", [0.0, -0.9, *NOT_REAL], {}),
    ("one_cycle", "max_lr", [0.0, -0.1, *NOT_REAL, [], [0.1, 0.0], (0.1, NAN)], {}),
    ("cyclic", "base_lr", [[], [0.1, -0.1]], {}),
    # lists of different lengths: one value per group, for how many groups?
    ("cyclic", "max_lr", [[0.1, 0.2, 0.3]], {"base_lr": [0.01, 0.02]}),
    ("plateau", "mode", ["minimum", "", None], {}),
    ("plateau", "factor", [1.0, 1.5, -0.1, *NOT_REAL], {}),
    ("plateau", "patience", [-1, *NOT_INT], {}),
    ("plateau", "threshold", [-0.1, *NOT_REAL], {}),
    ("plateau", "threshold_mode", ["relative", None], {}),
    ("plateau", "cooldown", [-1, *NOT_INT], {}),
    ("plateau", "min_lr", [-1e-3, [], [1e-3, -1e-3], *NOT_REAL], {}),
    ("plateau", "eps", [-1e-8, *NOT_REAL], {}),
    ("one_cycle", "total_steps", [0, *NOT_INT], {}),
    ("one_cycle", "pct_start", [-0.1, 1.1, *NOT_REAL], {}),
    # phases of no length: the warmup ends before step 1, or the last phase has no steps
    ("one_cycle", "pct_start", [0.0, 0.005, 0.01, 1.0], {}),
    ("one_cycle", "pct_start", [0.505], {"three_phase": True}),
    ("one_cycle", "total_steps", [1, 3], {}),
    ("one_cycle", "anneal_strategy", ["cosine", "lin", None], {}),
    ("one_cycle", "div_factor", [0.0, -1.0, *NOT_REAL], {}),
    ("one_cycle", "final_div_factor", [0.0, *NOT_REAL], {}),
    ("one_cycle", "three_phase", [1, "yes", None], {}),
    ("one_cycle_momentum", "total_steps", [0, *NOT_INT], {}),
    ("one_cycle_momentum", "pct_start", [-0.1, 1.1, 0.0, *NOT_REAL], {}),
    ("one_cycle_momentum", "anneal_strategy", ["cosine", None], {}),
    ("one_cycle_momentum", "base_momentum", [-0.1, 1.1, *NOT_REAL], {}),
    ("one_cycle_momentum", "max_momentum", [-0.1, 1.1, *NOT_REAL], {}),
    ("one_cycle_momentum", "three_phase", [1, "yes", None], {}),
    ("cyclic_momentum", "base_momentum", [-0.1, 1.1, *NOT_REAL], {}),
    ("cyclic_momentum", "max_momentum", [-0.1, 1.1, *NOT_REAL], {}),
    ("cyclic_momentum", "step_size_up", [0, *NOT_INT], {}),
    ("cyclic_momentum", "mode", ["square", None], {}),
    ("linear", "start_factor", [-0.1, 1.5, *NOT_REAL], {}),
    ("linear", "end_factor", [-0.1, 1.5, *NOT_REAL], {}),
    ("linear", "total_iters", [0, -5, *NOT_INT], {}),
    ("polynomial", "total_iters", [0, -5, *NOT_INT], {}),
    ("polynomial", "power", [0.0, -1.0, *NOT_REAL], {}),
    ("polynomial", "lr_end", [-1e-7, *NOT_REAL], {}),
    ("inverse_sqrt", "num_warmup_steps", [-1, *NOT_INT], {}),
    ("inverse_sqrt", "timescale", [0, -10, 2.0, True, "3"], {}),
    ("wsd", "num_warmup_steps", [-1, *NOT_INT], {}),
    ("wsd", "num_decay_steps", [-1, *NOT_INT], {}),
    ("wsd", "num_training_steps", [9, 0, 20.0, True, "20"], {}),  # shorter than warmup + decay
    # exactly one of num_training_steps and num_stable_steps: neither, or both
    ("wsd", "num_stable_steps", [None], {"num_training_steps": None}),
    ("wsd", "num_stable_steps", [10, 0], {}),
    ("wsd", "num_stable_steps", [-1, 2.0, True], {"num_training_steps": None}),
    ("wsd", "warmup_type", ["exp", "Linear", None], {}),
    ("wsd", "decay_type", ["sqrt", "1-Sqrt", None], {}),
    ("wsd", "min_lr_ratio", [-0.1, 1.1, *NOT_REAL], {}),
    ("wsd", "num_cycles", [0.0, -0.5, *NOT_REAL], {}),
    ("warmup", "steps", [-1, *NOT_INT], {}),
    ("warmup", "start_factor", [-0.1, 1.5, *NOT_REAL], {}),
    ("sequential", "schedules", [[]], {"milestones": []}),
    # wrong count, not a list, not increasing, not positive integers
    ("sequential", "milestone", [[], [5], [5, 8, 9], 5, None, [5, 5], [6, 5], [0, 5], [5.0, 8],
                                 [True, 8]], {}),
    ("chained", "schedules", [[], ()], {}),
    ("every", "n", [0, -1, *NOT_INT], {}),
    ("warmup", "prefix", [1, "no", None], {}),
]

CASES = [pytest.param(factory, argument, value, changed, id=f"{factory}-{argument}={value!r}")
         for factory, argument, values, changed in INVALID for value in values]


@pytest.mark.parametrize("factory, argument, value, changed", CASES)
def test_invalid_argument_raises(factory, argument, value, changed):
    kwargs = {**VALID[factory], **changed, argument: value}
    if argument == "milestone":
        kwargs = {**VALID[factory], **changed, "milestones": value}
    with pytest.raises(ValueError) as raised:
        FACTORIES[factory](**kwargs)
    message = str(raised.value)
    assert message.startswith(f"{factory}: ") and argument in message, message


def test_every_factory_is_validated():
    assert set(VALID) == set(FACTORIES) == {factory for factory, *_ in INVALID}


def _torch_scheduler():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    return tlr.StepLR(opt, 3)


NOT_SPECS = [0.1, "cosine(10)", None, cosine]  # a number, a string, nothing, a factory uncalled

CHILD_CALLS = {
    "warmup": lambda child: warmup(child, 5),
    "sequential": lambda child: sequential([cosine(10), child], [5]),
    "sequential-first": lambda child: sequential([child, cosine(10)], [5]),
    "chained": lambda child: chained([step(3), child]),
    "every": lambda child: every(child, 3),
}


@pytest.mark.parametrize("child", NOT_SPECS, ids=["number", "string", "none", "factory"])
@pytest.mark.parametrize("call", CHILD_CALLS.values(), ids=CHILD_CALLS.keys())
def test_child_that_is_not_a_spec_raises_type_error(call, child):
    with pytest.raises(TypeError, match=r"^(warmup|sequential|chained|every): .*schedule spec"):
        call(child)


@pytest.mark.parametrize("call", CHILD_CALLS.values(), ids=CHILD_CALLS.keys())
def test_torch_scheduler_child_gets_from_torch_hint(call):
    with pytest.raises(TypeError, match=r"StepLR.*fused_lrs\.schedules\.from_torch"):
        call(_torch_scheduler())


@pytest.mark.parametrize("factory", ["sequential", "chained"])
@pytest.mark.parametrize("lone", [cosine(10), _torch_scheduler()], ids=["spec", "torch"])
def test_lone_schedule_where_a_list_is_needed_raises_type_error(factory, lone):
    kwargs = {"schedules": lone} | ({"milestones": []} if factory == "sequential" else {})
    with pytest.raises(TypeError, match=rf"^{factory}: schedules must be a list"):
        FACTORIES[factory](**kwargs)


SPECS = {factory: FACTORIES[factory](**kwargs) for factory, kwargs in VALID.items()}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_spec_is_immutable(spec):
    for field in dataclasses.fields(spec):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(spec, field.name, getattr(spec, field.name))


@pytest.mark.parametrize("factory", VALID)
def test_spec_is_a_value(factory):
    spec = SPECS[factory]
    again = FACTORIES[factory](**VALID[factory])
    assert isinstance(spec, Schedule) and spec == again and hash(spec) == hash(again)
    assert len({spec, again}) == 1
    # repr is the factory call that rebuilds an equal spec
    assert eval(repr(spec), {}, dict(FACTORIES)) == spec
    # and a different value is a different spec
    name = next(f.name for f in dataclasses.fields(spec) if getattr(spec, f.name) is not None)
    other = dataclasses.replace(spec, **{name: _other(getattr(spec, name))})
    assert other != spec


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value[:-1]
    if isinstance(value, str):
        return value + "x"
    return dataclasses.replace(value, **{dataclasses.fields(value)[0].name: _other(
        getattr(value, dataclasses.fields(value)[0].name))})  # a child spec


def test_numpy_numbers_are_accepted_as_torch_accepts_them():
    import numpy as np

    from fused_lrs import schedules as S

    spec = S.sequential([S.multistep([np.int64(3), 5], np.float32(0.5)),
                         S.step(np.int32(2), np.float64(0.9))], [np.int64(8)])
    assert spec == S.sequential([S.multistep([3, 5], 0.5), S.step(2, 0.9)], [8])
    assert S.parse(repr(spec)) == spec
