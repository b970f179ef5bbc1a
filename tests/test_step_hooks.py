"""step() skips torch's profiling and hook wrapper when nothing needs it (benchmarks/
bench_host.py: ~10 us a step), so the wrapper's duties are checked here: step hooks, global
hooks and the profiler's record still see every step."""

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from fused_lrs import FusedAdamWScheduled


def make():
    p = torch.nn.Parameter(torch.randn(8))
    p.grad = torch.randn(8)
    return p, FusedAdamWScheduled([p], lr=0.1, impl="reference")


def test_step_hooks_run_and_can_replace_the_arguments():
    p, opt = make()
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and int(opt.schedule_step) == 1
    handle = opt.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": lambda: 7.0}))
    assert opt.step() == 7.0
    handle.remove()


def test_global_hooks_and_the_profiler_see_the_step():
    p, opt = make()
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
    assert "Optimizer.step#FusedAdamWScheduled.step" in names
    assert int(opt.schedule_step) == 2


def test_step_restores_grad_mode():
    p, opt = make()
    with torch.enable_grad():
        opt.step()
        assert torch.is_grad_enabled()
    with torch.no_grad():
        opt.step()
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()             # the default mode is back outside both
