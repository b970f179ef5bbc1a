"""CUDA graphs and torch.compile on CUDA: capture once, replay the run.

The schedule counter and the step counts live on the device and advance inside the kernel, so
each replay of a captured step is the next step of the run, with the next lr.

Before capture, state must exist (``opt.init_state()`` or one eager step). When the capture
itself allocates the gradients (forward and backward inside the graph), the launcher's tables
are rebuilt during capture from pinned host memory, which the graph copies again on each replay.
"""

import pytest
import torch
import torch._dynamo
from conftest import assert_same_optimizer
from optimizers import ANY, OPTIMIZER_INFOS, representatives, swept

from fused_lrs import schedules as S

pytestmark = pytest.mark.gpu
# Capture and replay are what every algorithm shares: the sweep rows carry them.
SWEPT = swept()

SCHEDULE = S.warmup(S.cosine(T_max=40), steps=10)


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                                torch.nn.Linear(256, 64)).cuda()
    data = [(torch.randn(32, 64, device="cuda"), torch.randn(32, 64, device="cuda"))
            for _ in range(60)]
    return model, data


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def assert_same(opt_a, opt_b, rtol=0.0, atol=0.0):
    assert opt_a.get_last_lr() == opt_b.get_last_lr()
    assert_same_optimizer(opt_a, opt_b, rtol, atol)


def eager_run(info, options, steps, warmup=3):
    model, data = model_and_data()
    opt = info.cls(model.parameters(), lr=1e-3, schedule=SCHEDULE, **options)
    for x, y in data[:warmup + steps]:
        opt.zero_grad(set_to_none=True)
        loss_of(model, x, y).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("info, options", SWEPT)
