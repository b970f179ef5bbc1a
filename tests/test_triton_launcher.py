"""The Triton launcher's host-side rules, on CPU (the kernel interpreted; CUDA calls replaced
by stand-ins where a rule is about them). tests/test_gpu.py checks the same rules on a GPU.

* the launch runs on the parameters' device, whatever the current device;
* an eager step on another stream waits for the optimizer's last launch (its ticket and step
  counts are shared by all of its launches);
* tables a CUDA graph captured are never written again and outlive the backend;
* the grid follows the compiled kernel's occupancy.
"""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close
from optimizers import ANY

from fused_lrs import schedules as S
from fused_lrs.optim.backends import triton as T

pytestmark = pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="CPU stand-ins for CUDA calls")


@pytest.mark.parametrize("n_regs, programs", [
    # 4 warps of 32 threads; registers granted per warp in units of 256 of an SM's 65536.
    (72, 65536 // (9 * 256) // 4),      # 72 * 32 = 2304 = 9 units: 28 warps, 7 programs
    (80, 65536 // (10 * 256) // 4),     # 6 programs per SM
    (96, 65536 // (12 * 256) // 4),     # 5
    (128, 65536 // (16 * 256) // 4),    # 4
    (146, 65536 // (19 * 256) // 4),    # 146 * 32 = 4672, rounded up to 4864: 3
])
def test_programs_per_sm_follow_the_register_file(n_regs, programs):
    assert T.programs_per_sm(n_regs, num_warps=4) == programs
    # Never more than the thread limit (2048 threads = 16 programs of 128) allows.
    assert T.programs_per_sm(16, num_warps=4) == 16


def test_the_launch_runs_on_the_parameters_device(monkeypatch):
    backend = T.TritonBackend(torch.device("cpu"))
    backend.cuda, backend.device = True, torch.device("cuda", 1)
    current = [0]

    class Guard:                                   # torch.cuda.device
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.previous, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.previous

    launched_on = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(backend, "_full_check", lambda d: None)
    monkeypatch.setattr(backend, "_capturing", lambda: False)
    monkeypatch.setattr(backend, "_order_after_last_launch", lambda: None)
    monkeypatch.setattr(backend, "_launch", lambda d: launched_on.append(current[0]))
    backend.step(object())
    assert launched_on == [1] and current[0] == 0


def test_a_step_on_another_stream_waits_for_the_last_launch(monkeypatch):
    class Stream:
        def __init__(self, name):
            self.name, self.waited_for = name, []

        def wait_stream(self, other):
            self.waited_for.append(other.name)

    a, b = Stream("a"), Stream("b")
    current = [a]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    backend = T.TritonBackend(torch.device("cpu"))
    for stream in (a, a, b, b, a):
        current[0] = stream
        backend._order_after_last_launch()
    assert a.waited_for == ["b"] and b.waited_for == ["a"]


def test_captured_tables_are_never_rewritten_and_outlive_the_backend(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(3000, generator=gen)
    runs = []
    for impl in ("reference", "triton"):
        p = torch.nn.Parameter(init.clone())
        runs.append((p, ANY.cls([p], lr=0.1, impl=impl, schedule=S.warmup(S.cosine(20), 3),
                                **ANY.representative)))

    def step(backend_capturing=False):
        g = torch.randn(3000, generator=gen)
        for p, opt in runs:
            p.grad = g.clone()                     # a new gradient address every step
            if backend_capturing and opt.impl == "triton":
                opt._describe()
                if opt._cache.backend is None:
                    opt._cache.backend = T.TritonBackend(torch.device("cpu"))
                with monkeypatch.context() as m:   # the interpreter runs it; a GPU would record
                    m.setattr(opt._cache.backend, "_capturing", lambda: True)
                    opt.step()
            else:
                opt.step()

    step()
    step(backend_capturing=True)
    opt = runs[1][1]
    backend = opt._cache.backend
    captured = {name: getattr(backend, name) for name in ("tensors", "grads", "steps", "work")}
    addresses = captured["grads"].clone()
    assert all(id(x) in T.HELD_BY_GRAPHS for x in captured.values())
    step()                                         # eager, new gradient: a new array
    assert backend.grads is not captured["grads"]
    assert torch.equal(captured["grads"], addresses), "the graph's gradient table was written"
    assert backend.grads[0].item() == opt.param_groups[0]["params"][0].grad.data_ptr()
    table = opt._schedule_state.table
    for _, o in runs:
        o.set_schedule(S.warmup(S.cosine(30), 3))  # drops the backend and the table
    assert opt._cache.backend is None and id(table) in T.HELD_BY_GRAPHS
    for _ in range(3):
        step()
    (ref, ref_opt), (p, opt) = runs
    assert_close(p, ref, rtol=1e-6, atol=1e-7, what="param")
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert_close(opt.state[p][key], ref_opt.state[ref][key], rtol=1e-6, atol=1e-9, what=key)
    assert int(opt.schedule_step) == int(ref_opt.schedule_step) == 6
