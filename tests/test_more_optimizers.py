"""Adamax, NAdam, RAdam, Adadelta and ASGD (issue 18), from the table of optimizers, where the
suites still name Adam and SGD: random configurations against torch, checkpoints both ways,
the kernel against the reference (fp32, mixed 16-bit, master weights, scheduled momentum and
weight decay), GradScaler, torch.compile, from_torch and FSDP2; and on CUDA one launch per step,
no sync and CUDA-graph replays. A suite that comes to read every row takes its part over.

Tolerances are the suites': against torch, float32 rtol 1e-5 / atol 1e-7 and float64 rtol
1e-12 / atol 1e-15 (test_optim_vs_torch.py); the kernel against the reference, 1e-6 of each
tensor's own scale (test_kernel_vs_reference.py); a compiled step, bitwise its eager run.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch._dynamo
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import INFO
from test_grad_scaler import INF_STEPS, STEPS
from test_grad_scaler import loop as scaled_loop
from test_optim_vs_torch import (
    GROUPS,
    LR,
    LR_SCALES,
    SCHEDULES,
    SHAPES,
    TOL,
    drive_torch_lr,
    flat_params,
    has_grad,
    make_pair,
    run_both,
)
from torch._dynamo.testing import CompileCounterWithBackend
from torch.optim import lr_scheduler as tls

import fused_lrs
from fused_lrs import (
    FusedAdadeltaScheduled,
    FusedAdamaxScheduled,
    FusedASGDScheduled,
    FusedNAdamScheduled,
    FusedRAdamScheduled,
)
from fused_lrs import schedules as S

CLASSES = (FusedAdamaxScheduled, FusedNAdamScheduled, FusedRAdamScheduled,
           FusedAdadeltaScheduled, FusedASGDScheduled)
ROWS = [pytest.param(INFO[cls], id=cls.__name__) for cls in CLASSES]
# NAdam's mu_product and ASGD's eta and mu: the scalar states.
SCALAR_ROWS = [pytest.param(INFO[cls], id=cls.__name__) for cls in CLASSES
               if cls.algorithm.scalars]


def same(ours, theirs, dtype, what):
    assert_same_optimizer(ours, theirs, **TOL[dtype], what=what,
                          extra_state=INFO[type(ours)].extra_state)


# ---------------------------------------------------------------- against torch

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("info", ROWS)
def test_random_configurations_match_torch(info, seed):
    """A random union of the row's option entries, schedule, dtype, backend and group lrs,
    against torch (three groups; some gradients None; every state tensor)."""
    rng = random.Random(f"{info.name}-{seed}")
    entries = [options for _, options in info.options]
    options = {}
    for entry in rng.sample(entries, rng.randint(1, len(entries))):
        options.update(entry)
    _, factory, spec = rng.choice(SCHEDULES)
    dtype = rng.choice([torch.float32, torch.float64])
    impl = rng.choice(["reference", "torch_fused"])
    scales = tuple(rng.choice([0.5, 1.0, 2.0, 3.0]) for _ in GROUPS)
    run_both(*make_pair(info, options, dtype, spec, lr_scales=scales, schedule_factory=factory,
                        impl=impl), dtype, n=30)


def _groups(params, weight_decay=0.0):
    return [{"params": params[a:b], "lr": LR * x, "weight_decay": weight_decay * w}
            for (a, b, w), x in zip(GROUPS, LR_SCALES)]


def _feed(opts, gen, k, dtype):
    """The same gradients (None where ``has_grad`` says) to every optimizer of ``opts``."""
    for i, ps in enumerate(zip(*map(flat_params, opts))):
        g = torch.randn(ps[0].shape, generator=gen, dtype=dtype) if has_grad(k, i) else None
        for p in ps:
            p.grad = None if g is None else g.clone()


@pytest.mark.parametrize("info", ROWS)
def test_checkpoints_both_ways(info):
    """Ours saved and loaded into torch's class, and torch's into ours, mid-run: each
    continues as the one it was loaded from (every state tensor, the scalar states included)."""
    dtype, spec, half = torch.float32, S.exponential(0.95), 12
    options = dict(info.representative)
    wd = options.pop("weight_decay", 0.0)
    bases = [LR * x for x in LR_SCALES]
    init = [torch.randn(s, generator=torch.Generator().manual_seed(0), dtype=dtype)
            for s in SHAPES]

    def fresh(values):
        return [p.detach().clone().requires_grad_() for p in values]

    ours = info.cls(_groups(fresh(init), wd), schedule=spec, impl="reference", **options)
    theirs = info.peer(_groups(fresh(init), wd), **options)
    gen = torch.Generator().manual_seed(1)

    def steps(opts, torch_opts, ks):
        for k in ks:
            for t in torch_opts:
                drive_torch_lr(t, spec, bases, k)
            _feed(opts, gen, k, dtype)
            for opt in opts:
                opt.step()

    steps([ours, theirs], [theirs], range(half))
    same(ours, theirs, dtype, "before saving")
    # Ours into torch's class, and torch's into ours (its position given, as from_torch does).
    to_torch = info.peer(_groups(fresh(flat_params(ours)), wd), **options)
    to_torch.load_state_dict(copy.deepcopy(ours.state_dict()))
    to_ours = info.cls(_groups(fresh(flat_params(theirs)), wd), schedule=spec,
                       impl="reference", **options)
    to_ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    to_ours.set_schedule(spec, half)
    for group, base in zip(to_ours.param_groups, bases):
        group["lr"] = base        # (torch's lrs were set by hand: no initial_lr to take)
    for key in info.record.scalar_keys:
        state = to_ours.state[flat_params(to_ours)[0]][key]
        assert state.dtype == torch.float32 and state.shape == (), key
    steps([ours, theirs, to_torch, to_ours], [theirs, to_torch], range(half, 2 * half))
    same(ours, to_torch, dtype, "ours, and torch loaded from ours")
    same(to_ours, theirs, dtype, "torch, and ours loaded from torch")
    same(ours, theirs, dtype, "uninterrupted")


@pytest.mark.parametrize("info", SCALAR_ROWS)
def test_scalar_states_load_back_exactly_for_16_bit_parameters(info):
    """torch's load_state_dict casts every state but "step" to its parameter's dtype: the scalar
    states come back float32 and exact (in bf16, mu_product after 3 steps keeps 8 bits)."""
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


@pytest.mark.parametrize("info", [p for p in ROWS if not p.values[0].record.momentum])
def test_momentum_schedule_is_refused(info):
    with pytest.raises(ValueError, match="momentum_schedule.*no momentum coefficient"):
        info.cls([torch.zeros(2, requires_grad=True)], momentum_schedule=S.cosine(10))


@pytest.mark.parametrize("info", ROWS)
def test_invalid_hyperparameters_are_refused_as_torch_refuses_them(info):
    for key, value, message in info.invalid:
        for cls in (info.cls, info.record.peer_class()):
            with pytest.raises(ValueError, match=message):
                cls([torch.zeros(2, requires_grad=True)], **{key: value})


# ---------------------------------------------------------------- the kernel

SIZES = [1, 3, 1025, 0]      # one element, a ragged block, a full block plus one, none
KERNEL_SCHEDULE = S.warmup(S.cosine(12), 3)
SETUPS = {"fp32": [torch.float32] * 4,
          "mixed": [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16],
          "master": [torch.bfloat16, torch.float16, torch.bfloat16, torch.float32],
          "scheduled": [torch.float32] * 4}


def kernel_runs(info, setup, steps=8, device=KERNEL_DEVICE, sizes=SIZES):
    """The reference and the kernel side by side, two groups, some gradients None."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(n, generator=gen).to(dtype) for n, dtype in zip(sizes, SETUPS[setup])]
    extra = {}
    if setup == "master":
        extra["master_weights"] = True
    if setup == "scheduled":
        extra["weight_decay_schedule"] = S.cosine(10)
        if info.record.momentum:
            extra["momentum_schedule"] = S.cyclic_momentum(0.8, 0.95, 3)
    runs = []
    for impl in ("reference", "triton"):
        ps = [p.clone().to(device).requires_grad_() for p in init]
        groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03, "weight_decay": 0.02}]
        runs.append((ps, info.cls(groups, lr=0.01, schedule=KERNEL_SCHEDULE, impl=impl,
                                  **info.representative, **extra)))
    grads = torch.Generator().manual_seed(1)
    for k in range(steps):
        gs = [torch.randn(p.shape, generator=grads).to(p.dtype) for p in init]
        for ps, opt in runs:
            for i, (p, g) in enumerate(zip(ps, gs)):
                p.grad = None if (i + k) % 4 == 3 else g.to(device)
            opt.step()
    return runs


