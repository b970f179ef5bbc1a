"""Per-group values (OneCycleLR's max_lr, CyclicLR's base_lr and max_lr lists) on every backend,
for every optimizer of the table (its representative), against torch's scheduler on the peer
(its fused kernel for the CPU backend, which runs that kernel): the lr of every step to 1e-15
relative (both evaluate the same float64 closed form; the kernel's cos may differ by an ulp),
the parameters and every state to 1e-5 relative (fp32 over 30 steps; atol 1e-7 near 0).
"""

from __future__ import annotations

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import ANY, representatives
from torch.optim import lr_scheduler as tlr

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
# Every row on the CPU backends; the kernel reads each group's block of the schedule table in
# code every algorithm shares: the sweep rows carry it.
CASES_BY_ROW = [pytest.param(*p.values, impl, device, id=f"{p.id}-{impl}")
                for p in representatives()
                for impl, device in (("reference", "cpu"), ("torch_fused", "cpu"),
                                     ("triton", KERNEL_DEVICE))
                if impl != "triton" or p.values[0].sweep]


def make(info, options, device, spec=None, impl="reference"):
    """Two groups with their own lr: the peer (``spec`` None; fused for impl="torch_fused",
    which runs the peer's fused kernel where it has one) or ours."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in [(4, 3), (5,)]]
    groups = [{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.02}]
    if spec is None:
        return ps, info.peer(groups, lr=0.01, fused=impl == "torch_fused", **options)
    return ps, info.cls(groups, lr=0.01, schedule=spec, impl=impl, **options)


@pytest.mark.parametrize("info, options, impl, device", CASES_BY_ROW)
@pytest.mark.parametrize("name", ["one_cycle", "cyclic"])
def test_per_group_values_match_torch(name, info, options, impl, device):
    make_scheduler, spec = CASES[name]
    ps, opt = make(info, options, device, impl=impl)
    sched = make_scheduler(opt)
    qs, fused = make(info, options, device, spec, impl)
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
    assert_same_optimizer(fused, opt, rtol=1e-5, atol=1e-7, extra_state=info.extra_state)


def test_new_values_are_numbers_of_the_table_not_of_the_kernel():
    # The kernel's compile key is the kinds; per-group values only change the table rows.
    specs = [S.cyclic([0.01, 0.02], [0.1, 0.2], 5), S.cyclic([0.03, 0.01], [0.3, 0.05], 5),
             S.cyclic(0.01, 0.1, 5)]
    assert len({spec.kinds for spec in specs}) == 1
    tables = [make(ANY, {}, "cpu", spec)[1]._schedule_state.table for spec in specs]
    assert len(tables[0]) == 2  # one block (here one row) per group
    assert not torch.equal(tables[0][0], tables[0][1])
    assert not torch.equal(tables[0], tables[1])
    assert torch.equal(tables[2][0], tables[2][1])


def test_composition_takes_each_groups_values():
    spec = CASES["warmup-one_cycle"][1]
    _, fused = make(ANY, {}, "cpu", spec)
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
