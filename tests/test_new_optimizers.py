"""What the suites that read the table (``tests/optimizers.py``) do not check of RMSprop,
Adagrad and Lion (issue 17): what only these algorithms have, and stricter comparisons.

* Each kernel module's columns are its record's (every registry algorithm).
* The kernel (interpreted without CUDA) against the reference: one optimizer whose groups are a
  row's whole option grid, so every option and variant runs in one launch; and with scheduled
  momentum and weight decay, which each algorithm's ``prepare`` reads its own way.
* At a constant lr, the reference and the CPU backend equal the peer bit for bit; the CPU
  updates' cache-sized waves change nothing.
* The peer refuses the values ours refuses, with the same message; Lion's and Adagrad's own
  arguments.
"""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_same_optimizer
from optimizers import INFO
from test_kernel_vs_reference import assert_same

from fused_lrs import (
    FusedAdagradScheduled,
    FusedLionScheduled,
    FusedRMSpropScheduled,
    algorithms,
)
from fused_lrs import schedules as S

NEW = [pytest.param(INFO[cls], id=cls.__name__)
       for cls in (FusedRMSpropScheduled, FusedAdagradScheduled, FusedLionScheduled)]
# Around the 1024-element block: one element, a ragged block, a full block plus one, empty.
SIZES = (1, 3, 1023, 0, 1025, 2049)
KERNEL_STEPS = 8            # past the warmup (3) of SCHEDULE
SCHEDULE = S.warmup(S.cosine(T_max=10), steps=3)


@pytest.mark.parametrize("record", list(algorithms.ALGORITHMS.values()), ids=lambda r: r.name)
def test_each_kernel_module_names_its_records_columns(record):
    import importlib

    module = importlib.import_module(record.kernel)
    assert module.COLUMNS == tuple(name for name, _ in record.columns)
    assert len(record.variants) <= 8 and all(0 <= v < 8 for v in record.variants)


# ---------------------------------------------------------------- the kernel

def kernel_runs(info, dtypes, master_weights=False, **overrides):
    """The reference and the kernel, each one optimizer whose groups are ``info``'s option grid
    (one tensor each, sizes and dtypes in turn, ``overrides`` in every group), fed the same
    gradients; some parameters skip some steps."""
    gen = torch.Generator().manual_seed(0)
    grid = [dict(options, **overrides) for _, options in info.options]
    init = [torch.randn(SIZES[i % len(SIZES)], generator=gen).to(dtypes[i % len(dtypes)])
            for i in range(len(grid))]
    runs = []
    for impl in ("reference", "triton"):
        ps = [p.clone().to(KERNEL_DEVICE).requires_grad_() for p in init]
        groups = [{"params": [p], **options} for p, options in zip(ps, grid)]
        runs.append((ps, info.cls(groups, lr=0.05, schedule=SCHEDULE, impl=impl,
                                  master_weights=master_weights)))
    for k in range(KERNEL_STEPS):
        grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in init]
        for ps, opt in runs:
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if (i + k) % 5 == 3 else g.to(KERNEL_DEVICE)
            opt.step()
    return runs


@pytest.mark.parametrize("info", NEW)
def test_kernel_matches_the_reference_on_every_option(info):
    assert_same(kernel_runs(info, [torch.float32]))


# ---------------------------------------------------------------- arguments

def params(*shape):
    return [torch.zeros(shape, requires_grad=True)]


@pytest.mark.parametrize("info, key, value, match", [
    pytest.param(p.values[0], key, value, match, id=f"{p.id}-{key}={value}")
    for p in NEW for key, value, match in p.values[0].invalid])
def test_the_peer_refuses_the_same_values_with_the_same_message(info, key, value, match):
    # (test_optim_errors.py: ours refuses them, at construction and in a group)
    with pytest.raises(ValueError, match=match) as ours:
        info.cls(params(3), **{key: value})
    if info.record.peer.startswith("torch."):
        with pytest.raises(ValueError) as theirs:
            info.peer(params(3), **{key: value})
        assert str(ours.value) == str(theirs.value)
    else:       # lion_pytorch asserts (or fails comparing a 2-element lr)
        with pytest.raises((AssertionError, RuntimeError)):
            info.peer(params(3), **{key: value})


def test_lion_arguments():
    with pytest.raises(ValueError, match="Invalid learning rate: 0.0"):
        FusedLionScheduled(params(3), lr=0.0)      # lion_pytorch asserts lr > 0
    with pytest.raises(AssertionError):
        INFO[FusedLionScheduled].peer(params(3), lr=0.0)
    with pytest.raises(ValueError, match="expected a pair"):
        FusedLionScheduled(params(3), betas=(0.9,))
    # beta = 1 is allowed, as in lion_pytorch; use_triton is accepted and changes nothing.
    opt = FusedLionScheduled(params(3), betas=(1.0, 1.0), use_triton=True, impl="reference")
    assert opt.param_groups[0]["betas"] == (1.0, 1.0)