def test_whole_training_step_captured_once_and_replayed(info, options):
    steps, warmup = 40, 3
    model, data = model_and_data()
    opt = info.cls(model.parameters(), lr=1e-3, schedule=SCHEDULE, **options)
    static_x, static_y = data[0][0].clone(), data[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                       # warm-up: state, compile, tables
        for x, y in data[:warmup]:
            opt.zero_grad(set_to_none=True)
            loss_of(model, x, y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss_of(model, static_x, static_y).backward()
        opt.step()
    # Capture records the step without running it: the counter has not moved.
    assert int(opt.schedule_step) == warmup
    for x, y in data[warmup:warmup + steps]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
    # The same kernels on the same inputs; cuBLAS may choose another algorithm under capture.
    assert_same(opt, eager_run(info, options, steps, warmup), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("info, options", SWEPT)
def test_capturing_only_the_optimizer_step(info, options):
    model, data = model_and_data()
    reference = info.cls(model_and_data()[0].parameters(), lr=0.1,
                         schedule=S.multistep([5, 9]), **options)
    opt = info.cls(model.parameters(), lr=0.1, schedule=S.multistep([5, 9]), **options)
    params = [p for p in model.parameters()]
    for p in params:                                   # static gradients, written each step
        p.grad = torch.zeros_like(p)
    opt.init_state()
    opt.step()                                         # eager: builds the tables
    for q in reference.param_groups[0]["params"]:
        q.grad = torch.zeros_like(q)
    reference.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(15):
        grads = [torch.randn(p.shape, device="cuda", generator=gen) for p in params]
        for p, q, g in zip(params, reference.param_groups[0]["params"], grads):
            p.grad.copy_(g)
            q.grad.copy_(g)
        graph.replay()
        reference.step()
    assert_same(opt, reference)


@pytest.mark.parametrize("init_state", [True, False], ids=["init_state", "fresh"])
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_step_on_cuda(mode, init_state):
    # fresh: the first compiled call makes the state (dynamo runs _init_group while tracing)
    # and marks it, and the schedule's tensors, as static addresses, as init_state() does.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, data = model_and_data()
    opt = ANY.cls(model.parameters(), lr=1e-3, schedule=SCHEDULE, **ANY.representative)
    if init_state:
        opt.init_state()

    @torch.compile(fullgraph=True, mode=mode)
    def optimizer_step():
        opt.step()

    for x, y in data[:3 + 40]:
        opt.zero_grad(set_to_none=False)
        loss_of(model, x, y).backward()
        optimizer_step()
    assert counters["stats"]["unique_graphs"] == 1, "recompiled"
    assert_same(opt, eager_run(ANY, ANY.representative, 40, 3), rtol=1e-5, atol=1e-7)


def pair(make):
    """The same model under the kernel (graph-captured) and the reference (eager)."""
    out = []
    for impl in ("triton", "reference"):
        model, _ = model_and_data()
        params = list(model.parameters())
        out.append((params, make(params, impl)))
    return out


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad.copy_(g)


@pytest.mark.parametrize("info, options", SWEPT)
def test_capture_then_an_eager_rebuild_then_replay(info, options):
    # The graph holds the launcher's tables; an eager step with other gradient tensors makes
    # new ones. Replays must still read the captured tables (still alive, never rewritten).
    (params, opt), (ref_params, ref) = pair(
        lambda ps, impl: info.cls(ps, lr=1e-3, schedule=SCHEDULE, impl=impl, **options))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for p in params + ref_params:
        p.grad = torch.zeros_like(p)
    static = [p.grad for p in params]
    opt.init_state()
    opt.step()                                          # eager: tables
    ref.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for k in range(6):
        grads = [torch.randn(p.shape, device="cuda", generator=gen) for p in params]
        if k % 2:                                       # eager, on new gradient tensors
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        else:                                           # the graph, on the static ones
            for p, s in zip(params, static):
                p.grad = s
            set_grads(static, grads)
            graph.replay()
        set_grads(ref_params, grads)
        ref.step()
    if k % 2 == 0:
        for p, s in zip(params, static):
            p.grad = s
    assert_same(opt, ref, rtol=1e-6, atol=1e-7)
    opt.set_schedule(S.warmup(S.cosine(T_max=40), steps=10))   # drops the launcher
    graph.replay()                                      # its tables are held: still valid
    torch.cuda.synchronize()


@pytest.mark.parametrize("info, options", SWEPT)
def test_found_inf_toggling_across_replays(info, options):
    # GradScaler's tensors are read by pointer inside the captured launch: each replay skips
    # or steps according to found_inf at that moment; skipped replays hold the step counts.
    (params, opt), (ref_params, ref) = pair(
        lambda ps, impl: info.cls(ps, lr=0.1, schedule=S.multistep([3, 6]), impl=impl,
                                  **options))
    scale = torch.full((), 4.0, device="cuda")
    found_inf = torch.zeros((), device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    for p in params + ref_params:
        p.grad = torch.zeros_like(p)
    opt.init_state()
    opt.grad_scale, opt.found_inf = scale, found_inf    # what GradScaler.step sets
    opt.step()
    ref.grad_scale, ref.found_inf = scale, found_inf
    ref.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for k in range(10):
        grads = [torch.randn(p.shape, device="cuda", generator=gen) * 4.0 for p in params]
        set_grads([p.grad for p in params], grads)
        set_grads([p.grad for p in ref_params], grads)
        found_inf.fill_(float(k % 3 == 1))
        graph.replay()
        ref.step()
        assert bool(opt.last_step_skipped) == (k % 3 == 1)
    assert_same(opt, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("info", [info for info in OPTIMIZER_INFOS if info.record.scalars],
                         ids=lambda info: info.name)
def test_replays_advance_the_scalar_states(info):
    """For the rows whose record has scalar states (NAdam's mu_product, ASGD's eta and mu), a
    captured step replayed is the eager run, step for step: the scalar states advance inside
    the launch (its last program), not in a host-side copy."""
    def make():
        gen = torch.Generator(device="cuda").manual_seed(0)
        ps = [torch.randn(n, device="cuda", generator=gen).requires_grad_()
              for n in (4096, 77, 0)]
        for p in ps:
            p.grad = torch.zeros_like(p)
        return ps, info.cls(ps, lr=0.01, schedule=S.cosine(30), **info.representative)

    (ps, eager), (qs, captured) = make(), make()
    grads = [[torch.randn_like(p) for p in ps] for _ in range(12)]
    for opt, params in ((eager, ps), (captured, qs)):
        for p, g in zip(params, grads[0]):
            p.grad.copy_(g)
        opt.step()                                 # warm-up: state, tables, compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step()
    for k in range(1, 12):
        for p, q, g in zip(ps, qs, grads[k]):
            p.grad.copy_(g)
            q.grad.copy_(g)
        eager.step()
        graph.replay()
    torch.cuda.synchronize()
    assert int(captured.schedule_step) == int(eager.schedule_step) == 12
    assert_same(captured, eager)


@pytest.mark.parametrize("info, options", representatives())
def test_capturing_a_step_that_would_create_state_is_refused(info, options):
    # State made inside a capture is only recorded: every replay would zero it again.
    p = torch.nn.Parameter(torch.randn(1024, device="cuda"))
    opt = info.cls([p], lr=1e-3, **options)
    p.grad = torch.randn_like(p)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="no optimizer state") as error:
        with torch.cuda.graph(graph):
            opt.step()
    assert "opt.init_state()" in str(error.value).splitlines()[0]
    assert len(opt.state) == 0
