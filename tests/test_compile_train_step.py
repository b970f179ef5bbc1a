"""A whole train step compiled from its first call: forward, ``loss.backward()``, ``opt.step()``
and ``opt.zero_grad()`` in one ``torch.compile``'d function, on a fresh fused optimizer (no
``init_state()``), for every optimizer of the table (``tests/optimizers.py``, one row per class
of the registry), with ``impl="auto"`` and ``impl="reference"``, on CPU.

torch's own AdamW (torch 2.13) compiles such a function with the default ``fullgraph=False``:
dynamo breaks the graph at ``loss.backward()`` and creates the optimizer's state while it traces
the step (its ``_init_group``), so nothing recompiles. With ``fullgraph=True`` it fails (its step
breaks the graph on purpose, dynamo refuses ``backward()`` and skips ``zero_grad``). Ours matches
it with ``fullgraph=False`` here; ``opt.step`` compiled alone with ``fullgraph=True`` works from
its first call too (test_compile.py).

What each run checks:
  * the compiled run equals the eager run of the same function bitwise (the same backend runs:
    every parameter, every state tensor, the step counts, the schedule counter, ``last_lr``);
  * at most one recompile after the first call (0 measured: the state is made while dynamo
    traces, as for torch's optimizers; the test that makes it in the graph measures 1);
  * the step is the one custom op ``fused_lrs::step`` in the graph, and dynamo never traces a
    backend's body: a spy on every backend's ``step`` sees only runtime calls;
  * the state and the schedule's tensors are marked as static addresses, as ``init_state()``
    marks them (for ``mode="reduce-overhead"``, which test_cuda_graphs.py runs on a GPU).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from conftest import assert_close, assert_same_optimizer
from optimizers import INFO, infos
from torch._dynamo.testing import CompileCounterWithBackend

from fused_lrs import FusedAdamWScheduled
from fused_lrs import schedules as S
from fused_lrs.optim import backends, compiled
from fused_lrs.optim.base import ScheduledOptimizer

STEPS = 4              # the first call makes the state; the next three would recompile if any
SCHEDULE = S.warmup(S.cosine(T_max=6), steps=2)      # a new lr at every step
STEP_OP = torch.ops.fused_lrs.step.default


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def backend_calls(monkeypatch):
    """Every backend's ``step``, spied: each call records whether dynamo was tracing it. Traced,
    the spy's append would be replayed with True (or the trace would fail on torch's fused ops,
    which have no fake kernels)."""
    calls = []
    create = backends.create

    def spying_create(name, device, explicit=False):
        backend = create(name, device, explicit)
        step = backend.step

        def spy(description):
            calls.append(torch.compiler.is_compiling())
            return step(description)
        backend.step = spy
        return backend
    monkeypatch.setattr(backends, "create", spying_create)
    return calls


def setup(info, impl):
    """A small model (two layers, weights and biases in two groups) and a fresh optimizer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = info.cls([{"params": weights}, {"params": biases, "lr": 0.02}], lr=0.05,
                   schedule=SCHEDULE, impl=impl, **info.representative)
    return model, opt


def train_step(model, opt):
    def step(x):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def inputs():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(5, 6, generator=gen) for _ in range(STEPS)]


def run_compiled(info, impl, backend="aot_eager"):
    """The eager run and the compiled run of the same train step; the compile counter and the
    recompiles after the first call."""
    eager = setup(info, impl)
    step = train_step(*eager)
    for x in inputs():
        step(x)
    tested = setup(info, impl)
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(train_step(*tested), backend=counter)
    first = None
    for x in inputs():
        step(x)
        first = counter.frame_count if first is None else first
    return eager[1], tested[1], counter, counter.frame_count - first


def assert_static(opt):
    """Every tensor the step reads or writes is marked as a static address (dynamo's mark, read
    from the attribute ``torch._dynamo.mark_static_address`` sets), as ``init_state()`` marks
    them, so that ``mode="reduce-overhead"`` keeps the step in its CUDA graph."""
    schedule = opt._schedule_state
    tensors = [schedule.t, schedule.table, schedule.skipped]
    tensors += [v for group in opt.param_groups for p in group["params"]
                for v in (p, *opt.state[p].values())]
    unmarked = [i for i, x in enumerate(tensors)
                if getattr(x, "_dynamo_static_input_type", None) is None]
    assert not unmarked, f"tensors {unmarked} of {len(tensors)} not marked static"


