"""The CPU backend (``impl="torch_fused"``: torch's fused CPU kernels) against the reference.

Every optimizer of the table (``tests/optimizers.py``), on two optimizers built from clones of
the same parameters and fed the same gradients, compared after every step: params, every state
tensor, master copies, step counts and the schedule counter. Tolerances, by storage dtype,
relative to each tensor's scale (its largest entry: SGD's momentum buffer is a running sum whose
entries cancel to near zero, where an entry's own relative error means nothing): float64 1e-12,
float32 1e-5 (torch's kernels compute the step size in double and the update in float32, in
another order than the reference), and one unit in the last place for 16-bit storage, where the
two may round a value that sits on a boundary differently (bf16 2^-8, fp16 2^-11). torch's own
comparison with the reference is test_optim_vs_torch.py (every row's whole option grid on this
backend, against the peer's fused kernel); here each row's representative and sample.
"""

import re

import pytest
import torch
from conftest import assert_same_optimizer
from optimizers import ANY, few_options, infos, representatives

from fused_lrs import schedules as S

STEPS = 12
SHAPES = [(6, 5), (7,), (0,), (1,), (33,)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2.0 ** -8,
       torch.float16: 2.0 ** -11}
SCHEDULE = S.warmup(S.cosine(T_max=10), steps=3)
SIXTEEN_BIT = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def cpu_refuses(info, dtype):
    """Why the row's CPU update cannot take ``dtype`` storage, or None."""
    return info.record.cpu.unsupported({dtype})


def make(info, options, impl, dtype=torch.float32, dtypes=None, **extra):
    """Two groups (the second with its own lr); ``dtypes`` gives each parameter its own."""
    gen = torch.Generator().manual_seed(0)
    dtypes = dtypes or [dtype] * len(SHAPES)
    params = [torch.randn(s, generator=gen).to(d).requires_grad_()
              for s, d in zip(SHAPES, dtypes)]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.03}]
    return params, info.cls(groups, lr=0.1, schedule=SCHEDULE, impl=impl, **options, **extra)


def feed(pairs, k, missing=()):
    """The same gradients on both optimizers' parameters; none for the indices in ``missing``."""
    gen = torch.Generator().manual_seed(100 + k)
    for i, (p, q) in enumerate(pairs):
        g = torch.randn(p.shape, generator=gen).to(p.dtype)
        p.grad, q.grad = (None, None) if i in missing else (g.clone(), g.clone())


def assert_same(ours, ref, what):
    """Within TOL of each expected tensor's dtype, relative to its largest entry."""
    assert_same_optimizer(ours[1], ref[1], rtol=TOL, what=what, scaled=True)


def run(info, options, dtype=torch.float32, dtypes=None, steps=STEPS, missing=lambda k: (),
        **extra):
    ours = make(info, options, "torch_fused", dtype, dtypes, **extra)
    ref = make(info, options, "reference", dtype, dtypes, **extra)
    assert ours[1].impl == "torch_fused" and ref[1].impl == "reference"
    for k in range(steps):
        feed(zip(ours[0], ref[0]), k, missing(k))
        ours[1].step()
        ref[1].step()
        assert_same(ours, ref, f"step {k + 1}")
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("info, options", few_options())
def test_every_option(info, options, dtype):
    """Each row's representative and sample (with them, every value of every option)."""
    run(info, options, dtype=dtype)


@pytest.mark.parametrize("info, options", representatives())
def test_none_grads_and_late_state(info, options):
    """Parameter 1 has no gradient every third step, parameter 4 none before step 5, step 7
    none at all: their step counts hold, and SGD's first momentum update of a late parameter
    copies its gradient while the others are already past theirs."""
    def missing(k):
        if k == 6:
            return set(range(len(SHAPES)))
        return {i for i, gone in ((1, k % 3 == 2), (4, k < 4)) if gone}
    run(info, options, missing=missing)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("info, options", [p for p in representatives()
                                           if not cpu_refuses(p.values[0], torch.bfloat16)])
def test_16_bit_parameters(info, options, dtype):
    run(info, options, dtype=dtype)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("info, options", [p for p in representatives()
                                           if cpu_refuses(p.values[0], torch.bfloat16)])