def assert_kernel_matches(runs, rtol=1e-6):
    (ref_params, ref), (tri_params, tri) = runs
    assert int(ref.schedule_step) == int(tri.schedule_step)
    for i, (a, b) in enumerate(zip(ref_params, tri_params)):
        pairs = [("param", a, b)] + [(key, value, tri.state[b][key])
                                     for key, value in ref.state[a].items()]
        assert set(ref.state[a]) == set(tri.state[b]), f"param {i}: state keys differ"
        for what, x, y in pairs:
            assert y.dtype == x.dtype, f"param {i} {what}: {y.dtype} != {x.dtype}"
            scale = x.detach().abs().max().item() if x.numel() else 0.0
            assert_close(y, x, rtol=rtol, atol=rtol * scale, what=f"param {i} {what}")


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("info", ROWS)
def test_kernel_matches_the_reference(info, setup):
    runs = kernel_runs(info, setup)
    assert runs[1][1].impl == "triton"
    assert_kernel_matches(runs)


@pytest.mark.parametrize("info", ROWS)
def test_master_weights_on_the_cpu_backend_follow_an_fp32_run(info):
    """bf16 parameters with fp32 masters on the CPU backend (its foreach update on the
    masters): the master is bitwise an fp32 run fed the same gradients, the parameter its
    rounding, every state (the scalar states float32) the fp32 run's."""
    def run(dtype, master):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(s, generator=gen).to(torch.bfloat16).to(dtype).requires_grad_()
              for s in ((33, 31), (1025,), (3,))]
        opt = info.cls(ps, lr=0.01, schedule=S.warmup(S.cosine(30), 5), master_weights=master,
                       **info.representative)
        for _ in range(12):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16).to(dtype)
            opt.step()
        assert opt.impl == "torch_fused"
        return ps, opt

    (low, low_opt), (ref, ref_opt) = run(torch.bfloat16, True), run(torch.float32, False)
    for p, q in zip(low, ref):
        state = low_opt.state[p]
        assert torch.equal(state["master"], q.detach())
        assert torch.equal(p.detach(), q.detach().to(torch.bfloat16))
        for key, value in ref_opt.state[q].items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def test_every_kernel_module_names_its_records_columns():
    """The kernel reads a group's own columns by position: its module's COLUMNS are the
    record's names, in the record's order (every algorithm of the registry)."""
    import importlib

    from fused_lrs.algorithms import ALGORITHMS
    for record in ALGORITHMS.values():
        module = importlib.import_module(record.kernel)
        assert module.COLUMNS == tuple(name for name, _ in record.columns), record.name


