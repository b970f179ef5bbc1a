"""torch.compile: opt.step() is one custom op, so a training step compiles with no graph break
and never recompiles while the schedule moves the lr. On CPU the op runs the reference update
(and the interpreted kernel with impl="triton"), so all of this runs in CI; the CUDA variants,
mode="reduce-overhead" included, are in test_cuda_graphs.py under the gpu marker."""

import pytest
import torch
import torch._dynamo
from conftest import KERNEL_DEVICE, assert_close
from torch._dynamo.testing import CompileCounterWithBackend

from fused_lrs import FusedAdamWScheduled, FusedSGDScheduled
from fused_lrs import schedules as S

SCHEDULE = S.warmup(S.cosine(T_max=150), steps=50)    # a new lr at every one of 200 steps


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make(cls, impl, device="cpu", **options):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen).to(device).requires_grad_()
              for shape in [(7, 5), (5,), (33,), (0,)]]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.03}]
    return params, cls(groups, lr=0.1, schedule=SCHEDULE, impl=impl, **options)


def set_grads(params, k):
    gen = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.device)


def run(params, opt, step_fn, steps):
    for k in range(steps):
        set_grads(params, k)
        step_fn()


def assert_same(eager, compiled):
    (ep, eo), (cp, co) = eager, compiled
    assert int(eo.schedule_step) == int(co.schedule_step)
    for a, b in zip(ep, cp):
        assert torch.equal(a, b)
        for key, value in eo.state[a].items():
            assert torch.equal(value, co.state[b][key]), key


@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
@pytest.mark.parametrize("cls, options", [
    (FusedAdamWScheduled, dict(amsgrad=True)),
    (FusedSGDScheduled, dict(momentum=0.9, nesterov=True, weight_decay=1e-3)),
], ids=["adamw-amsgrad", "sgd-nesterov"])
def test_200_steps_one_graph_no_recompile(cls, options, impl):
    eager = make(cls, impl, **options)
    compiled = make(cls, impl, **options)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter, fullgraph=True)     # fullgraph: a graph break would raise
    def train_step():
        compiled[1].step()

    compiled[1].init_state()
    run(*eager, eager[1].step, 200)
    run(*compiled, train_step, 200)
    assert counter.frame_count == 1, "recompiled"
    assert counter.op_count >= 1
    # The op runs the same backend as eager mode: bitwise the same result.
    assert_same(eager, compiled)
    assert_close(compiled[1].get_last_lr(), eager[1].get_last_lr(), rtol=0)


def compare_compiled_step(backend, impl, steps, device="cpu"):
    """A compiled ``opt.step`` against eager steps: one compile, the same result bitwise."""
    eager = make(FusedAdamWScheduled, impl, device=device)
    compiled = make(FusedAdamWScheduled, impl, device=device)
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(compiled[1].step, backend=counter, fullgraph=True)
    compiled[1].init_state()
    run(*eager, eager[1].step, steps)
    run(*compiled, step, steps)
    assert counter.frame_count == 1
    assert_same(eager, compiled)


@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
def test_inductor_compiles_the_step_once(impl):
    compare_compiled_step("inductor", impl, 30)


def test_the_kernel_path_compiles_too():
    # impl="triton": the op launches the kernel (interpreted on CPU, compiled on CUDA).
    compare_compiled_step("aot_eager", "triton", 12, device=KERNEL_DEVICE)


def test_compiling_before_any_state_exists_says_what_to_do():
    params, opt = make(FusedAdamWScheduled, "reference")
    set_grads(params, 0)
    step = torch.compile(opt.step, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="init_state"):
        step()


def test_the_op_declares_exactly_what_it_mutates():
    # grads too: torch's fused CPU kernels (impl="torch_fused") unscale them in place under
    # GradScaler, as AdamW(fused=True) does.
    schema = torch.ops.fused_lrs.step.default._schema
    mutated = {a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write}
    assert mutated == {"params", "grads", "state1", "state2", "state3", "steps", "t",
                       "skipped", "masters", "scalars"}
