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


# ---------------------------------------------------------------- layouts

def _layout_pair(info, options, init, impl="auto"):
    """Ours (``impl``, constant lr) and the peer (torch's default path) on clones of ``init``,
    a list of (tensor, relayout) pairs: each parameter is ``relayout(tensor.clone())`` made a
    leaf, so both get the same strides."""
    def params():
        return [relayout(x.clone()).detach().requires_grad_() for x, relayout in init]
    ours, theirs = params(), params()
    return ((ours, info.cls(ours, lr=0.1, impl=impl, **options)),
            (theirs, info.peer(theirs, lr=0.1, **options)))


def _step_both(pairs, k, grad_layout=lambda g: g):
    """The same gradients (contiguous, then ``grad_layout``) on both, and one step each."""
    (ours, opt), (theirs, peer) = pairs
    gen = torch.Generator().manual_seed(200 + k)
    for p, q in zip(ours, theirs):
        g = torch.randn(p.shape, generator=gen)
        p.grad, q.grad = grad_layout(g.clone()), grad_layout(g.clone())
    opt.step()
    peer.step()


def _assert_peer(info, pairs, what):
    """Parameters and every state tensor against the peer: float32 rtol 1e-5, atol 1e-7 (as
    test_optim_vs_torch.py)."""
    assert_same_optimizer(pairs[0][1], pairs[1][1], 1e-5, 1e-7, what, info.extra_state)


def _transposed(x):
    return x.t()


def _strided(x):
    return x[:, ::2]


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


LAYOUT_STEPS = 4


@pytest.mark.parametrize("case", ["transposed", "strided"])
@pytest.mark.parametrize("info, options", representatives())
def test_any_parameter_layout_gives_the_peers_numbers(info, options, case):
    """impl="auto" on CPU against the peer's default path, beside a contiguous parameter:
    a transposed parameter (strides (1, 5)) with contiguous gradients assigned by hand, and a
    parameter that is not dense (a strided slice, strides (6, 2)) with autograd's contiguous
    gradients. torch's fused kernels walk memory in storage order: fed these, they drift
    0.35-1.65 off the peer in 5 steps."""
    gen = torch.Generator().manual_seed(0)
    odd = (torch.randn(5, 4, generator=gen), _transposed) if case == "transposed" else \
        (torch.randn(4, 6, generator=gen), _strided)
    pairs = _layout_pair(info, options, [odd, (torch.randn(3, generator=gen), _transposed)])
    assert not pairs[0][0][0].is_contiguous()
    for k in range(LAYOUT_STEPS):
        _step_both(pairs, k)
        _assert_peer(info, pairs, f"{case} step {k + 1}")


@pytest.mark.parametrize("how", ["loaded", "converted"])
@pytest.mark.parametrize("info, options", representatives())
def test_states_in_another_layout_give_the_peers_numbers(info, options, how):
    """A conv weight whose states are contiguous while it is channels_last: a checkpoint
    loaded into a new optimizer after the model went channels_last (torch keeps the
    checkpoint's layout), or the weight converted under a live optimizer (``p.data = ...``,
    as ``model.to(memory_format=...)`` does). Gradients in the weight's layout, as autograd
    makes them."""
    gen = torch.Generator().manual_seed(0)
    init = [(torch.randn(3, 2, 2, 2, generator=gen), lambda x: x),
            (torch.randn(3, generator=gen), lambda x: x)]
    pairs = _layout_pair(info, options, init)
    for k in range(2):
        _step_both(pairs, k)
    if how == "loaded":
        saved = [opt.state_dict() for _, opt in pairs]
        pairs = _layout_pair(info, options, [(p.detach(), _channels_last) for p in pairs[0][0]])
        for (_, opt), state in zip(pairs, saved):
            opt.load_state_dict(state)
    else:
        for params, _ in pairs:
            params[0].data = _channels_last(params[0].data)
    state = pairs[0][1].state[pairs[0][0][0]]
    tensors = [v for k, v in state.items() if k not in info.record.counters]
    assert tensors and all(v.is_contiguous() for v in tensors)
    for k in range(2, 2 + LAYOUT_STEPS):
        _step_both(pairs, k, _channels_last)
        _assert_peer(info, pairs, f"{how} step {k + 1}")


@pytest.mark.parametrize("info, options", representatives())
def test_explicit_torch_fused_refuses_what_its_kernel_cannot_walk(info, options):
    """impl="torch_fused" named: a non-dense parameter is refused, naming it and the remedies,
    before any write; an update made of foreach ops (elementwise over any strides) runs it."""
    gen = torch.Generator().manual_seed(0)
    pairs = _layout_pair(info, options, [(torch.randn(4, 6, generator=gen), _strided)],
                         impl="torch_fused")
    (ours, opt), _ = pairs
    if not info.record.cpu.flat:
        _step_both(pairs, 0)
        _assert_peer(info, pairs, "foreach")
        return
    ours[0].grad = torch.randn(4, 3, generator=gen)
    before = ours[0].detach().clone()
    with pytest.raises(ValueError, match=re.escape(
            "impl='torch_fused' cannot update a parameter of group 0 (shape (4, 3)): it is "
            "not dense (strides (6, 2))") + ".*impl='auto'.*impl='reference'.*contiguous"):
        opt.step()
    assert torch.equal(ours[0], before) and int(opt.schedule_step) == 0
    assert all(float(s["step"]) == 0 for s in opt.state.values())
