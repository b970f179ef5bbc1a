"""master_weights=True: bf16/fp16 parameters keep an fp32 master copy and fp32 states; the
step updates the master and writes its rounding to the parameter, in the same launch as the
fp32 parameters of the model.

The oracle is an fp32 run fed the same gradients: the master must follow it exactly (the same
fp32 arithmetic), and the 16-bit parameter must be the master rounded to nearest even. So the
only difference from fp32 training is the rounding at each step, and no drift beyond it."""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_same_optimizer
from optimizers import representatives

from fused_lrs import schedules as S

SHAPES = [(33, 31), (1025,), (3,)]
STEPS = 25
LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def make(info, params, impl, master, **kw):
    return info.cls(params, lr=0.01, schedule=S.warmup(S.cosine(30), 5), impl=impl,
                    master_weights=master, **kw)


def run(info, dtypes, impl, master, device="cpu", **kw):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(d).to(device).requires_grad_()
              for s, d in zip(SHAPES, dtypes)]
    opt = make(info, params, impl, master, **kw)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype).to(device)
        opt.step()
    return params, opt


def fp32_view(opt):
    """What an optimizer with masters computes in fp32: each parameter's master (the parameter
    itself where it has none) and its other states, as a snapshot for assert_same_optimizer."""
    params = [p for g in opt.param_groups for p in g["params"]]
    return {"params": [opt.state[p].get("master", p) for p in params],
            "state": [{k: v for k, v in opt.state[p].items() if k != "master"} for p in params],
            "t": int(opt.schedule_step)}


@pytest.mark.parametrize("info, kw", representatives())
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("impl", ["reference", "torch_fused"])
def test_master_follows_an_fp32_run_exactly(info, kw, dtype, impl):
    # The fp32 run starts from the 16-bit values and sees the 16-bit gradients, upcast. On the
    # CPU backend the row's CPU update runs on the masters as it runs on fp32 parameters.
    low, low_opt = run(info, [dtype] * 3, impl, True, **kw)
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(s, generator=gen).to(dtype).float().requires_grad_() for s in SHAPES]
    ref_opt = make(info, ref, impl, False, **kw)
    for _ in range(STEPS):
        for p in ref:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype).float()
        ref_opt.step()
    assert low_opt.impl == ref_opt.impl == impl
    # Masters and states fp32, bitwise the fp32 run's.
    assert_same_optimizer(fp32_view(low_opt), ref_opt, rtol=0, atol=0, what="masters")
    for p, q in zip(low, ref):
        assert low_opt.state[p]["master"].dtype == torch.float32
        assert torch.equal(p.detach(), q.detach().to(dtype))       # rounding, nothing more


@pytest.mark.parametrize("info, kw", representatives())
def test_without_master_weights_states_take_the_parameter_dtype(info, kw):
    params, opt = run(info, [torch.bfloat16] * 3, "reference", False, **kw)
    # The step count and the scalar states (NAdam's mu_product) are float32, as torch's.
    counts = {"step", *(scalar.key for scalar in info.record.scalars)}
    for p in params:
        assert "master" not in opt.state[p]
        assert {k: v.dtype for k, v in opt.state[p].items() if k not in counts} == \
            {k: torch.bfloat16 for k in opt.state[p] if k not in counts}


@pytest.mark.parametrize("info, kw", representatives())
def test_kernel_matches_reference_with_masters_in_one_mixed_launch(info, kw):
    dtypes = [torch.bfloat16, torch.float32, torch.float16]
    (ps, ref), (qs, tri) = (run(info, dtypes, impl, True, device=KERNEL_DEVICE, **kw)
                            for impl in ("reference", "triton"))
    # Masters (fp32 parameters themselves) and states, relative to each tensor's scale.
    assert_same_optimizer(fp32_view(tri), fp32_view(ref), rtol=1e-6, scaled=True)
    for q in qs:
        # The 16-bit parameter is its master rounded: equal where the masters round alike.
        if q.dtype != torch.float32:
            assert torch.equal(q.detach(), tri.state[q]["master"].to(q.dtype))


@pytest.mark.parametrize("info, kw", representatives())
def test_checkpoint_keeps_the_fp32_masters(info, kw, tmp_path):
    params, opt = run(info, [torch.bfloat16] * 3, "reference", True, **kw)
    torch.save(opt.state_dict(), tmp_path / "ckpt.pt")
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = make(info, fresh_params, "reference", True, **kw)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    assert_same_optimizer(fresh, opt, rtol=0, atol=0, what="loaded")


@pytest.mark.parametrize("info, kw", representatives())
def test_a_bf16_torch_checkpoint_gains_fp32_states_and_masters(info, kw):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).bfloat16().requires_grad_() for s in SHAPES]
    theirs = info.peer(params, lr=0.01, **kw)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).bfloat16()
    theirs.step()
    ours = make(info, params, "reference", True, **kw)
    ours.load_state_dict(theirs.state_dict())
    for p in params:
        state = ours.state[p]
        assert torch.equal(state["master"], p.detach().float())
        for key, value in theirs.state[p].items():
            if key != "step":
                assert state[key].dtype == torch.float32, key
                assert torch.equal(state[key], value.float()), key
    ours.step()                                        # and it steps