# ---------------------------------------------------------------- GradScaler, compile

@pytest.mark.parametrize("info", SCALAR_ROWS)
def test_kernel_matches_the_reference_under_grad_scaler(info):
    runs = [scaled_loop(lambda ps, impl=impl: info.cls(
                ps, lr=0.01, schedule=S.warmup(S.cosine(20), 4), impl=impl,
                **info.representative), device=KERNEL_DEVICE)
            for impl in ("reference", "triton")]
    assert runs[0][3] == runs[1][3] == [k in INF_STEPS for k in range(STEPS)]
    assert_kernel_matches([(r[0], r[1]) for r in runs])


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("impl, info", [
    *(pytest.param("torch_fused", p.values[0], id=f"torch_fused-{p.id}") for p in ROWS),
    *(pytest.param("triton", p.values[0], id=f"triton-{p.id}") for p in SCALAR_ROWS)])
def test_compiled_step_is_one_graph_and_bitwise_eager(info, impl):
    """One compile for the whole run while the lr moves; the op carries the scalar states."""
    steps = 10 if impl == "triton" else 20
    device = KERNEL_DEVICE if impl == "triton" else "cpu"

    def make():
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(s, generator=gen).to(device).requires_grad_()
              for s in ((7, 5), (5,), (33,), (0,))]
        return ps, info.cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}], lr=0.01,
                            schedule=S.warmup(S.cosine(30), 5), impl=impl,
                            **info.representative)

    eager, compiled = make(), make()
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(compiled[1].step, backend=counter, fullgraph=True)
    compiled[1].init_state()
    for k in range(steps):
        gen = torch.Generator().manual_seed(100 + k)
        gs = [torch.randn(p.shape, generator=gen).to(device) for p in eager[0]]
        for (ps, _), fn in ((eager, eager[1].step), (compiled, step)):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            fn()
    assert counter.frame_count == 1, "recompiled"
    assert int(compiled[1].schedule_step) == steps
    for a, b in zip(eager[0], compiled[0]):
        assert torch.equal(a, b)
        for key, value in eager[1].state[a].items():
            assert torch.equal(value, compiled[1].state[b][key]), key


