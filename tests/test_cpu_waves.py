"""The CPU updates made of torch foreach ops (RMSprop's and Lion's) in cache-sized waves
(``fused_lrs/algorithms/waves.py``): the wave plan, and runs through waves bitwise the peer."""

import pytest
import torch
from conftest import assert_same_optimizer
from optimizers import INFO, OPTIMIZER_INFOS

from fused_lrs import FusedLionScheduled, FusedRMSpropScheduled
from fused_lrs.algorithms import waves

# The rows whose CPU update runs in waves (a test below holds the list to the registry).
WAVE_ROWS = [INFO[FusedRMSpropScheduled], INFO[FusedLionScheduled]]


def test_waves_slice_large_tensors_and_group_small_ones():
    # 10 elements a wave: 3 + 4 share one, 25 is cut in three, the non-contiguous 6 goes
    # alone, and 25's last 5 share a wave with the empty tensor and 2.
    assert waves.plan([3, 4, 25, 6, 0, 2], [True, True, True, False, True, True], wave=10) == [
        [(0, 0, 3), (1, 0, 4)], [(2, 0, 10)], [(2, 10, 20)], [(3, None, None)],
        [(2, 20, 25), (4, 0, 0), (5, 0, 2)]]


def small_waves(monkeypatch):
    """256 elements a wave, for buckets over 1000 elements."""
    monkeypatch.setattr(waves, "WAVE", 256)
    monkeypatch.setattr(waves, "WHOLE", 1000)


@pytest.mark.parametrize("info", OPTIMIZER_INFOS, ids=lambda info: info.name)
def test_the_rows_that_run_in_waves(info, monkeypatch):
    """A bucket over ``WHOLE`` elements keeps a wave plan exactly for the rows of WAVE_ROWS."""
    small_waves(monkeypatch)
    p = torch.zeros(1200, requires_grad=True)
    opt = info.cls([p], lr=0.01, impl="torch_fused", **info.representative)
    p.grad = torch.ones(1200)
    opt.step()
    planned = "waves" in opt._cache.backend._buckets[0].cache
    assert planned == (info in WAVE_ROWS), f"{info.name}: waves {planned}"


@pytest.mark.parametrize("info", WAVE_ROWS, ids=lambda info: info.name)
def test_cpu_waves_are_bitwise_the_peer(info, monkeypatch):
    """The foreach updates in waves: chunks of a large tensor, runs of small ones, a
    channels_last parameter whole, and a step whose gradient is a transposed view (the whole
    lists that step): bitwise the peer, every state, as in one wave."""
    small_waves(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in ((40, 30), (7,), (3,), (5, 4, 3, 3), (0,))]
    init[3] = init[3].to(memory_format=torch.channels_last)
    ps, qs = ([p.clone().requires_grad_() for p in init] for _ in range(2))
    options = dict(info.representative, **({"momentum": 0.9} if "momentum" in
                                            info.record.names else {}))
    ours = info.cls(ps, lr=0.01, impl="torch_fused", **options)
    theirs = info.peer(qs, lr=0.01, **options)
    for k in range(4):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=gen)
            p.grad = g.t().contiguous().t() if k == 2 and g.dim() == 2 else g.clone()
            q.grad = g.clone()
        ours.step()
        theirs.step()
    # 1200 in five chunks of 256 (the last, 176, with 7, 3 and the empty one), 180 whole
    assert len(ours._cache.backend._buckets[0].cache["waves"][0]) == 6
    assert_same_optimizer(ours, theirs, rtol=0.0, extra_state=info.extra_state)
