"""Where triton is not installed (macOS, Windows, a CPU-only machine), fused_lrs imports, every
optimizer steps on the CPU backends, and asking for the kernel says why it cannot run.

A child process makes triton absent (``sys.modules["triton"] = None``: ``import triton`` raises
ModuleNotFoundError and ``importlib.util.find_spec`` says None, as where it is not installed), so
the check cannot pass because some earlier test already imported triton in this process.
"""

import subprocess
import sys
import textwrap

from optimizers import ANY, OPTIMIZER_INFOS

# Every row's class and representative, written into the child's source.
ROWS = [(info.name, info.representative) for info in OPTIMIZER_INFOS]
CHILD = textwrap.dedent("""
    import sys

    sys.modules["triton"] = None
    import torch
    import fused_lrs
    from fused_lrs import schedules

    spec = schedules.warmup(schedules.cosine(50), 5)
    torch.manual_seed(0)
    for name, kw in ROWS:
        cls = getattr(fused_lrs, name)
        # (torch_fused where the row has a CPU update: torch's fused or foreach kernels)
        impls = ("auto", "torch_fused", "reference") if cls.algorithm.cpu else ("auto", "reference")
        for impl in impls:
            p = torch.nn.Parameter(torch.randn(64))
            opt = cls([p], lr=0.1, schedule=spec, impl=impl, **kw)
            before = p.detach().clone()
            for _ in range(3):
                p.grad = torch.randn(64)
                opt.step()
            assert not torch.equal(p.detach(), before), (cls, impl)
            assert int(opt.schedule_step) == 3
    p = torch.nn.Parameter(torch.randn(4))
    try:
        getattr(fused_lrs, ANY_NAME)([p], impl="triton")
    except ValueError as e:
        assert "impl='triton' cannot run" in str(e), e
    else:
        raise AssertionError("impl='triton' on CPU did not raise")
    assert float(spec.lr(torch.tensor(10), 1.0)) > 0
    assert sys.modules["triton"] is None
    assert not any(m.startswith("triton.") for m in sys.modules), \\
        sorted(m for m in sys.modules if m.startswith("triton."))
    print("ok")
""").replace("ROWS", repr(ROWS)).replace("ANY_NAME", repr(ANY.name))


def test_fused_lrs_imports_and_steps_without_triton():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
