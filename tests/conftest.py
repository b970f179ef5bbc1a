"""Shared test fixtures.

Kernel tests without CUDA run under the Triton interpreter, which must be chosen before any
``@triton.jit`` runs its decorator, so it is set here, before fused_lrs is imported.
"""

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
    speed: on a loaded 2-core machine a preempted OpenMP worker stalls every parallel op for a
    scheduler quantum (measured: a 1 ms optimizer step taking 100+ ms)."""
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


def _params(opt):
    return [p for group in opt.param_groups for p in group["params"]]


def assert_same_optimizer(ours, theirs, rtol, atol=0.0, what="", extra_state=frozenset()):
    """The one comparison of two optimizers: parameters, every state tensor and the step
    counts, walked in parameter order. Every state key ``theirs`` keeps must be in ``ours``
    with the same dtype and value; ``ours`` may keep the ``extra_state`` keys besides."""
    mine, others = _params(ours), _params(theirs)
    assert len(mine) == len(others), f"{what}: {len(mine)} parameters, {len(others)} expected"
    for i, (p, q) in enumerate(zip(mine, others)):
        assert_close(p, q, rtol, atol, f"{what} param {i}")
        state, expected = ours.state.get(p, {}), theirs.state.get(q, {})
        assert set(expected) <= set(state) <= set(expected) | set(extra_state), \
            f"{what} param {i}: state keys {sorted(state)}, expected {sorted(expected)}"
        for key, value in expected.items():
            if value is None:
                assert state[key] is None, f"{what} param {i} {key}: expected None"
                continue
            if isinstance(value, torch.Tensor):
                assert state[key].dtype == value.dtype, \
                    f"{what} param {i} {key}: dtype {state[key].dtype}, expected {value.dtype}"
            assert_close(state[key], value, rtol, atol, f"{what} param {i} state {key!r}")
