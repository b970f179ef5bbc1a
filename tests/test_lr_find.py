"""lr_find's sweep: the lrs it uses, the batches it feeds, the divergence stop, the host reads
it makes, torch.compile, its arguments and its result. (Restoring the model and the optimizer:
test_lr_find_restore.py; the suggestion against ground truth: test_lr_find_suggestion.py.)"""

from __future__ import annotations

import collections
import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from conftest import assert_close
from torch._dynamo.testing import CompileCounterWithBackend

from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled, lr_find
from fused_lrs.range_test import LRFindResult
from fused_lrs.range_test.suggest import smooth, suggest

# One CPU thread: these steps are tiny, and where other jobs share the cores a preempted OpenMP
# worker stalls each of them (conftest.one_thread): a restore test takes 0.07 s on one thread,
# 0.6-4 s on two.
pytestmark = pytest.mark.usefixtures("one_thread")


def regression(seed=0, n=96, batch=16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = torch.tanh(x @ torch.randn(8, 1, generator=gen))
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def mse(model, batch):
    return F.mse_loss(model(batch[0]), batch[1])


def test_each_step_uses_the_ramp_and_every_group_the_same_lr():
    model = mlp()
    groups = [{"params": model[0].parameters(), "lr": 3e-3},
              {"params": model[2].parameters(), "lr": torch.tensor(0.5)}]
    opt = FusedSGDScheduled(groups, lr=0.1, momentum=0.9)
    seen = []

    def loss_fn(m, batch):
        seen.append(opt.last_lr.clone())      # after k steps: lr(k - 1) of each group
        return mse(m, batch)

    start, end, steps = 1e-5, 1e-1, 12
    with pytest.warns(UserWarning, match="still falling at end_lr=0.1"):
        result = lr_find(model, opt, loss_fn, regression(), start_lr=start, end_lr=end,
                         steps=steps, diverge_threshold=None)
    want = [start * (end / start) ** (k / (steps - 1)) for k in range(steps)]
    assert_close(result.lrs, want, rtol=1e-13, what="lrs")
    assert result.lrs[0] == start and result.lrs[-1] == pytest.approx(end, rel=1e-13)
    used = torch.stack(seen[1:])               # step k's lr, read at the start of step k + 1
    assert_close(used[:, 0], result.lrs[:-1], rtol=1e-13, what="group 0")
    assert_close(used[:, 1], result.lrs[:-1], rtol=1e-13, what="group 1")
    assert result.diverged_at is None and len(result.losses) == len(result.raw_losses) == steps


def test_it_trains_also_when_called_under_no_grad():
    model = mlp()
    with torch.no_grad():
        result = lr_find(model, FusedAdamWScheduled(model.parameters()), mse, regression(),
                         steps=60)
    assert result.diverged_at is not None        # the lr reached what the model cannot take


def test_batches_are_cycled_in_order():
    batches = regression(n=48)                 # 3 batches for 8 steps
    fed = []

    def loss_fn(m, batch):
        fed.append(next(i for i, b in enumerate(batches) if b is batch))
        return mse(m, batch)

    model = mlp()
    lr_find(model, FusedAdamScheduled(model.parameters()), loss_fn, batches, steps=8)
    assert fed == [0, 1, 2, 0, 1, 2, 0, 1]
    fed.clear()                                # a one-shot iterator: the batches it gave
    lr_find(model, FusedAdamScheduled(model.parameters()), loss_fn, iter(batches), steps=7)
    assert fed == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="batches is empty"):
        lr_find(model, FusedAdamScheduled(model.parameters()), loss_fn, [], steps=4)


def test_after_divergence_nothing_is_updated_and_the_result_ends_there():
    # SGD on sum(w^2) (curvature 2) multiplies w by (1 - 2 lr) a step: it diverges once
    # lr > 1, and the remaining steps still run forward and backward.
    w = torch.nn.Parameter(torch.ones(4))
    model = torch.nn.Module()
    model.w = w
    opt = FusedSGDScheduled([w], lr=1.0)
    history = []

    def loss_fn(m, batch):
        history.append(m.w.detach().clone())
        return (m.w * batch).square().sum()

    batch = torch.ones(4)
    result = lr_find(model, opt, loss_fn, [batch], start_lr=1e-4, end_lr=10.0, steps=60)
    d = result.diverged_at
    assert d is not None and 0 < d < 59
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == d + 1
    # The last entry is the diverged step: its average is over 4x the best, or not finite.
    assert not result.raw_losses[-1] <= 4 * min(result.raw_losses[:-1])
    # The diverged step's update and every later one are skipped: w stays where step d found it.
    frozen = history[d]
    assert all(torch.equal(h, frozen) for h in history[d:])
    assert not torch.equal(history[d - 1], frozen)      # (and it did move before)
    assert torch.isfinite(frozen).all()
    assert torch.equal(w, torch.ones(4))                 # restored


