"""RMSprop, Adagrad and Lion (issue 17) in the suites that still name Adam and SGD: every test
here reads the table of optimizers (``tests/optimizers.py``), so it can fold into those suites.

* The registry and the table list the same classes; each kernel module's columns are its
  record's.
* The kernel (interpreted without CUDA) against the reference: one optimizer whose groups are a
  row's whole option grid, so every variant runs in one launch; fp32, then fp32 / bf16 / fp16
  in one launch, without and with fp32 master weights.
* Bad hyperparameters: ours raises ValueError with the peer's message, at construction and in a
  group, where the peer refuses them too.
* GradScaler, checkpoints both ways with the peer, torch.compile, from_torch, scheduled momentum
  and weight decay, against the peer or the eager step.
The equivalence with the peer over the whole grid is test_optim_vs_torch.py (it reads the table).
"""

import io

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import INFO, OPTIMIZER_INFOS
from test_cpu_backend import run as cpu_backend_run
from test_grad_scaler import INF_STEPS, STEPS, compare, loop
from test_kernel_vs_reference import assert_same
from test_optim_vs_torch import drive_torch_lr, flat_params, make_pair, run_both, set_grads
from torch.optim import lr_scheduler as tls

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


def test_the_table_has_a_row_for_every_registered_class():
    assert [info.cls for info in OPTIMIZER_INFOS] == list(algorithms.OPTIMIZERS)


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


# One unit in the last place of 16-bit storage, relative to the tensor's largest entry: the
# reference rounds as torch's CPU ops do (add(alpha=) and addcmul are fused multiply-adds
# there), the interpreted kernel does not fuse, and a value that sits on a 16-bit rounding
# boundary goes either way (as in test_cpu_backend.py). fp32 storage: assert_same's 1e-6.
ULP = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 1e-6}


def assert_close_in_storage_ulps(runs):
    (ref_params, ref_opt), (tri_params, tri_opt) = runs
    assert int(ref_opt.schedule_step) == int(tri_opt.schedule_step)
    for i, (a, b) in enumerate(zip(ref_params, tri_params)):
        assert ref_opt.state[a].keys() == tri_opt.state[b].keys(), f"param {i}: state keys"
        for what, x, y in [("param", a, b), *((k, v, tri_opt.state[b][k])
                                              for k, v in ref_opt.state[a].items())]:
            assert x.dtype == y.dtype, f"param {i} {what}: {y.dtype} != {x.dtype}"
            rtol = ULP.get(x.dtype, 0.0)
            scale = x.detach().abs().max().item() if x.numel() else 0.0
            assert_close(y, x, rtol=rtol, atol=rtol * scale, what=f"param {i} {what}")


@pytest.mark.parametrize("master_weights", [False, True], ids=["16-bit", "masters"])
@pytest.mark.parametrize("info", NEW)
def test_kernel_matches_the_reference_on_mixed_dtypes(info, master_weights):
    # eps 1e-3 where there is one: at the first update of RMSprop and Adagrad the denominator
    # is |g| sqrt(1 - alpha) + eps, and where a 16-bit gradient and wd * p cancel, g is a
    # rounding residual (~1e-9) that the two round differently (see ULP); eps 1e-8 would
    # amplify that to an O(1) difference.
    overrides = {"eps": 1e-3} if "eps" in info.record.names else {}
    runs = kernel_runs(info, [torch.bfloat16, torch.float32, torch.float16], master_weights,
                       **overrides)
    assert_close_in_storage_ulps(runs)
    ps, opt = runs[1]
    for p in ps:
        if master_weights and p.dtype != torch.float32:
            assert torch.equal(p.detach(), opt.state[p]["master"].to(p.dtype))


# ---------------------------------------------------------------- arguments

def params(*shape):
    return [torch.zeros(shape, requires_grad=True)]


@pytest.mark.parametrize("info, key, value, match", [
    pytest.param(p.values[0], key, value, match, id=f"{p.id}-{key}={value}")
    for p in NEW for key, value, match in p.values[0].invalid])
def test_bad_hyperparameters_are_refused_with_the_peers_message(info, key, value, match):
    with pytest.raises(ValueError, match=match) as ours:
        info.cls(params(3), **{key: value})
    # Also in a group of its own, which the peer itself never checks.
    with pytest.raises(ValueError, match=match):
        info.cls([{"params": params(3)}, {"params": params(2), key: value}])
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

@pytest.mark.parametrize("info", NEW)
def test_grad_scaler_matches_the_peer(info):
    """GradScaler's loop (inf gradients on some steps) with impl="auto" against the peer under
    the same GradScaler: Adagrad's CPU kernel unscales and skips itself; RMSprop's and Lion's
    foreach updates leave such steps to the reference."""
    options = info.representative
    ours = loop(lambda ps: info.cls(ps, lr=0.01, schedule=S.step(5, 0.5), **options))
    theirs = loop(lambda ps: info.peer(ps, lr=0.01, **options), lambda o: tls.StepLR(o, 5, 0.5))
    assert ours[3] == [k in INF_STEPS for k in range(STEPS)]
    compare(ours, theirs)


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