def step_ops(counter) -> int:
    return sum(node.target is STEP_OP for g in counter.graphs for node in g.graph.nodes)


def assert_same_run(eager, ours, **tol):
    assert int(ours.schedule_step) == int(eager.schedule_step) == STEPS
    assert_same_optimizer(ours, eager, what="compiled vs eager", **(tol or dict(rtol=0)))
    assert_close(ours.last_lr, eager.last_lr, rtol=0, what="last_lr")


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("info", infos())
def test_a_compiled_train_step_works_from_its_first_call(info, impl, backend_calls):
    eager, ours, counter, recompiles = run_compiled(info, impl)
    assert recompiles <= 1, f"{recompiles} recompiles after the first call"
    assert step_ops(counter) == 1, "the step is not the one custom op of a graph"
    assert backend_calls == [False] * 2 * STEPS, "dynamo traced a backend's step"
    assert_same_run(eager, ours)
    assert_static(ours)


@pytest.mark.parametrize("info", [p for p in infos() if not p.values[0].record.eager_state])
def test_state_made_in_the_graph_recompiles_once(info, backend_calls, monkeypatch):
    # Were dynamo not to run _init_group eagerly (torch/_dynamo/variables/optimizer.py), the
    # state would be made by prepare_state traced into the graph: the next call recompiles on
    # the new state, once. (Not for a record whose state is made at construction: Adagrad's.)
    monkeypatch.setattr(ScheduledOptimizer, "_init_group", lambda self: None)
    eager, ours, counter, recompiles = run_compiled(info, "auto")
    assert recompiles == 1
    made = {node.target for g in counter.graphs[:-1] for node in g.graph.nodes}
    assert torch.zeros in made, "the first graph made no state"
    assert backend_calls == [False] * 2 * STEPS
    assert_same_run(eager, ours)


def test_an_eager_fallback_inside_a_compiled_function_runs_without_dynamo(backend_calls,
                                                                          monkeypatch):
    # When dynamo gives up on the step's frame (here: a step it cannot trace) it runs the frame
    # eagerly and would trace every function the eager step calls, the backends included
    # (torch's fused ops have no fake kernels). The eager step runs with dynamo off.
    def untraceable(opt):
        raise RuntimeError("not traceable")
    monkeypatch.setattr(compiled, "step", untraceable)
    info = INFO[FusedAdamWScheduled]
    eager, ours, counter, _ = run_compiled(info, "auto")
    assert step_ops(counter) == 0
    assert backend_calls == [False] * 2 * STEPS
    assert_same_run(eager, ours)


def test_inductor_compiles_the_train_step_from_its_first_call(backend_calls):
    # Inductor generates its own forward and backward: the gradients, and so the run, agree
    # with eager to float32 rounding (rtol 1e-5 over 4 steps, as test_optim_vs_torch.py).
    info = INFO[FusedAdamWScheduled]
    eager, ours, counter, recompiles = run_compiled(info, "auto", backend="inductor")
    assert recompiles <= 1 and step_ops(counter) == 1
    assert backend_calls == [False] * 2 * STEPS
    assert_same_run(eager, ours, rtol=1e-5, atol=1e-7)


def test_capture_refuses_to_make_state_and_names_init_state(monkeypatch):
    # Under CUDA-graph capture a step that would make state is refused before anything changes
    # (the capture would only record the fills). The check is monkeypatched here; test_cuda_graphs
    # captures for real on a GPU.
    info = INFO[FusedAdamWScheduled]
    model, opt = setup(info, "auto")
    model(torch.randn(5, 6)).pow(2).mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    monkeypatch.setattr(compiled, "capturing", lambda opt: True)
    for step in (opt.step, torch.compile(opt.step, backend="eager")):
        with pytest.raises(Exception) as error:
            step()
        assert "opt.init_state()" in str(error.value).splitlines()[0]
        assert len(opt.state) == 0 and int(opt.schedule_step) == 0
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    monkeypatch.undo()
    opt.init_state()                     # what the message asks for: then capture may step
    monkeypatch.setattr(compiled, "capturing", lambda opt: True)
    opt.step()
    assert int(opt.schedule_step) == 1
