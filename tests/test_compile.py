"""torch.compile: opt.step() is one custom op, so a training step compiles with no graph break
and never recompiles while the schedule moves the lr, from its first call on a fresh optimizer
(the state is made while dynamo traces; ``fullgraph=True`` holds). On CPU the op runs the same
backend as an eager step (and the interpreted kernel with impl="triton"), so all of this runs in
CI; a whole train step compiled is in test_compile_train_step.py, and the CUDA variants,
mode="reduce-overhead" included, in test_cuda_graphs.py under the gpu marker."""

import pytest
import torch
import torch._dynamo
from conftest import KERNEL_DEVICE, assert_close, assert_same_optimizer
from optimizers import ANY, OPTIMIZER_INFOS, representatives, swept
from torch._dynamo.testing import CompileCounterWithBackend

from fused_lrs import schedules as S

SCHEDULE = S.warmup(S.cosine(T_max=150), steps=50)    # a new lr at every one of 200 steps


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make(info, impl, device="cpu", **options):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen).to(device).requires_grad_()
              for shape in [(7, 5), (5,), (33,), (0,)]]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.03}]
    return params, info.cls(groups, lr=0.1, schedule=SCHEDULE, impl=impl, **options)


def set_grads(params, k):
    gen = torch.Generator().manual_seed(100 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.device)


def run(params, opt, step_fn, steps):
    for k in range(steps):
        set_grads(params, k)
        step_fn()


def assert_same(eager, compiled):
    assert_same_optimizer(compiled[1], eager[1], rtol=0, atol=0, what="compiled")


# The compiled step is the custom op every algorithm shares: the sweep rows carry it.
@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
@pytest.mark.parametrize("info, options", swept())
def test_200_steps_one_graph_no_recompile(info, options, impl):
    eager = make(info, impl, **options)
    compiled = make(info, impl, **options)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter, fullgraph=True)     # fullgraph: a graph break would raise
    def train_step():
        compiled[1].step()

    # No init_state(): the first call makes the state, and nothing recompiles after it.
    run(*eager, eager[1].step, 200)
    run(*compiled, train_step, 200)
    assert counter.frame_count == 1, "recompiled"
    assert counter.op_count >= 1
    # The op runs the same backend as eager mode: bitwise the same result.
    assert_same(eager, compiled)
    assert_close(compiled[1].get_last_lr(), eager[1].get_last_lr(), rtol=0)


def compare_compiled_step(backend, impl, steps, device="cpu", info=ANY):
    """A compiled ``opt.step`` of ``info``'s representative against eager steps: one compile,
    the same result bitwise. With ``init_state()`` first, which CUDA-graph capture needs and
    compile accepts."""
    eager = make(info, impl, device=device, **info.representative)
    compiled = make(info, impl, device=device, **info.representative)
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(compiled[1].step, backend=counter, fullgraph=True)
    compiled[1].init_state()
    run(*eager, eager[1].step, steps)
    run(*compiled, step, steps)
    assert counter.frame_count == 1
    assert_same(eager, compiled)


# Every row: the traced part of a step reads the row's hyperparameters through its record.
@pytest.mark.parametrize("info", [p.values[0] for p in representatives()],
                         ids=lambda info: info.name)
def test_every_row_compiles_its_step_as_one_graph(info):
    compare_compiled_step("aot_eager", "torch_fused", 20, info=info)


@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
def test_inductor_compiles_the_step_once(impl):
    compare_compiled_step("inductor", impl, 30)


# ANY, and the rows whose record has scalar states (NAdam's mu_product, ASGD's eta and mu): the
# op carries those too, and the kernel's last program writes them.
@pytest.mark.parametrize("info", [ANY, *(info for info in OPTIMIZER_INFOS if info.record.scalars)],
                         ids=lambda info: info.name)
def test_the_kernel_path_compiles_too(info):
    # impl="triton": the op launches the kernel (interpreted on CPU, compiled on CUDA).
    compare_compiled_step("aot_eager", "triton", 12, device=KERNEL_DEVICE, info=info)


def test_the_op_declares_exactly_what_it_mutates():
    # grads too: torch's fused CPU kernels (impl="torch_fused") unscale them in place under
    # GradScaler, as AdamW(fused=True) does.
    schema = torch.ops.fused_lrs.step.default._schema
    mutated = {a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write}
    assert mutated == {"params", "grads", "state1", "state2", "state3", "steps", "t",
                       "skipped", "masters", "scalars"}