@pytest.mark.parametrize("info", NEW)
def test_cpu_backend_with_master_weights_and_16_bit_parameters(info):
    """The CPU backend against the reference (test_cpu_backend.run: within one 16-bit ulp of
    each tensor's scale, 1e-5 for fp32): fp32, bf16 and fp16 parameters with fp32 masters in
    one group; bf16/fp16 without masters where torch's kernel computes in fp32 and rounds once
    (Adagrad). RMSprop's and Lion's foreach ops would round every intermediate to 16 bits:
    there impl="auto" takes the reference, and impl="torch_fused" is refused."""
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.bfloat16, torch.float32]
    ours, _ = cpu_backend_run(info.cls, info.representative, dtypes=dtypes, master_weights=True)
    for p in ours[0]:
        if p.dtype != torch.float32:
            assert torch.equal(p, ours[1].state[p]["master"].to(p.dtype))
    p16 = [torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)]
    if info.record.cpu.unsupported({torch.bfloat16}) is None:
        for dtype in (torch.bfloat16, torch.float16):
            cpu_backend_run(info.cls, info.representative, dtype=dtype)
    else:
        assert info.cls(p16).impl == "reference"
        with pytest.raises(ValueError, match="round.*bf16/fp16.*master_weights=True"):
            info.cls(p16, impl="torch_fused")


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
    assert len(ours._cache.backend._buckets[0].scratch["waves"][0]) == 6
    assert_same_optimizer(ours, theirs, rtol=0.0, extra_state=info.extra_state)


K, N = 6, 14          # a checkpoint after K steps, continued to N


@pytest.mark.parametrize("info", NEW)
def test_the_peers_checkpoint_continues_like_the_peer(info):
    ours, theirs, sched = make_pair(info, info.representative, torch.float64, S.step(4, 0.5),
                                    schedule_factory=lambda o: tls.StepLR(o, 4, 0.5))
    gen = torch.Generator().manual_seed(1)
    for _ in range(K):
        set_grads(ours, theirs, gen)
        theirs.step()
        sched.step()
    saved = torch.load(_saved(theirs.state_dict()), weights_only=False)
    with torch.no_grad():
        for p, q in zip(flat_params(ours), flat_params(theirs)):
            p.copy_(q)
    ours.load_state_dict(saved)
    ours.set_schedule(ours.schedule, K)
    run_both(ours, theirs, sched, torch.float64, n=N - K)


@pytest.mark.parametrize("info", NEW)
def test_the_peer_loads_our_checkpoint_and_continues_like_us(info):
    spec = S.step(4, 0.5)
    ours, theirs, _ = make_pair(info, info.representative, torch.float64, spec)
    gen = torch.Generator().manual_seed(1)
    for _ in range(K):
        set_grads(ours, theirs, gen)
        ours.step()
    with torch.no_grad():
        for p, q in zip(flat_params(ours), flat_params(theirs)):
            q.copy_(p)
    theirs.load_state_dict(torch.load(_saved(ours.state_dict()), weights_only=False))
    extra = info.extra_state
    for state in theirs.state.values():       # ours keeps these besides; the peer never reads them
        for key in extra & set(state):
            del state[key]
    bases = [g["lr"] for g in theirs.param_groups]
    run_both(ours, theirs, None, torch.float64, n=N - K,
             on_step=lambda k: drive_torch_lr(theirs, spec, bases, k))