def test_16_bit_storage_the_cpu_update_refuses_takes_the_reference(info, options, dtype):
    """torch 2.12/2.13's fused CPU SGD skips the full SIMD blocks of bf16/fp16 tensors
    (pytorch/pytorch#191763), so auto picks the reference for them; with master weights the
    fused kernel sees fp32 and is used."""
    params = [torch.zeros(64, dtype=dtype, requires_grad=True)]
    assert info.cls(params, **options).impl == "reference"
    with pytest.raises(ValueError, match=re.escape(cpu_refuses(info, dtype))):
        info.cls(params, impl="torch_fused", **options)
    assert info.cls(params, master_weights=True, **options).impl == "torch_fused"


@pytest.mark.parametrize("info, options", representatives())
def test_master_weights_mixed_dtypes(info, options):
    """fp32, bf16 and fp16 parameters in one group, bf16/fp16 with fp32 masters."""
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16, torch.float32]
    ours, _ = run(info, options, dtypes=dtypes, master_weights=True)
    for p in ours[0]:
        master = ours[1].state[p].get("master")
        assert (master is not None) == (p.dtype != torch.float32)
        if master is not None:     # the parameter is its master, rounded to nearest even
            assert torch.equal(p, master.to(p.dtype))


@pytest.mark.parametrize("hold", [False, True], ids=["advance", "hold"])
@pytest.mark.parametrize("info, options", representatives())
def test_grad_scaler_unscale_and_skip(info, options, hold):
    """GradScaler's tensors as ``scaler.step(opt)`` hands them over: gradients scaled by 2^10,
    found_inf set on steps 3 and 4. A skipped step moves nothing but the schedule counter,
    and not that either with hold_schedule_on_skip."""
    ours = make(info, options, "torch_fused", hold_schedule_on_skip=hold)
    ref = make(info, options, "reference", hold_schedule_on_skip=hold)
    scale = torch.tensor(2.0 ** 10)
    for k in range(STEPS):
        feed(zip(ours[0], ref[0]), k)
        inf = torch.tensor(float(k in (3, 4)))
        for params, opt in (ours, ref):
            for p in params:
                p.grad *= scale
            opt.grad_scale, opt.found_inf = scale, inf.clone()
            opt.step()
        assert_same(ours, ref, f"step {k + 1}")
        assert bool(ours[1].last_step_skipped) == (k in (3, 4))
    assert int(ours[1].schedule_step) == STEPS - 2 * hold


@pytest.mark.parametrize("schedule", ["momentum_schedule", "weight_decay_schedule"])
@pytest.mark.parametrize("info", infos())
def test_scheduled_hyperparameters_take_the_reference(info, schedule):
    """torch's fused kernels take the momentum and weight decay as numbers: with either
    scheduled, impl="auto" picks the reference, and an explicit impl="torch_fused" is refused."""
    if schedule == "momentum_schedule" and info.record.momentum is None:
        pytest.skip(f"{info.name} has no momentum to schedule")
    params = [torch.zeros(3, requires_grad=True)]
    opt = info.cls(params, **info.representative, **{schedule: S.cosine(T_max=10)})
    assert opt.impl == "reference"
    with pytest.raises(ValueError, match="impl='torch_fused' cannot run.*momentum_schedule"):
        info.cls(params, impl="torch_fused", **info.representative,
                 **{schedule: S.cosine(T_max=10)})


@pytest.mark.parametrize("info, options", representatives())
def test_auto_on_cpu_is_torch_fused(info, options):
    params = [torch.zeros(3, requires_grad=True)]
    assert info.cls(params, **options).impl == "torch_fused"
    assert info.cls(params, impl="reference", **options).impl == "reference"


def test_explicit_impl_that_cannot_run_names_the_alternatives(monkeypatch):
    params = [torch.zeros(3, requires_grad=True)]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"impl='triton' cannot run.*needs CUDA tensors.*"
                                         r"'torch_fused', 'reference'"):
        ANY.cls(params, impl="triton")
    ints = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    assert ANY.cls(ints).impl == "torch_fused"        # torch's kernels take fp64


@pytest.mark.parametrize("info, options", representatives())
def test_sparse_gradient_is_refused_before_any_write(info, options):
    """After the first step the description is cached; a gradient that turns sparse is still
    refused, and nothing moves."""
    params, opt = make(info, options, "torch_fused")
    feed(zip(params, params), 0)
    opt.step()
    before = [p.clone() for p in params]
    params[0].grad = params[0].grad.to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert int(opt.schedule_step) == 1
