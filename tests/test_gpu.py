"""What only a CUDA device can show: one launch per step, no host sync, int64 addressing of a
tensor past 2^31 elements, and the current stream. (The triton-vs-reference suite runs compiled
on CUDA too: tests/test_kernel_vs_reference.py uses the device when there is one.)"""

import pytest
import torch

from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled
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


@pytest.mark.parametrize("make", [
    lambda: FusedAdamWScheduled(mixed_model(), lr=3e-4, schedule=SCHEDULE, amsgrad=True),
    lambda: FusedAdamScheduled(with_grads(gpt2_small_params()), lr=3e-4, schedule=SCHEDULE),
    lambda: FusedSGDScheduled(mixed_model(), lr=0.1, momentum=0.9, nesterov=True,
                              schedule=S.multistep([10, 20])),
], ids=["adamw-mixed-dtypes-groups", "adam-gpt2-small", "sgd-mixed"])
def test_exactly_one_kernel_per_step(make):
    opt = make()
    assert opt.impl == "triton"
    opt.step()                                   # builds tables, compiles
    names = kernels_in(opt.step)
    assert len(names) == 1 and "fused_step_kernel" in names[0], names


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_step_never_synchronises(impl):
    opt = FusedAdamWScheduled(mixed_model() if impl == "triton" else
                              with_grads(gpt2_small_params()[:6]),
                              lr=3e-4, schedule=S.warmup(S.multistep([3, 5]), 2), impl=impl)
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
    FusedAdamScheduled(p, lr=1e-3, schedule=S.warmup(S.cosine(100), 10)).step()
    before = compiled()
    for T, lr in ((200, 3e-4), (300, 1e-2)):     # new numbers, same structure
        opt = FusedAdamScheduled(p, lr=lr, betas=(0.8, 0.9), schedule=S.warmup(S.cosine(T), 7))
        for _ in range(3):
            opt.step()
    assert compiled() == before


def test_grad_scaler_step_never_synchronises():
    params = with_grads(gpt2_small_params()[:6])
    opt = FusedAdamWScheduled(params, lr=3e-4, schedule=SCHEDULE)
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