# ---------------------------------------------------------------- from_torch, FSDP2

@pytest.mark.parametrize("info", ROWS)
def test_from_torch_continues_the_torch_run(info):
    """torch's optimizer and scheduler (OneCycleLR cycling beta1 where there is one) converted
    mid-run: the fused optimizer continues as torch would."""
    momentum = info.record.momentum is not None

    def factory(opt):
        if momentum:
            return tls.OneCycleLR(opt, max_lr=0.05, total_steps=40)
        return tls.StepLR(opt, 5, 0.5)

    dtype = torch.float64
    _, theirs, sched = make_pair(info, info.representative, dtype, schedule_factory=factory)
    _, twin, twin_sched = make_pair(info, info.representative, dtype, schedule_factory=factory)
    gen = torch.Generator().manual_seed(1)
    for k in range(20):
        if k == 10:
            ours = fused_lrs.from_torch(twin, twin_sched, impl="reference")
            assert (ours.momentum_schedule is not None) == momentum
        opts = [theirs, twin if k < 10 else ours]
        _feed(opts, gen, k, dtype)
        for opt in opts:
            opt.step()
        sched.step()
        if k < 10:
            twin_sched.step()
    same(ours, theirs, dtype, "converted at step 10")


# ---------------------------------------------------------------- CUDA

@pytest.mark.gpu
@pytest.mark.parametrize("info", ROWS)
def test_cuda_one_launch_per_step_no_sync_matches_the_reference(info):
    from test_gpu import kernels_in
    runs = kernel_runs(info, "mixed", device="cuda", sizes=[70_000, 3, 1025, 0])
    assert_kernel_matches(runs)
    opt = runs[1][1]
    assert opt.impl == "triton"
    names = kernels_in(opt.step)
    assert len(names) == 1 and "fused_step_kernel" in names[0], names
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("info", SCALAR_ROWS)
def test_cuda_graph_replays_advance_the_scalar_states(info):
    """A captured step replayed is the eager run, step for step: the scalar states advance
    inside the launch (its last program), not in a host-side copy."""
    def make():
        gen = torch.Generator(device="cuda").manual_seed(0)
        ps = [torch.randn(n, device="cuda", generator=gen).requires_grad_()
              for n in (4096, 77, 0)]
        for p in ps:
            p.grad = torch.zeros_like(p)
        return ps, info.cls(ps, lr=0.01, schedule=S.cosine(30), **info.representative)

    (ps, eager), (qs, captured) = make(), make()
    grads = [[torch.randn_like(p) for p in ps] for _ in range(12)]
    for opt, params in ((eager, ps), (captured, qs)):
        for p, g in zip(params, grads[0]):
            p.grad.copy_(g)
        opt.step()                                 # warm-up: state, tables, compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step()
    for k in range(1, 12):
        for p, q, g in zip(ps, qs, grads[k]):
            p.grad.copy_(g)
            q.grad.copy_(g)
        eager.step()
        graph.replay()
    torch.cuda.synchronize()
    assert int(captured.schedule_step) == int(eager.schedule_step) == 12
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        for key, value in eager.state[p].items():
            assert torch.equal(value, captured.state[q][key]), key
