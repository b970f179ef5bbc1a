"""The README's recipes, each against what it replaces: timm's CosineLRScheduler warmup (both
``warmup_prefix`` values), a switch to SWA (torch's SWALR), layer-wise lr decay (torch's
AdamW with one group per layer and a torch scheduler).

lrs agree to 1e-13 relative (the same float64 formulas, rounded in another order), parameters
to 1e-5 relative (fp32 over 40 steps).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close
from torch.optim import lr_scheduler as tlr
from torch.optim.swa_utils import SWALR

from fused_lrs import FusedAdamWScheduled
from fused_lrs import schedules as S

BASE, LR_MIN, INIT, WARM, T_INITIAL = 0.1, 1e-4, 1e-3, 5, 30


def timm_cosine_lr(t: int, prefix: bool) -> float:
    """timm 1.0's ``CosineLRScheduler._get_lr`` for one group, ``cycle_limit=1``, ``k_decay=1``,
    stepped per update (``t_in_epochs=False``), written out from its source."""
    if t < WARM:
        return INIT + t * (BASE - INIT) / WARM
    if prefix:
        t = t - WARM
    if t // T_INITIAL >= 1:
        return LR_MIN
    return LR_MIN + 0.5 * (BASE - LR_MIN) * (1 + math.cos(math.pi * t / T_INITIAL))


def timm_recipe(prefix: bool) -> S.Schedule:
    # the README's conversion; the run ends where timm's one cycle does (after it: lr_min)
    return S.warmup(S.cosine(T_max=T_INITIAL, eta_min=LR_MIN), WARM, start_factor=INIT / BASE,
                    prefix=prefix)


@pytest.mark.parametrize("prefix", [True, False])
def test_timm_warmup(prefix):
    end = T_INITIAL + (WARM if prefix else 0)
    t = torch.arange(end)
    expected = torch.tensor([timm_cosine_lr(int(k), prefix) for k in t], dtype=torch.float64)
    assert_close(timm_recipe(prefix).lr(t, BASE), expected, rtol=1e-13)


def test_timm_hold_after_the_cycle():
    r = LR_MIN / BASE  # the README's hold: timm keeps lr_min after its one cycle
    spec = S.sequential([timm_recipe(True), S.linear(r, r, 1)], [WARM + T_INITIAL])
    t = torch.arange(2 * (WARM + T_INITIAL))
    expected = torch.tensor([timm_cosine_lr(int(k), True) for k in t], dtype=torch.float64)
    assert_close(spec.lr(t, BASE), expected, rtol=1e-13)


@pytest.mark.parametrize("prefix", [True, False])
def test_timm_itself(prefix):
    timm = pytest.importorskip("timm.scheduler.cosine_lr")  # timm needs torchvision
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    sched = timm.CosineLRScheduler(opt, T_INITIAL, lr_min=LR_MIN, warmup_t=WARM,
                                   warmup_lr_init=INIT, warmup_prefix=prefix,
                                   t_in_epochs=False)
    end = T_INITIAL + (WARM if prefix else 0)
    got = []
    for k in range(end):
        sched.step_update(k)
        got.append(opt.param_groups[0]["lr"])
    assert_close(timm_recipe(prefix).lr(torch.arange(end), BASE), got, rtol=1e-13)


def run_pair(make_torch, spec, groups_of, steps):
    """torch's optimizer with its scheduler(s) (``make_torch`` returns a callable per step)
    against FusedAdamWScheduled with ``spec``, on the same gradients."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(6, 6, generator=gen) for _ in range(3)]
    ps = [x.clone().requires_grad_() for x in init]
    qs = [x.clone().requires_grad_() for x in init]
    opt = torch.optim.AdamW(groups_of(ps), weight_decay=0.01)
    after_step = make_torch(opt)
    fused = FusedAdamWScheduled(groups_of(qs), weight_decay=0.01, schedule=spec)
    for k in range(steps):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        used = [g["lr"] for g in opt.param_groups]
        opt.step()
        after_step(k)
        fused.step()
        assert_close(fused.last_lr, used, rtol=1e-13, what=f"lr of step {k}")
    for p, q in zip(ps, qs):
        assert_close(q, p, rtol=1e-5, atol=1e-7, what="params")
        for key, value in opt.state[p].items():
            assert_close(fused.state[q][key], value, rtol=1e-5, atol=1e-7, what=key)


def test_switch_to_swa():
    # cosine for 20 steps, then SWALR: linear from the lr at the switch to swa_lr in 5 steps,
    # then swa_lr. The lr at the switch is the cosine's at 20 (its eta_min here).
    swa_start, anneal, swa_lr, eta_min = 20, 5, 0.02, 0.005

    def torch_side(opt):
        cosine = tlr.CosineAnnealingLR(opt, swa_start, eta_min=eta_min)
        scheds = {}

        def after_step(k):
            if k + 1 < swa_start:
                cosine.step()
            elif k + 1 == swa_start:   # the switch: SWALR takes over from the lr in the group
                cosine.step()
                scheds["swa"] = SWALR(opt, swa_lr, anneal, "linear")
            else:
                scheds["swa"].step()
        return after_step

    at_switch = S.cosine(swa_start, eta_min).lr(swa_start, BASE).item() / BASE
    spec = S.sequential([S.cosine(swa_start, eta_min),
                         S.linear(at_switch, swa_lr / BASE, anneal)], [swa_start])
    run_pair(torch_side, spec, lambda ps: [{"params": ps, "lr": BASE}], 35)


def test_layer_wise_lr_decay():
    # Each layer's group lr is base * decay ** depth; one schedule scales them all, as a torch
    # scheduler scales every group's initial_lr.
    decay = 0.7

    def groups(ps):
        return [{"params": [p], "lr": BASE * decay ** (len(ps) - 1 - i)} for i, p in enumerate(ps)]

    def torch_side(opt):
        sched = tlr.SequentialLR(opt, [tlr.LinearLR(opt, 0.01, 1.0, 5),
                                       tlr.CosineAnnealingLR(opt, 35)], [5])
        return lambda k: sched.step()

    spec = S.sequential([S.linear(0.01, 1.0, 5), S.cosine(35)], [5])
    run_pair(torch_side, spec, groups, 40)
