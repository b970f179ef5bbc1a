"""What only a CUDA device can show: one launch per step, no host sync, int64 addressing of a
tensor past 2^31 elements, and the current stream. (The triton-vs-reference suite runs compiled
on CUDA too: tests/test_kernel_vs_reference.py uses the device when there is one.)"""

import pytest
import torch
from conftest import assert_same_optimizer
from optimizers import ANY, representatives, swept

from fused_lrs import FusedSGDScheduled
from fused_lrs import schedules as S

pytestmark = pytest.mark.gpu

SCHEDULE = S.warmup(S.cosine(T_max=900), steps=100)


def gpt2_small_params(dtype=torch.float32, device="cuda"):
    """The 148 parameter tensors of GPT-2 small (124M parameters, lm_head tied to wte)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d),
                   (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return [torch.randn(s, dtype=dtype, device=device, requires_grad=True) * 0.02
            for s in shapes]


def with_grads(params):
    params = [p.detach().requires_grad_() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def kernels_in(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower()
            and "memset" not in e.name.lower()]


def mixed_model():
    """fp32 norms and bf16/fp16 matrices in several groups: still one launch."""
    params = with_grads(gpt2_small_params()[:30])
    for i, p in enumerate(params):
        if p.dim() == 2:
            p.data = p.data.to(torch.bfloat16 if i % 2 else torch.float16)
            p.grad = p.grad.to(p.dtype)
    return [{"params": params[:10]}, {"params": params[10:], "lr": 1e-4, "weight_decay": 0.0}]


# Every row on the mixed model (its kernel, its variants and dtypes in one launch); ANY on all
# 148 tensors of GPT-2 small.
@pytest.mark.parametrize("make", [
    *(pytest.param(lambda info=info, options=options: info.cls(
        mixed_model(), lr=3e-4, schedule=SCHEDULE, **options), id=f"{p.id}-mixed-dtypes-groups")
      for p in representatives() for info, options in [p.values]),
    pytest.param(lambda: ANY.cls(with_grads(gpt2_small_params()), lr=3e-4, schedule=SCHEDULE,
                                 **ANY.representative), id=f"{ANY.name}-gpt2-small"),
])
def test_exactly_one_kernel_per_step(make):
    opt = make()
    assert opt.impl == "triton"
    opt.step()                                   # builds tables, compiles
    names = kernels_in(opt.step)
    assert len(names) == 1 and "fused_step_kernel" in names[0], names
    torch.cuda.set_sync_debug_mode("error")      # and no step waits for the device
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_step_never_synchronises(impl):
    opt = ANY.cls(mixed_model() if impl == "triton" else with_grads(gpt2_small_params()[:6]),
                  lr=3e-4, schedule=S.warmup(S.multistep([3, 5]), 2), impl=impl,
                  **ANY.representative)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):                       # the first step (tables, compile) included
            opt.step()
        lr = opt.last_lr                         # the sync-free lr for logging
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert lr.is_cuda
    assert int(opt.schedule_step) == 3


def test_a_tensor_past_2_pow_31_elements():
    # Plain SGD: each entry's expected value follows from its gradient alone (p - lr g).
    n = 2**31 + 3 * 1024 + 5                     # int32 offsets would wrap in the last blocks
    p = torch.zeros(n, dtype=torch.float16, device="cuda", requires_grad=True)
    p.grad = torch.ones_like(p)
    p.grad[-7:] = torch.arange(7, dtype=torch.float16, device="cuda")
    opt = FusedSGDScheduled([p], lr=0.5)
    opt.step()
    tail = p.detach()[-7:].float().cpu()
    assert torch.equal(tail, -0.5 * torch.arange(7, dtype=torch.float32))
    assert torch.equal(p.detach()[:4].float().cpu(), torch.full((4,), -0.5))
    assert p.detach()[2**31 - 2: 2**31 + 2].float().cpu().eq(-0.5).all()


def test_the_kernel_runs_on_the_current_stream():
    # On a side stream, a long sleep precedes the write of the gradient. A step issued on that
    # stream must see the new gradient; on any other stream it would race ahead and see zeros.
    # Plain SGD: the expected value follows from the gradient alone (p - lr g).
    p = torch.zeros(1 << 20, device="cuda", requires_grad=True)
    p.grad = torch.zeros_like(p)
    opt = FusedSGDScheduled([p], lr=1.0)
    opt.step()                                   # compile and build outside the race
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        p.grad.fill_(1.0)
        opt.step()
    torch.cuda.synchronize()
    assert p.detach().eq(-1.0).all()


def test_no_recompile_when_schedule_values_change():
    from fused_lrs.kernels import optim as K

    def compiled():
        return len(K.fused_step_kernel.device_caches[torch.cuda.current_device()][0])

    p = with_grads([torch.randn(4096, device="cuda")])
    ANY.cls(p, lr=1e-3, schedule=S.warmup(S.cosine(100), 10), **ANY.representative).step()
    before = compiled()
    changed = {k: v for change in ANY.changes.values() for k, v in change.items()}
    for T, lr in ((200, 3e-4), (300, 1e-2)):     # new numbers, same structure
        opt = ANY.cls(p, lr=lr, schedule=S.warmup(S.cosine(T), 7),
                      **dict(ANY.representative, **changed))
        for _ in range(3):
            opt.step()
    assert compiled() == before


def test_grad_scaler_step_never_synchronises():
    params = with_grads(gpt2_small_params()[:6])
    opt = ANY.cls(params, lr=3e-4, schedule=SCHEDULE, **ANY.representative)
    scaler = torch.amp.GradScaler("cuda")
    for p in params:
        p.grad.mul_(scaler.get_scale())
    scaler.step(opt)                                 # first step: compile and tables
    scaler.update()
    params[0].grad.view(-1)[0] = float("inf")
    torch.cuda.set_sync_debug_mode("error")
    try:
        scaler.step(opt)
        scaler.update()
        skipped = opt.last_step_skipped
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(skipped)


# ---------------------------------------------------------------- programs, layouts, streams

def reference_pair(make, params, steps, grads_for):
    """The kernel and the reference from the same parameters: returns both (params, opt).
    ``params``: a list (cloned per run, in its own layout) or a function making fresh ones."""
    runs = []
    for impl in ("reference", "triton"):
        ps = [torch.nn.Parameter(p) for p in params()] if callable(params) else \
            [torch.nn.Parameter(p.detach().clone()) for p in params]
        runs.append((ps, make(ps, impl)))
    for k in range(steps):
        grads = grads_for(k)
        for ps, opt in runs:
            for p, g in zip(ps, grads):
                p.grad = None if g is None else torch.empty_like(p).copy_(g)
            opt.step()
    return runs


def assert_runs_match(runs, rtol=1e-6):
    # As tests/test_kernel_vs_reference.py: relative to each tensor's own scale.
    (_, ref), (_, tri) = runs
    assert_same_optimizer(tri, ref, rtol=rtol, scaled=True)


# Every row's representative in fp32; ANY's with bf16 parameters and fp32 masters.
@pytest.mark.parametrize("info, options, dtype", [
    *(pytest.param(*p.values, torch.float32, id=p.id) for p in representatives()),
    pytest.param(ANY, ANY.representative, torch.bfloat16, id=f"{ANY.name}-bf16-masters")])
def test_multi_block_programs_on_10m_elements_match_the_reference(info, options, dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    sizes = [10_500_001, 4097, 1, 1_048_576]          # many programs per tensor, ragged ends
    params = [torch.randn(n, device="cuda", generator=gen).to(dtype) for n in sizes]

    def make(ps, impl):
        return info.cls(ps, lr=1e-3, master_weights=dtype != torch.float32, schedule=SCHEDULE,
                        impl=impl, **options)

    def grads_for(k):
        return [None if (i + k) % 4 == 3 else
                torch.randn(n, device="cuda", generator=gen).to(dtype)
                for i, n in enumerate(sizes)]

    runs = reference_pair(make, params, 6, grads_for)
    assert runs[1][1]._cache.backend.n_programs > 100
    assert_runs_match(runs)


def test_misaligned_and_channels_last_parameters_in_one_launch():
    def fresh():                                    # the same values, views and layouts
        g = torch.Generator(device="cuda").manual_seed(1)
        conv = torch.randn(64, 32, 3, 3, device="cuda", generator=g).to(torch.bfloat16).to(
            memory_format=torch.channels_last)
        base = torch.randn(1_000_003, device="cuda", generator=g)
        return [conv, base[1:], base[:-1].clone(),
                torch.randn(33, 17, device="cuda", generator=g).t()]

    params = fresh()
    gen = torch.Generator(device="cuda").manual_seed(2)

    def make(ps, impl):
        return ANY.cls(ps, lr=1e-3, schedule=SCHEDULE, impl=impl, **ANY.representative)

    def grads_for(k):
        return [torch.randn(p.shape, device="cuda", generator=gen).to(p.dtype) for p in params]

    runs = reference_pair(make, fresh, 5, grads_for)
    tri = runs[1][0]
    assert tri[0].is_contiguous(memory_format=torch.channels_last) and not tri[3].is_contiguous()
    assert tri[1].data_ptr() % 16 != 0 and tri[2].data_ptr() % 16 == 0
    assert_runs_match(runs)


def test_ticket_stress_20k_programs_200_steps_counts_exact():
    # 20,480 programs of one block each: every launch's last program must see all the others
    # finished, or a count or t would be off by one somewhere in 200 steps.
    sizes = [102_400] * 240 + [1, 3, 1025]      # 8 in 9 of them per step: ~21,800 programs
    params = [torch.zeros(n, device="cuda", requires_grad=True) for n in sizes]
    grads = [torch.full((n,), 1e-3, device="cuda") for n in sizes]
    opt = ANY.cls(params, lr=1e-4, schedule=SCHEDULE, **ANY.representative)
    expected = [0] * len(params)

    def step(k):
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if (i + k) % 9 == 4 else g
            expected[i] += p.grad is not None
        opt.step()

    step(0)
    backend = opt._cache.backend
    backend.max_blocks_per_program = 1
    backend._chunk()
    for k in range(1, 200):
        step(k)
        backend.max_blocks_per_program = 1        # a new None pattern rebuilds the tables
    torch.cuda.synchronize()
    assert backend.n_programs >= 20_000 and backend.blocks_per_program == 1
    assert int(opt.schedule_step) == 200
    assert [int(opt.state[p]["step"]) for p in params] == expected
    assert int(backend.ticket) == 0


def test_two_optimizers_on_two_streams_and_one_optimizer_moving_streams():
    gen = torch.Generator(device="cuda").manual_seed(2)
    (info_a, options_a), (info_b, options_b) = [p.values for p in swept()][:2]

    def model():
        return [torch.randn(2_000_000, device="cuda", generator=gen) for _ in range(3)]

    pa, pb = model(), model()
    runs = {}
    for impl in ("reference", "triton"):
        a = [torch.nn.Parameter(p.clone()) for p in pa]
        b = [torch.nn.Parameter(p.clone()) for p in pb]
        runs[impl] = (a, b, info_a.cls(a, lr=1e-3, schedule=SCHEDULE, impl=impl, **options_a),
                      info_b.cls(b, lr=0.1, impl=impl, **options_b))
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    for _ in range(4):
        ga = [torch.randn(p.shape, device="cuda", generator=gen) for p in pa]
        gb = [torch.randn(p.shape, device="cuda", generator=gen) for p in pb]
        for impl, (a, b, opt_a, opt_b) in runs.items():
            for p, g in zip(a + b, ga + gb):
                p.grad = g.clone()
            torch.cuda.synchronize()
            if impl == "reference":
                opt_a.step()
                opt_b.step()
                continue
            with torch.cuda.stream(s1):                # two optimizers at once
                torch.cuda._sleep(20_000_000)
                opt_a.step()
            with torch.cuda.stream(s2):
                opt_b.step()
            torch.cuda.synchronize()
    # One optimizer moving from a delayed stream to another, with new gradients: the second
    # step (its upload included) must wait for the first, or it runs first, on the other
    # gradients, and its upload overwrites the gradient table the first has yet to read.
    g1 = [torch.randn(p.shape, device="cuda", generator=gen) for p in pa]
    g2 = [torch.randn(p.shape, device="cuda", generator=gen) for p in pa]
    ref_a, ref_opt = runs["reference"][0], runs["reference"][2]
    for gs in (g1, g2):                                # the order the steps were issued in
        for p, g in zip(ref_a, gs):
            p.grad = g.clone()
        ref_opt.step()
    for _impl, (a, _b, opt_a, _) in list(runs.items())[1:]:
        torch.cuda.synchronize()
        with torch.cuda.stream(s1):
            for p, g in zip(a, g1):
                p.grad = g.clone()
            torch.cuda._sleep(100_000_000)
            opt_a.step()
        with torch.cuda.stream(s2):
            for p, g in zip(a, g2):
                p.grad = g.clone()
            opt_a.step()
        torch.cuda.synchronize()
    ref, tri = runs["reference"], runs["triton"]
    assert_runs_match([(ref[0], ref[2]), (tri[0], tri[2])])
    assert_runs_match([(ref[1], ref[3]), (tri[1], tri[3])])


def test_step_never_synchronises_with_new_gradients_every_step():
    params = with_grads(gpt2_small_params()[:20])
    opt = ANY.cls(params, lr=3e-4, schedule=SCHEDULE, **ANY.representative)
    opt.step()
    new = [[torch.randn_like(p) for p in params] for _ in range(2)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(6):
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, new[k % 2]):
                p.grad = g
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(opt.schedule_step) == 7


@pytest.mark.parametrize("info, options", representatives())
def test_the_grid_follows_the_compiled_kernels_occupancy(info, options):
    from fused_lrs.optim.backends.triton import programs_per_sm

    p = torch.zeros(64 << 20, device="cuda", requires_grad=True)
    p.grad = torch.ones_like(p)
    opt = info.cls([p], lr=1e-3, **options)
    opt.step()
    backend = opt._cache.backend
    compiled = backend.compiled
    assert compiled.n_spills == 0
    assert backend.programs_per_sm == programs_per_sm(compiled.n_regs,
                                                      compiled.metadata.num_warps,
                                                      compiled.metadata.shared)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert backend.n_programs <= backend.programs_per_sm * sms


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_parameters_on_the_second_gpu_with_the_first_current():
    p = torch.randn(1 << 20, device="cuda:1", requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ref = ANY.cls([q], lr=1e-3, impl="reference", **ANY.representative)
    opt = ANY.cls([p], lr=1e-3, **ANY.representative)
    torch.cuda.set_device(0)
    for _ in range(3):
        g = torch.randn_like(p)
        p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
    assert_runs_match([([q], ref), ([p], opt)])


def test_fsdp2_world_size_1_matches_the_peer(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/rdzv", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        models = []
        for _ in range(2):
            torch.manual_seed(0)
            m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                                    torch.nn.Linear(256, 8)).cuda()
            fully_shard(m[0])
            fully_shard(m)
            models.append(m)
        ours = ANY.cls(models[0].parameters(), lr=1e-3, **ANY.representative)
        assert ours.impl == "triton"
        theirs = ANY.peer(models[1].parameters(), lr=1e-3, fused=True, **ANY.representative)
        for k in range(5):
            x = torch.randn(16, 64, device="cuda", generator=torch.Generator(
                device="cuda").manual_seed(k))
            for m, opt in zip(models, (ours, theirs)):
                opt.zero_grad(set_to_none=True)
                m(x).square().mean().backward()
                opt.step()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(a.to_local(), b.to_local(), rtol=1e-5, atol=1e-7)
            for key in set(theirs.state[b]) - {"step"}:     # the step counts: plain tensors
                torch.testing.assert_close(ours.state[a][key].to_local(),
                                           theirs.state[b][key].to_local(), rtol=1e-5,
                                           atol=1e-7)
    finally:
        dist.destroy_process_group()