def _saved(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return buffer


# ---------------------------------------------------------------- compile, from_torch, schedules

@pytest.mark.parametrize("info", NEW)
def test_compiled_step_is_one_graph_and_bitwise_the_eager_step(info):
    """torch.compile of opt.step() (impl="auto": the CPU backend) is the one custom op: one
    graph, no recompile while the lr moves, the same result as eager steps, bitwise."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(s, generator=gen).requires_grad_() for s in ((7, 5), (5,), (33,))]
        opt = info.cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03}], lr=0.01,
                       schedule=SCHEDULE, **info.representative)
        step = opt.step
        if compiled:
            counter = CompileCounterWithBackend("aot_eager")
            step = torch.compile(opt.step, backend=counter, fullgraph=True)
            opt.init_state()
        for k in range(12):
            grads = torch.Generator().manual_seed(100 + k)
            for p in ps:
                p.grad = torch.randn(p.shape, generator=grads)
            step()
        runs.append((ps, opt))
    torch._dynamo.reset()
    assert counter.frame_count == 1, "recompiled"
    (eager_ps, eager), (compiled_ps, compiled) = runs
    assert int(eager.schedule_step) == int(compiled.schedule_step) == 12
    for p, q in zip(eager_ps, compiled_ps):
        assert torch.equal(p, q)
        for key, value in eager.state[p].items():
            assert torch.equal(value, compiled.state[q][key]), key


# (peer optimizer, scheduler): RMSprop's momentum cycled by OneCycleLR (from_torch makes it a
# momentum_schedule), Adagrad under warmup-cosine, lion_pytorch's Lion with decoupled weight
# decay (an attribute, not a default: its record's peer_arguments); two groups, their own lr
# and weight decay.
FROM_TORCH = {
    "Lion-decoupled-step": (
        lambda groups: FusedLionScheduled.algorithm.peer_class()(
            groups, lr=0.01, weight_decay=1e-3, decoupled_weight_decay=True),
        lambda o: tls.StepLR(o, 5, 0.5)),
    "RMSprop-one-cycle-momentum": (
        lambda groups: torch.optim.RMSprop(groups, lr=0.01, momentum=0.9, centered=True),
        lambda o: tls.OneCycleLR(o, [0.02, 0.05], 40, pct_start=0.3)),
    "Adagrad-warmup-cosine": (
        lambda groups: torch.optim.Adagrad(groups, lr=0.05, lr_decay=0.01,
                                           initial_accumulator_value=0.1),
        lambda o: tls.SequentialLR(o, [tls.LinearLR(o, 0.1, 1.0, 4), tls.CosineAnnealingLR(o, 20)],
                                   [4])),
}


@pytest.mark.parametrize("name", FROM_TORCH)
def test_from_torch_continues_the_torch_run(name):
    """Two identical torch pairs run K steps; one is converted with fused_lrs.from_torch, and
    both run to N on the same gradients: params and every state tensor agree (fp32, rtol 1e-5,
    atol 1e-7, as test_migrate.py)."""
    import fused_lrs

    make_opt, make_sched = FROM_TORCH[name]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in ((5, 4), (7,), (1,))]
    pairs = []
    for _ in range(2):
        ps = [x.clone().requires_grad_() for x in init]
        opt = make_opt([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02, "weight_decay": 0.05}])
        pairs.append((ps, opt, make_sched(opt)))
    (ps, opt, sched), (qs, twin, twin_sched) = pairs
    fused = None
    for k in range(N):
        if k == K:
            fused = fused_lrs.from_torch(opt, sched)
            assert type(fused) is fused_lrs.algorithms.for_peer(type(opt))
        grads = [torch.randn(s.shape, generator=gen) for s in init]
        for p, q, g in zip(ps, qs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if fused is None:
            opt.step()
            sched.step()
        else:
            fused.step()
        twin.step()
        twin_sched.step()
    assert_same_optimizer(fused, twin, rtol=1e-5, atol=1e-7, what=name,
                          extra_state=INFO[type(fused)].extra_state)


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


# ---------------------------------------------------------------- FSDP2

@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    """Every new row's FSDP2 run (``dist_workers.fsdp_table``), on 2 gloo ranks started once."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    from dist_workers import launch
    return launch([f"fsdp_table:{p.values[0].name}" for p in NEW],
                  str(tmp_path_factory.mktemp("dist")), 240)


@pytest.mark.parametrize("info", NEW)
def test_fsdp2_shards_match_the_peer(fsdp_results, info):
    """FSDP2 parameters (DTensors, one shard of the head empty on rank 1): ours updates each
    rank's local shards (the CPU backend, 8 steps) and matches the peer stepping the DTensors
    with torch's scheduler: fp32, rtol 1e-5 / atol 1e-7, every state tensor."""
    from test_distributed import assert_same as assert_same_shards
    from test_distributed import on_each_rank

    for rank, result in on_each_rank(fsdp_results, f"fsdp_table:{info.name}"):
        assert result["impl"] == "torch_fused" and result["t"] == 8
        assert_same_shards(result["ours"], result["torch"], f"rank {rank}", rtol=1e-5,
                           atol=1e-7)


# ---------------------------------------------------------------- CUDA

@pytest.mark.gpu
@pytest.mark.parametrize("info", NEW)
def test_on_cuda_one_launch_per_step_no_sync_and_the_reference(info):
    """The compiled kernel on CUDA: every option of the row's grid as a group, fp32 and bf16
    with fp32 masters in one launch: exactly one kernel per step, no host sync (3 steps under
    sync_debug_mode "error"), and the reference's result (the storage dtypes' ULP)."""
    from test_gpu import kernels_in

    runs = kernel_runs(info, [torch.float32, torch.bfloat16], master_weights=True,
                       **({"eps": 1e-3} if "eps" in info.record.names else {}))
    assert_close_in_storage_ulps(runs)
    ps, opt = runs[1]
    assert opt.impl == "triton" and ps[0].is_cuda
    for p in ps:
        p.grad = torch.randn_like(p)
    names = kernels_in(opt.step)
    assert len(names) == 1 and "fused_step_kernel" in names[0], names
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
        lr = opt.last_lr
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert lr.is_cuda and int(opt.schedule_step) == KERNEL_STEPS + 4
