"""Shared test fixtures.

Kernel tests without CUDA run under the Triton interpreter, which must be chosen before any
``@triton.jit`` runs its decorator, so it is set here, before fused_lrs is imported.
"""

import copy
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test. For tests that check what a command writes, not its
    speed: where other jobs share the cores, a preempted OpenMP worker stalls every parallel op
    for a scheduler quantum (a 1 ms optimizer step then takes 100+ ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual, expected, rtol, atol=0.0, what=""):
    """Compare two tensors; on failure report the count and the first mismatching entries."""
    # Python numbers and lists go straight to float64: via torch's default float32 they would
    # lose precision before the comparison.
    actual = (actual if isinstance(actual, torch.Tensor)
              else torch.tensor(actual, dtype=torch.float64)).detach().cpu().double()
    expected = (expected if isinstance(expected, torch.Tensor)
                else torch.tensor(expected, dtype=torch.float64)).detach().cpu().double()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    bad = ~((actual - expected).abs() <= atol + rtol * expected.abs())
    bad &= ~(actual.isnan() & expected.isnan())
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        rows = [f"  at {i}: got {actual[tuple(i)].item()!r}, expected {expected[tuple(i)].item()!r}"
                for i in idx]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} entries differ "
                             f"(rtol={rtol}, atol={atol})\n" + "\n".join(rows))


def snapshot(opt):
    """A deep copy of everything a call that fails (a bad checkpoint, gradient, group, schedule)
    must leave as it was: groups, state, parameters (named by position), the schedules, the
    counter and the device."""
    params = [p for g in opt.param_groups for p in g["params"]]
    index = {id(p): i for i, p in enumerate(params)}
    return {"groups": [{k: [index[id(p)] for p in v] if k == "params" else copy.deepcopy(v)
                        for k, v in g.items()} for g in opt.param_groups],
            "state": {index[id(p)]: copy.deepcopy(s) for p, s in opt.state.items()},
            "schedule": repr(opt.schedule), "t": opt.schedule_step.clone(),
            "params": [p.detach().clone() for p in params], "device": opt._device}


def assert_identical(a, b, path="snapshot"):
    """Equal structure, and bitwise-equal tensors of the same dtype (snapshots, checkpoints)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a)} != {set(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _walk(opt):
    """(parameters, their states, schedule counter or None) of an optimizer, or of a snapshot of
    one: ``{"params": [...], "state": [...]}`` (a dict per parameter), with ``"t"`` optionally."""
    if isinstance(opt, dict):
        return opt["params"], opt["state"], opt.get("t")
    params = [p for group in opt.param_groups for p in group["params"]]
    counter = getattr(opt, "schedule_step", None)
    return params, [opt.state.get(p, {}) for p in params], \
        None if counter is None else int(counter)


def assert_same_optimizer(ours, theirs, rtol, atol=0.0, what="", extra_state=frozenset(),
                          scaled=False):
    """The one comparison of two optimizers (or snapshots of them, see ``_walk``): parameters,
    every state tensor and the step counts, walked in parameter order, and the schedule
    counters where both have one. Every state key ``theirs`` keeps must be in ``ours`` with the
    same dtype and value; ``ours`` may keep the ``extra_state`` keys besides.

    ``rtol``: a number, or a mapping from the expected tensor's dtype to one. ``scaled``: the
    absolute tolerance grows by ``rtol`` times the expected tensor's largest magnitude, for
    comparisons relative to each tensor's scale (an entry that cancels towards 0 keeps the
    absolute rounding error of the terms it cancelled). ``rtol=0, atol=0``: bitwise."""
    def close(actual, expected, where):
        tol = rtol[expected.dtype] if isinstance(rtol, dict) else rtol
        bound = atol
        if scaled and expected.numel():
            bound += tol * expected.detach().abs().max().item()
        assert actual.dtype == expected.dtype, \
            f"{what} {where}: dtype {actual.dtype}, expected {expected.dtype}"
        assert_close(actual, expected, tol, bound, f"{what} {where}")

    (mine, states, t), (others, expected_states, expected_t) = _walk(ours), _walk(theirs)
    assert len(mine) == len(others), f"{what}: {len(mine)} parameters, {len(others)} expected"
    if t is not None and expected_t is not None:
        assert t == expected_t, f"{what}: schedule counter {t}, expected {expected_t}"
    for i, (p, q, state, expected) in enumerate(zip(mine, others, states, expected_states)):
        close(p, q, f"param {i}")
        assert set(expected) <= set(state) <= set(expected) | set(extra_state), \
            f"{what} param {i}: state keys {sorted(state)}, expected {sorted(expected)}"
        for key, value in expected.items():
            if value is None:
                assert state[key] is None, f"{what} param {i} {key}: expected None"
            elif isinstance(value, torch.Tensor):
                close(state[key], value, f"param {i} state {key!r}")
            else:
                assert state[key] == value, f"{what} param {i} {key}: {state[key]!r} != {value!r}"
