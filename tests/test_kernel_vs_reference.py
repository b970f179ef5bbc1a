"""impl="triton" against impl="reference": every optimizer of the table (``tests/optimizers.py``)
in its representative and sample configurations (with them every option value and every
compiled variant of its update), its whole option grid in one launch, scheduled momentum and
weight decay, every schedule family through the rows that carry the sweeps, 16-bit storage,
views and layouts.

Without CUDA the kernel runs under the Triton interpreter (conftest sets TRITON_INTERPRET=1);
with CUDA the same tests run the compiled kernel. The interpreter walks every block in Python
(0.3 to 3 s a test here), so a row runs its few configurations one by one and its grid only
once, as the groups of one optimizer (the grid runs one by one on the reference and the CPU
backend, test_optim_vs_torch.py).

Tolerance: params and states within 1e-6 relative, where "relative" is to the tensor's own
scale (atol = 1e-6 * max|reference|). The two paths evaluate the schedule and beta**k with
different fp64 formulas, so a float32 scalar can differ by one ulp on some step; an element
that later cancels towards 0 then carries that ~1e-7 absolute difference, which an
element-wise relative test would call 1e-4. Everything else in the update is the same
sequence of IEEE float32 operations on both paths.
"""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_same_optimizer
from optimizers import ANY, few_options, representatives, swept

from fused_lrs import schedules as S

# Odd sizes around the 1024-element block: one element, a ragged block, a full block plus one,
# an empty tensor. ODD_SIZES adds 65537 (64 full blocks and a tail, several programs) for the
# tests that need it; the interpreter walks every block in Python, so the wide matrix below
# uses the small list.
SIZES = [1, 3, 1023, 0, 1025, 2049]
ODD_SIZES = [1, 3, 1023, 0, 1025, 65537]
STEPS = 20
RTOL = 1e-6

# Spec-only, as the interpreter's budget asks: every edge within the 20 steps run here (the
# schedule table the suites against torch share, tests/schedule_table.py, spreads them over 60).
SCHEDULES = {
    "constant": S.constant(),
    "step": S.step(4, 0.5),
    "multistep": S.multistep([3, 7, 7], 0.5),
    "exponential": S.exponential(0.93),
    "cosine": S.cosine(12, eta_min=1e-3),
    "cosine_restarts": S.cosine_restarts(4, 2, 1e-4),
    "cyclic": S.cyclic(0.01, 0.1, 3, 5, "triangular2"),
    "one_cycle": S.one_cycle(0.1, STEPS),
    "linear": S.linear(0.2, 1.0, 8),
    "polynomial": S.polynomial(15, 2.0, 1e-4),
    "inverse_sqrt": S.inverse_sqrt(4),
    "wsd": S.wsd(3, 6, STEPS, decay_type="1-sqrt", min_lr_ratio=0.1),
    "warmup_cosine": S.warmup(S.cosine(15), 5),
    "sequential": S.sequential([S.linear(0.1, 1.0, 4), S.exponential(0.9)], [6]),
    "chained": S.chained([S.step(5, 0.5), S.exponential(0.97)]),
    "every": S.every(S.step(2, 0.5), 3),
}

