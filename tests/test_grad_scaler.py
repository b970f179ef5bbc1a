"""torch.amp.GradScaler drives the step through `_step_supports_amp_scaling`, as it drives
torch's fused optimizers: the gradients are unscaled and an inf/NaN step is skipped inside the
step, with no host sync. Every optimizer of the table (its representative) against its peer
(fused where the peer has a fused kernel) under the same GradScaler loop, with inf gradients
injected on some steps."""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_same_optimizer
from optimizers import representatives, swept
from schedule_table import BY_NAME

from fused_lrs import schedules as S

STEPS = 24
INF_STEPS = {3, 9, 10, 17}          # a lone skip, two in a row, one late
SHAPES = [(6, 5), (7,), (1,)]
TORCH_SCHEDULER, SPEC = BY_NAME["step"]


def loop(make_opt, torch_sched=None, hold_torch_sched=False, device="cpu", seed=0):
    """GradScaler's loop; grads are scale * w_k, with an inf in w_k on INF_STEPS. Returns the
    params, the optimizer, the lr each step used and whether it was skipped."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in SHAPES]
    opt = make_opt(params)
    sched = torch_sched(opt) if torch_sched else None
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 12, growth_interval=4)
    lrs, skipped = [], []
    for k in range(STEPS):
        ws = [torch.randn(p.shape, generator=gen).to(device) for p in params]
        if k in INF_STEPS:
            ws[k % len(ws)].view(-1)[0] = float("inf")
        opt.zero_grad()
        scaler.scale(sum((p * w).sum() for p, w in zip(params, ws))).backward()
        lrs.append(opt.param_groups[0]["lr"] if sched else None)
        scaler.step(opt)
        scaler.update()
        if sched and not (hold_torch_sched and k in INF_STEPS):
            sched.step()
        if hasattr(opt, "last_step_skipped"):
            skipped.append(bool(opt.last_step_skipped))
    return params, opt, lrs, skipped, scaler


def compare(ours, theirs, extra_state, rtol=1e-5, atol=1e-7):
    (_, opt, _, _, scaler), (_, topt, _, _, tscaler) = ours, theirs
    assert scaler.get_scale() == tscaler.get_scale()
    assert_same_optimizer(opt, topt, rtol, atol, extra_state=extra_state)


def ours_and_peer(info, options, hold=False):
    """Factories of ours (the reference, under SPEC) and of the peer (fused where it has a
    fused kernel), for ``loop``."""
    return (lambda ps: info.cls(ps, lr=0.01, schedule=SPEC, impl="reference",
                                hold_schedule_on_skip=hold, **options),
            lambda ps: info.peer(ps, lr=0.01, fused=True, **options))


@pytest.mark.parametrize("info, options", representatives())
def test_matches_torch_fused_under_grad_scaler(info, options):
    ours_opt, torch_opt = ours_and_peer(info, options)
    ours = loop(ours_opt)
    theirs = loop(torch_opt, TORCH_SCHEDULER)
    assert ours[3] == [k in INF_STEPS for k in range(STEPS)]
    # Skipped steps leave the per-parameter counts; the schedule moved on every step.
    assert int(ours[1].schedule_step) == STEPS
    assert float(ours[1].state[ours[0][0]]["step"]) == STEPS - len(INF_STEPS)
    compare(ours, theirs, info.extra_state)


@pytest.mark.parametrize("info, options", representatives())
def test_hold_schedule_on_skip(info, options):
    ours_opt, torch_opt = ours_and_peer(info, options, hold=True)
    ours = loop(ours_opt)
    theirs = loop(torch_opt, TORCH_SCHEDULER, hold_torch_sched=True)
    assert int(ours[1].schedule_step) == STEPS - len(INF_STEPS)
    compare(ours, theirs, info.extra_state)


# Every row skips on the kernel; holding the counter is the generic kernel's (the sweep rows).
@pytest.mark.parametrize("info, options, hold", [
    pytest.param(*p.values, hold, id=f"{p.id}-{hold}")
    for hold, params in ((False, representatives()), (True, swept())) for p in params])
def test_kernel_matches_reference_under_grad_scaler(info, options, hold):
    runs = [loop(lambda ps, impl=impl: info.cls(
                ps, lr=0.01, schedule=S.warmup(S.cosine(20), 4), impl=impl,
                hold_schedule_on_skip=hold, **options), device=KERNEL_DEVICE)
            for impl in ("reference", "triton")]
    assert runs[0][3] == runs[1][3] == [k in INF_STEPS for k in range(STEPS)]
    assert_same_optimizer(runs[1][1], runs[0][1], rtol=1e-6, scaled=True)