def test_a_nan_loss_is_a_divergence_not_an_error():
    model = mlp()
    opt = FusedAdamWScheduled(model.parameters())
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = mse(m, batch)
        return loss * float("nan") if len(calls) == 5 else loss

    with pytest.warns(UserWarning, match="4 steps before the loss diverged, too few"):
        result = lr_find(model, opt, loss_fn, regression(), steps=10)
    assert result.diverged_at == 4 and len(calls) == 10
    assert math.isnan(result.raw_losses[-1]) and math.isnan(result.suggestion)


def ramp_lrs(n, start=1e-7, end=10.0):
    return [start * (end / start) ** (k / (n - 1)) for k in range(n)]


def test_the_smoothing_has_no_lag_and_leaves_the_diverged_step_out():
    lrs = ramp_lrs(101)
    x = [math.log10(lr) for lr in lrs]
    # A parabola in log lr, lowest at step 60 (lr 1e-2.2), and a diverged last step.
    raw = [1 + (v - x[60]) ** 2 for v in x]
    raw[-1] = 1e6
    smoothed = smooth(lrs, raw, diverged_at=100)
    assert min(range(100), key=smoothed.__getitem__) == 60       # centred: no shift
    # A Gaussian of 0.4 decade raises a parabola by sigma^2 = 0.16 where it is whole (less
    # 1e-4: the kernel is sampled at the steps and cut at 4 sigma).
    assert smoothed[60] == pytest.approx(1.16, abs=2e-4)
    assert smoothed[-1] < 100                                     # the 1e6 left out
    # (a moving average of the same curve, torch-lr-finder's, reaches its minimum 20 steps
    # late: this is what the centred smoothing avoids)
    ema = [raw[0]]
    for v in raw[1:100]:
        ema.append(0.05 * v + 0.95 * ema[-1])
    assert min(range(100), key=ema.__getitem__) > 75
    assert suggest(lrs, smoothed, 100) == pytest.approx(lrs[60] / math.sqrt(10), rel=1e-12)


def test_a_range_that_misses_the_edge_warns():
    lrs = ramp_lrs(50)
    with pytest.warns(UserWarning, match="still falling"):
        suggest(lrs, [50.0 - k for k in range(50)], None)
    with pytest.warns(UserWarning, match="never fell"):
        suggest(lrs, [1.0 + k for k in range(50)], 49)


# Every way a tensor's value reaches Python.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__format__",
              "__repr__", "__array__", "cpu", "numpy")


def count_host_reads(monkeypatch, run) -> collections.Counter:
    """Run ``run()`` with every Tensor method that reads a value counted."""
    counts = collections.Counter()

    def counted(name, original):
        def method(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return method

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
        run()
    return counts


OPTIMIZERS = {
    "adamw": lambda ps: FusedAdamWScheduled(ps, lr=1e-3),
    "sgd-momentum": lambda ps: FusedSGDScheduled(ps, lr=0.1, momentum=0.9),
    "adam-reference": lambda ps: FusedAdamScheduled(ps, impl="reference"),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_host_reads_do_not_grow_with_steps(monkeypatch, name):
    def sweep(steps, loss_fn=mse):
        def run():
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                        torch.nn.Linear(16, 1))
            lr_find(model, OPTIMIZERS[name](model.parameters()), loss_fn, regression(),
                    steps=steps, diverge_threshold=None)
        return count_host_reads(monkeypatch, run)

    few, many = sweep(20), sweep(60)
    assert few == many, f"host reads grow with steps: {dict(few)} -> {dict(many)}"
    # The losses once, the optimizer's load_state_dict (its counter: 2), torch's fused SGD's
    # first-step check (torch_fused.py: 2 buckets), the lrs from the spec (a CPU tensor).
    assert sum(few.values()) <= 6, dict(few)

    def syncing(model, batch):          # the counting sees a loss_fn that reads every step
        loss = mse(model, batch)
        loss.item()
        return loss
    assert sum(sweep(20, syncing).values()) == sum(few.values()) + 20


def test_compiled_sweep_compiles_once_and_matches_eager():
    torch._dynamo.reset()
    model = mlp()
    eager = lr_find(model, FusedAdamWScheduled(model.parameters()), mse, regression(), steps=40)
    counter = CompileCounterWithBackend("aot_eager")
    try:
        # Any recompile raises, in this sweep or in a second one in the same process.
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(2):
                model = mlp()
                compiled = lr_find(model, FusedAdamWScheduled(model.parameters()), mse,
                                   regression(), steps=40, compile=dict(backend=counter))
                assert compiled.raw_losses == eager.raw_losses
    finally:
        torch._dynamo.reset()
    # Per sweep: the forward and loss, then (after backward's graph break) the tracker's
    # update and the optimizer's step; compiled once each, for both sweeps.
    assert counter.frame_count == 4, counter.frame_count
    assert eager.diverged_at is not None      # the sweep ran through divergence too


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(start_lr=0.0), ValueError, "0 < start_lr < end_lr"),
    (dict(start_lr=1.0, end_lr=0.5), ValueError, "0 < start_lr < end_lr"),
    (dict(end_lr=math.inf), ValueError, "finite"),
    (dict(steps=1), ValueError, "steps must be an integer >= 2"),
    (dict(steps=10.0), ValueError, "steps must be an integer >= 2"),
    (dict(diverge_threshold=1.0), ValueError, "diverge_threshold"),
    (dict(beta=1.0), ValueError, "beta"),
    (dict(capture=True), ValueError, "capture=True needs CUDA"),
])
def test_arguments_are_checked(kwargs, error, match):
    model = mlp()
    with pytest.raises(error, match=match):
        lr_find(model, FusedAdamWScheduled(model.parameters()), mse, regression(), **kwargs)


