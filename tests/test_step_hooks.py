"""step() skips torch's profiling and hook wrapper when nothing needs it (benchmarks/
bench_host.py: ~10 us a step), so the wrapper's duties are checked here: step hooks, global
hooks and the profiler's record still see every step."""

import pytest
import torch
from optimizers import representatives
from torch.optim.optimizer import register_optimizer_step_post_hook

ROWS = representatives()


def make(info, options):
    p = torch.nn.Parameter(torch.randn(8))
    p.grad = torch.randn(8)
    return p, info.cls([p], lr=0.1, impl="reference", **options)


@pytest.mark.parametrize("info, options", ROWS)
def test_step_hooks_run_and_can_replace_the_arguments(info, options):
    p, opt = make(info, options)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and int(opt.schedule_step) == 1
    handle = opt.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": lambda: 7.0}))
    assert opt.step() == 7.0
    handle.remove()


@pytest.mark.parametrize("info, options", ROWS)
def test_global_hooks_and_the_profiler_see_the_step(info, options):
    p, opt = make(info, options)
    seen = []
    handle = register_optimizer_step_post_hook(lambda o, args, kwargs: seen.append(o))
    try:
        opt.step()
    finally:
        handle.remove()
    assert seen == [opt]
    with torch.profiler.profile() as prof:
        opt.step()
    names = [e.name for e in prof.events()]
    assert f"Optimizer.step#{info.name}.step" in names
    assert int(opt.schedule_step) == 2


@pytest.mark.parametrize("info, options", ROWS)
def test_step_restores_grad_mode(info, options):
    p, opt = make(info, options)
    with torch.enable_grad():
        opt.step()
        assert torch.is_grad_enabled()
    with torch.no_grad():
        opt.step()
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()             # the default mode is back outside both