def run_pair(info, options, schedule, dtypes, sizes=SIZES, steps=STEPS, seed=0):
    """Run the two impls side by side from the same params and gradients; return both."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(dtype) for n, dtype in zip(sizes, dtypes)]
    runs = []
    for impl in ("reference", "triton"):
        ps = [p.clone().to(KERNEL_DEVICE).requires_grad_() for p in params]
        groups = [{"params": ps[:3]},
                  {"params": ps[3:], "lr": 0.03, "weight_decay": 0.02}]
        if options.get("weight_decay") is not None:
            groups[1]["weight_decay"] = options["weight_decay"] * 2
        runs.append((ps, info.cls(groups, lr=0.1, schedule=schedule, impl=impl, **options)))
    grad_gen = torch.Generator().manual_seed(seed + 1)
    for k in range(steps):
        grads = [torch.randn(p.shape, generator=grad_gen).to(p.dtype) for p in params]
        for ps, opt in runs:
            for i, (p, g) in enumerate(zip(ps, grads)):
                # Some parameters skip some steps: their counts must not advance.
                p.grad = None if (i + k) % 7 == 3 else g.to(KERNEL_DEVICE)
            opt.step()
    return runs


def assert_same(runs, rtol=RTOL):
    (_, ref_opt), (_, tri_opt) = runs
    assert_same_optimizer(tri_opt, ref_opt, rtol=rtol, scaled=True)


@pytest.mark.parametrize("info, options", few_options())
def test_options(info, options):
    assert_same(run_pair(info, options, SCHEDULES["warmup_cosine"], [torch.float32] * 6))


def step_with_gaps(runs, init, gen, every: int, steps: int = 8) -> None:
    """``steps`` steps of each (params, optimizer) of ``runs`` with the same fresh gradients,
    one tensor in ``every`` without a gradient each step (a different one each step), then
    ``assert_same``."""
    for k in range(steps):
        grads = [torch.randn(p.shape, generator=gen) for p in init]
        for ps, opt in runs:
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if (i + k) % every == 3 else g.to(KERNEL_DEVICE)
            opt.step()
    assert_same(runs)


@pytest.mark.parametrize("info", [p.values[0] for p in representatives()],
                         ids=lambda info: info.name)
def test_every_option_in_one_launch(info):
    """One optimizer whose groups are the row's whole option grid (a tensor each, SIZES in
    turn), so every option and every variant of the update runs in one launch."""
    gen = torch.Generator().manual_seed(0)
    grid = [options for _, options in info.options]
    init = [torch.randn(SIZES[i % len(SIZES)], generator=gen) for i in range(len(grid))]
    runs = []
    for impl in ("reference", "triton"):
        ps = [p.clone().to(KERNEL_DEVICE).requires_grad_() for p in init]
        groups = [{"params": [p], **options} for p, options in zip(ps, grid)]
        runs.append((ps, info.cls(groups, lr=0.05, schedule=SCHEDULES["warmup_cosine"],
                                  impl=impl)))
    step_with_gaps(runs, init, gen, every=5)


@pytest.mark.parametrize("info, options", representatives())
def test_scheduled_momentum_and_weight_decay(info, options):
    """momentum_schedule= (for a row whose record has a momentum: Adam's beta1, RMSprop's
    momentum, Lion's beta1, ...) and weight_decay_schedule=, evaluated in the kernel like the lr
    and read by each algorithm's ``prepare`` its own way, against the reference, which takes
    them as device tensors too; two groups, the second with its own lr and weight decay."""
    extra = {"weight_decay_schedule": S.cosine(10)}
    if info.record.momentum is not None:
        extra["momentum_schedule"] = S.cyclic_momentum(0.8, 0.95, 3)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(n, generator=gen) for n in (1, 3, 1025, 0)]
    runs = []
    for impl in ("reference", "triton"):
        ps = [p.clone().to(KERNEL_DEVICE).requires_grad_() for p in init]
        groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.03, "weight_decay": 0.02}]
        runs.append((ps, info.cls(groups, lr=0.01, schedule=S.warmup(S.cosine(12), 3),
                                  impl=impl, **options, **extra)))
    step_with_gaps(runs, init, gen, every=4)
    assert runs[1][1].impl == "triton"


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("info, options", swept())
def test_schedules(info, options, name):
    assert_same(run_pair(info, options, SCHEDULES[name], [torch.float32] * 6))


@pytest.mark.parametrize("info", [p.values[0] for p in representatives()],
                         ids=lambda info: info.name)
def test_mixed_dtypes_one_launch(info):
    # fp32 and 16-bit tensors in one optimizer. Both paths compute in fp32 and round once
    # (round-to-nearest-even), so bf16/fp16 results agree to the same tolerance in the
    # tensor's own ulps: 1e-6 relative of fp32 is far below one bf16 ulp (2^-8), so any
    # rounding difference would show (hence the row's ``sixteen_bit`` configuration). Several
    # programs per tensor (ODD_SIZES) is the generic kernel's business: the sweep rows carry it.
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16,
              torch.float32]
    options = info.representative if info.sixteen_bit is None else info.sixteen_bit
    assert_same(run_pair(info, options, SCHEDULES["step"], dtypes,
                         sizes=ODD_SIZES if info.sweep else SIZES))


@pytest.mark.parametrize("info, options", representatives())
def test_zero_lr_group_stays_put(info, options):
    p = torch.randn(1025, device=KERNEL_DEVICE, requires_grad=True)
    q = torch.randn(33, device=KERNEL_DEVICE, requires_grad=True)
    before = p.detach().clone()
    opt = info.cls([{"params": [p], "lr": 0.0}, {"params": [q]}], lr=0.1, impl="triton",
                   **options)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        q.grad = torch.randn_like(q)
        opt.step()
    assert torch.equal(p.detach(), before)
    assert opt.state[p]["step"].item() == 3


@pytest.mark.parametrize("info, options", representatives())
def test_all_grads_none_still_advances_the_schedule(info, options):
    p = torch.randn(10, device=KERNEL_DEVICE, requires_grad=True)
    opt = info.cls([p], lr=0.1, impl="triton", **options)
    before = p.detach().clone()
    for _ in range(4):
        opt.step()
    assert int(opt.schedule_step) == 4
    assert torch.equal(p.detach(), before)
    if info.record.eager_state:        # made at construction (torch's Adagrad), never counted
        assert float(opt.state[p]["step"]) == 0
    else:
        assert not opt.state[p]


def run_views(make_view, shape, steps=5, seed=3):
    """ANY's representative over two parameters in one launch, one plain and one made by
    ``make_view`` from a fresh tensor (a view with an offset, a layout): the reference against
    the kernel."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=gen).to(KERNEL_DEVICE)
    plain = torch.randn(3000, generator=gen).to(KERNEL_DEVICE)
    runs = []
    for impl in ("reference", "triton"):
        ps = [torch.nn.Parameter(make_view(base.clone())), torch.nn.Parameter(plain.clone())]
        runs.append((ps, ANY.cls(ps, lr=0.1, impl=impl, **ANY.representative)))
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen).to(KERNEL_DEVICE) for p in runs[0][0]]
        for ps, opt in runs:
            for p, g in zip(ps, grads):
                # The gradient in its parameter's layout, as autograd makes it.
                p.grad = torch.empty_like(p).copy_(g)
            opt.step()
    return runs


