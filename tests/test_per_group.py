"""Per-group values (OneCycleLR's max_lr, CyclicLR's base_lr and max_lr lists) on every backend,
against torch's scheduler on torch's optimizer: the lr of every step to 1e-15 relative (both
evaluate the same float64 closed form; the kernel's cos may differ by an ulp), the parameters
and every state to 1e-5 relative (fp32 over 30 steps; atol 1e-7 near 0).
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close
from torch.optim import lr_scheduler as tlr

from fused_lrs import FusedAdamWScheduled, FusedSGDScheduled
from fused_lrs import schedules as S

STEPS = 30
CASES = {
    "one_cycle": (lambda o: tlr.OneCycleLR(o, [0.05, 0.2], STEPS, cycle_momentum=False),
                  S.one_cycle([0.05, 0.2], STEPS)),
    "cyclic": (lambda o: tlr.CyclicLR(o, [0.005, 0.02], [0.05, 0.03], 4, 7, "exp_range",
                                      gamma=0.97, cycle_momentum=False),
               S.cyclic([0.005, 0.02], [0.05, 0.03], 4, 7, "exp_range", 0.97)),
    "warmup-one_cycle": (None, S.warmup(S.one_cycle([0.05, 0.2], STEPS - 5), 5)),
}
IMPLS = [("reference", "cpu"), ("torch_fused", "cpu"), ("triton", KERNEL_DEVICE)]


def make(cls, device, spec=None, impl="reference"):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in [(4, 3), (5,)]]
    groups = [{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.02}]
    kw = dict(momentum=0.9) if cls is torch.optim.SGD or cls is FusedSGDScheduled else {}
    if spec is None:
        return ps, cls(groups, lr=0.01, **kw)
    return ps, cls(groups, lr=0.01, schedule=spec, impl=impl, **kw)


@pytest.mark.parametrize("impl, device", IMPLS, ids=[i for i, _ in IMPLS])
@pytest.mark.parametrize("torch_cls, cls", [(torch.optim.SGD, FusedSGDScheduled),
                                            (torch.optim.AdamW, FusedAdamWScheduled)],
                         ids=["sgd", "adamw"])
@pytest.mark.parametrize("name", ["one_cycle", "cyclic"])
def test_per_group_values_match_torch(name, torch_cls, cls, impl, device):
    make_scheduler, spec = CASES[name]
    ps, opt = make(torch_cls, device)
    sched = make_scheduler(opt)
    qs, fused = make(cls, device, spec, impl)
    for k in range(STEPS):
        gen = torch.Generator().manual_seed(k)
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen).to(device)
            q.grad = p.grad.clone()
        used = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
        fused.step()
        assert_close(fused.last_lr, used, rtol=1e-15, what=f"lr of step {k}")
    for i, (p, q) in enumerate(zip(ps, qs)):
        assert_close(q, p, rtol=1e-5, atol=1e-7, what=f"param {i}")
        for key, value in opt.state[p].items():
            assert_close(fused.state[q][key], value, rtol=1e-5, atol=1e-7, what=f"{i} {key}")


def test_new_values_are_numbers_of_the_table_not_of_the_kernel():
    # The kernel's compile key is the kinds; per-group values only change the table rows.
    specs = [S.cyclic([0.01, 0.02], [0.1, 0.2], 5), S.cyclic([0.03, 0.01], [0.3, 0.05], 5),
             S.cyclic(0.01, 0.1, 5)]
    assert len({spec.kinds for spec in specs}) == 1
    tables = [make(FusedSGDScheduled, "cpu", spec)[1]._schedule_state.table for spec in specs]
    assert len(tables[0]) == 2  # one block (here one row) per group
    assert not torch.equal(tables[0][0], tables[0][1])
    assert not torch.equal(tables[0], tables[1])
    assert torch.equal(tables[2][0], tables[2][1])


def test_composition_takes_each_groups_values():
    spec = CASES["warmup-one_cycle"][1]
    _, fused = make(FusedSGDScheduled, "cpu", spec)
    t = torch.arange(STEPS)
    for g, base in enumerate([0.01, 0.02]):
        expected = S.warmup(S.one_cycle([0.05, 0.2][g], STEPS - 5), 5).lr(t, base)
        got = torch.stack([spec.for_group(g).lr(k, base) for k in t])
        assert_close(got, expected, rtol=0, what=f"group {g}")
    assert spec.groups == 2
    with pytest.raises(ValueError, match="warmup holds one value per parameter group"):
        spec.lr(t)
    with pytest.raises(ValueError, match="chained: one value per parameter group, but for "
                                         "different numbers of groups"):
        S.chained([S.cyclic([0.1, 0.2], 0.5, 3), S.plateau(min_lr=[0.0, 0.1, 0.2])])
