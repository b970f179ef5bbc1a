"""torch.amp.GradScaler drives the step through `_step_supports_amp_scaling`, as it drives
torch's fused optimizers: the gradients are unscaled and an inf/NaN step is skipped inside the
step, with no host sync. Compared with torch's fused Adam and SGD under the same GradScaler
loop, with inf gradients injected on some steps."""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close
from torch.optim import lr_scheduler as tls

from fused_lrs import FusedAdamScheduled, FusedSGDScheduled
from fused_lrs import schedules as S

STEPS = 24
INF_STEPS = {3, 9, 10, 17}          # a lone skip, two in a row, one late
SHAPES = [(6, 5), (7,), (1,)]


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


def compare(ours, theirs, rtol=1e-5, atol=1e-7):
    (ps, opt, _, _, scaler), (qs, topt, _, _, tscaler) = ours, theirs
    assert scaler.get_scale() == tscaler.get_scale()
    for p, q in zip(ps, qs):
        assert_close(p, q, rtol=rtol, atol=atol, what="param")
        for key, value in topt.state[q].items():
            assert_close(opt.state[p][key], value, rtol=rtol, atol=atol, what=key)


CASES = {
    "adam": (lambda ps: FusedAdamScheduled(ps, lr=0.01, weight_decay=0.01,
                                           schedule=S.step(5, 0.5), impl="reference"),
             lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01, fused=True),
             lambda o: tls.StepLR(o, 5, 0.5)),
    "sgd": (lambda ps: FusedSGDScheduled(ps, lr=0.1, momentum=0.9, schedule=S.exponential(0.9),
                                         impl="reference"),
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
            lambda o: tls.ExponentialLR(o, 0.9)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_fused_under_grad_scaler(name):
    ours_opt, torch_opt, torch_sched = CASES[name]
    ours = loop(ours_opt)
    theirs = loop(torch_opt, torch_sched)
    assert ours[3] == [k in INF_STEPS for k in range(STEPS)]
    # Skipped steps leave the per-parameter counts; the schedule moved on every step.
    assert int(ours[1].schedule_step) == STEPS
    if name == "adam":
        assert float(ours[1].state[ours[0][0]]["step"]) == STEPS - len(INF_STEPS)
    compare(ours, theirs)


def test_hold_schedule_on_skip():
    ours_opt, torch_opt, torch_sched = CASES["adam"]
    ours = loop(lambda ps: FusedAdamScheduled(ps, lr=0.01, weight_decay=0.01,
                                              schedule=S.step(5, 0.5), impl="reference",
                                              hold_schedule_on_skip=True))
    theirs = loop(torch_opt, torch_sched, hold_torch_sched=True)
    assert int(ours[1].schedule_step) == STEPS - len(INF_STEPS)
    compare(ours, theirs)


@pytest.mark.parametrize("hold", [False, True])
def test_kernel_matches_reference_under_grad_scaler(hold):
    runs = [loop(lambda ps, impl=impl: FusedAdamScheduled(
                ps, lr=0.01, amsgrad=True, schedule=S.warmup(S.cosine(20), 4), impl=impl,
                hold_schedule_on_skip=hold), device=KERNEL_DEVICE)
            for impl in ("reference", "triton")]
    assert runs[0][3] == runs[1][3] == [k in INF_STEPS for k in range(STEPS)]
    assert int(runs[0][1].schedule_step) == int(runs[1][1].schedule_step)
    (ps, opt, *_), (qs, topt, *_) = runs
    for p, q in zip(ps, qs):
        scale = p.detach().abs().max().item()
        assert_close(q, p, rtol=1e-6, atol=1e-6 * scale, what="param")
        for key, value in opt.state[p].items():
            scale = value.abs().max().item()
            assert_close(topt.state[q][key], value, rtol=1e-6, atol=1e-6 * scale, what=key)