def test_a_torch_optimizer_or_a_bad_loss_is_refused():
    model = mlp()
    with pytest.raises(TypeError, match="fused_lrs optimizer"):
        lr_find(model, torch.optim.AdamW(model.parameters()), mse, regression())
    with pytest.raises(ValueError, match="none of the model's parameters"):
        lr_find(model, FusedAdamWScheduled(mlp().parameters()), mse, regression())
    opt = FusedAdamWScheduled(model.parameters())
    with pytest.raises(TypeError, match="tensor of one value, got shape \\(16, 1\\)"):
        lr_find(model, opt, lambda m, b: m(b[0]), regression())
    assert opt.schedule_step.item() == 0 and not opt.state


def test_result_saves_loads_and_plots(tmp_path):
    model = mlp()
    result = lr_find(model, FusedAdamWScheduled(model.parameters()), mse, regression(),
                     steps=50)
    path = tmp_path / "range.json"
    result.save(str(path))
    again = LRFindResult.load(str(path))
    assert again == result
    ax = result.plot(str(tmp_path / "range.png"))
    assert (tmp_path / "range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["loss (raw)", "loss (smoothed)", f"suggestion {result.suggestion:.3g}"]
    with pytest.raises(ValueError, match="not an lr_find result"):
        (tmp_path / "other.json").write_text('{"lrs": []}')
        LRFindResult.load(str(tmp_path / "other.json"))


class FakeCuda:
    """Stands in for CUDA streams and graphs on CPU: a stream and a stream context that do
    nothing, and a graph whose capture records the Python step (running nothing, as a real
    capture runs no kernel) and whose replay runs it again on the same, static, inputs."""

    capturing = None

    def __init__(self, graph=None):
        self.graph, self.fn = graph, None

    def wait_stream(self, other):
        pass

    def replay(self):
        self.fn()

    def __enter__(self):
        FakeCuda.capturing = self.graph
        return self

    def __exit__(self, *exc):
        FakeCuda.capturing = None
        return False


def test_the_capture_path_feeds_every_batch_in_order(monkeypatch):
    # The CUDA path's control flow (the kernels are replayed for real in test_lr_find_gpu.py):
    # warm-up steps, one capture, then replays, each after the next batch is copied into the
    # captured inputs; another shape is refused.
    from fused_lrs.range_test import sweep

    monkeypatch.setattr(torch.cuda, "Stream", FakeCuda)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: FakeCuda())
    monkeypatch.setattr(torch.cuda, "current_stream", FakeCuda)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCuda)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: FakeCuda(g))
    batches = [torch.full((2,), float(k)) for k in range(5)]
    fed = []

    def step(batch):
        if FakeCuda.capturing is not None:
            FakeCuda.capturing.fn = lambda: step(batch)       # recorded, not run
        else:
            fed.append(int(batch[0]))

    sweep._captured(step, sweep._cycle(batches), 12, warmup=3)
    assert fed == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]     # 3 warm-up steps, 9 replays
    with pytest.raises(ValueError, match="batch 5 holds a torch.float32 tensor of shape \\(3,\\)"):
        sweep._captured(step, sweep._cycle(batches + [torch.zeros(3)]), 12, warmup=3)