def test_a_misaligned_view_beside_an_aligned_tensor():
    # A parameter that starts 4 bytes into its storage defeats the 16-byte vector path. The
    # kernel decides per tensor, from its addresses: the misaligned one takes the scalar path,
    # its neighbour in the same launch keeps the vector path; both match the reference.
    runs = run_views(lambda x: x[1:], (4097,))
    assert runs[1][0][0].data_ptr() % 16 != 0 and runs[1][0][1].data_ptr() % 16 == 0
    assert_same(runs)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "channels_last_3d"])
def test_dense_layouts_other_than_contiguous(layout):
    # The update is elementwise: any dense, non-overlapping layout works when the gradient
    # and states share the parameter's strides (zeros_like and autograd keep them).
    make, shape = {"channels_last": (lambda x: x.to(memory_format=torch.channels_last),
                                     (8, 3, 5, 7)),
                   "transposed": (lambda x: x.t(), (40, 33)),
                   "channels_last_3d": (lambda x: x.to(memory_format=torch.channels_last_3d),
                                        (2, 3, 4, 5, 6))}[layout]
    runs = run_views(make, shape)
    p = runs[1][0][0]
    assert not p.is_contiguous()
    assert all(v.stride() == p.stride() for k, v in runs[1][1].state[p].items() if k != "step")
    assert_same(runs)


def test_tables_are_rebuilt_only_when_tensors_change():
    p = torch.randn(100, device=KERNEL_DEVICE, requires_grad=True)
    opt = ANY.cls([p], lr=0.1, impl="triton")
    p.grad = torch.randn_like(p)
    opt.step()
    tables, grads = opt._cache.backend.tensors, opt._cache.backend.grads
    opt.step()                                   # same grad tensor: same tables
    assert opt._cache.backend.tensors is tables
    opt.zero_grad(set_to_none=True)
    p.grad = torch.randn_like(p)                 # a new gradient: only its address is written
    opt.step()
    assert opt._cache.backend.tensors is tables and opt._cache.backend.grads is grads
    assert grads[0].item() == p.grad.data_ptr()
    opt.param_groups[0]["lr"] = 0.2              # a hyperparameter change: new group table
    opt.step()
    assert opt._cache.backend.tensors is not tables


@pytest.mark.parametrize("problem", ["float64", "not-dense", "grad-strides",
                                     "cast-after-build"])
def test_what_the_kernel_cannot_take_raises_and_changes_nothing(problem):
    if problem == "float64":
        # Known at construction: an explicit impl that cannot run the optimizer is refused there.
        p = torch.randn(8, 4, dtype=torch.float64, device=KERNEL_DEVICE, requires_grad=True)
        with pytest.raises(ValueError, match="float32', 'torch.bfloat16', 'torch.float16'.*"
                                             "impl='auto' picks one that can"):
            ANY.cls([p], lr=0.1, impl="triton")
        return
    p = torch.randn(8, 4, device=KERNEL_DEVICE, requires_grad=True)
    opt = ANY.cls([p], lr=0.1, impl="triton")
    if problem == "cast-after-build":
        p.grad = torch.randn_like(p)
        opt.step()
        p.data = p.data.to(torch.bfloat16)       # the model was cast; the states were not
        p.grad = None
        p.grad = torch.randn_like(p)
    elif problem == "not-dense":
        p.data = torch.randn(8, 8, device=KERNEL_DEVICE)[:, ::2]     # every other column
        p.grad = torch.randn_like(p)
    elif problem == "grad-strides":
        p.grad = torch.randn(4, 8, device=KERNEL_DEVICE).t()  # contiguous p, transposed grad
    else:
        p.grad = torch.randn_like(p)
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()},
              int(opt.schedule_step))
    with pytest.raises((TypeError, ValueError),
                       match="float32, bfloat16 and float16|dense, non-overlapping|"
                             "parameter's layout|was the model cast"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    assert set(opt.state[p]) == set(before[1])
    assert all(torch.equal(opt.state[p][k], v) for k, v in before[1].items())
    assert int(opt.schedule_step) == before[2]