def test_adagrad_refuses_a_momentum_schedule_and_keeps_torchs_initial_value():
    with pytest.raises(ValueError, match="momentum_schedule: torch.optim.Adagrad has no "
                                         "momentum coefficient"):
        FusedAdagradScheduled(params(3), momentum_schedule=S.cosine(10))
    # torch fills every parameter's sum at construction with the constructor's value, whatever
    # a group says.
    groups = [{"params": params(3)}, {"params": params(2), "initial_accumulator_value": 0.5}]
    ours = FusedAdagradScheduled(groups, initial_accumulator_value=0.1)
    theirs = torch.optim.Adagrad([{**g, "params": [p.detach().clone().requires_grad_()
                                                  for p in g["params"]]} for g in groups],
                                 initial_accumulator_value=0.1)
    assert_same_optimizer(ours, theirs, rtol=0.0)


# ---------------------------------------------------------------- with the peer

@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
@pytest.mark.parametrize("info, options", [p for info in NEW for p in info.values[0].grid()])
def test_bitwise_the_peer_at_a_constant_lr(info, options, impl):
    """At a constant lr (the same double on both sides) every operation is the peer's, in its
    order: the reference and the CPU backend (RMSprop's and Lion's foreach ops, torch's fused
    Adagrad against Adagrad(fused=True)) equal the peer bit for bit in fp32, every state."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in ((33, 7), (7,), (1,))]
    ps, qs = ([p.clone().requires_grad_() for p in init] for _ in range(2))
    ours = info.cls(ps, lr=0.01, impl=impl, **options)
    theirs = info.peer(qs, lr=0.01, fused=impl == "torch_fused", **options)
    for _ in range(10):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    assert ours.impl == impl
    assert_same_optimizer(ours, theirs, rtol=0.0, extra_state=info.extra_state)


def test_waves_slice_large_tensors_and_group_small_ones():
    from fused_lrs.algorithms.waves import plan

    # 10 elements a wave: 3 + 4 share one, 25 is cut in three, the non-contiguous 6 goes
    # alone, and 25's last 5 share a wave with the empty tensor and 2.
    assert plan([3, 4, 25, 6, 0, 2], [True, True, True, False, True, True], wave=10) == [
        [(0, 0, 3), (1, 0, 4)], [(2, 0, 10)], [(2, 10, 20)], [(3, None, None)],
        [(2, 20, 25), (4, 0, 0), (5, 0, 2)]]


@pytest.mark.parametrize("info", [p for p in NEW if p.values[0].record.name != "adagrad"])
def test_cpu_waves_are_bitwise_the_peer(info, monkeypatch):
    """The foreach updates in waves (waves.py, here 256 elements a wave for buckets over 1000):
    chunks of a large tensor, runs of small ones, a channels_last parameter whole, and a step
    whose gradient is a transposed view (the whole lists that step): bitwise the peer, every
    state, as in one wave."""
    from fused_lrs.algorithms import waves

    monkeypatch.setattr(waves, "WAVE", 256)
    monkeypatch.setattr(waves, "WHOLE", 1000)
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


# ---------------------------------------------------------------- scheduled hyperparameters

@pytest.mark.parametrize("info", NEW)
def test_scheduled_momentum_and_weight_decay_kernel_matches_reference(info):
    """momentum_schedule= (RMSprop's momentum, Lion's beta1; Adagrad has none) and
    weight_decay_schedule=, evaluated in the kernel like the lr, against the reference, which
    takes them as device tensors too."""
    schedules = dict(weight_decay_schedule=S.cosine(10))
    if info.record.momentum is not None:
        schedules["momentum_schedule"] = S.linear(0.5, 1.0, 6)
    runs = []
    for impl in ("reference", "triton"):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(n, generator=gen).to(KERNEL_DEVICE).requires_grad_()
              for n in (1025, 3, 1)]
        runs.append((ps, info.cls(ps, lr=0.05, schedule=SCHEDULE, impl=impl,
                                  **info.representative, **schedules)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(KERNEL_STEPS):
        grads = [torch.randn(p.shape, generator=gen).to(KERNEL_DEVICE) for p in runs[0][0]]
        for ps, opt in runs:
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    assert runs[0][1].impl == "reference"
    assert_same(runs)
