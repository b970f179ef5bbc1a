"""master_weights=True: bf16/fp16 parameters keep an fp32 master copy and fp32 states; the
step updates the master and writes its rounding to the parameter, in the same launch as the
fp32 parameters of the model.

The oracle is an fp32 run fed the same gradients: the master must follow it exactly (the same
fp32 arithmetic), and the 16-bit parameter must be the master rounded to nearest even. So the
only difference from fp32 training is the rounding at each step, and no drift beyond it."""

import pytest
import torch
from conftest import KERNEL_DEVICE, assert_close

from fused_lrs import FusedAdamWScheduled, FusedSGDScheduled
from fused_lrs import schedules as S

SHAPES = [(33, 31), (1025,), (3,)]
STEPS = 25


def make(cls, params, impl, master, **kw):
    return cls(params, lr=0.01, schedule=S.warmup(S.cosine(30), 5), impl=impl,
               master_weights=master, **kw)


def run(cls, dtypes, impl, master, device="cpu", **kw):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(d).to(device).requires_grad_()
              for s, d in zip(SHAPES, dtypes)]
    opt = make(cls, params, impl, master, **kw)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype).to(device)
        opt.step()
    return params, opt


@pytest.mark.parametrize("cls, kw", [(FusedAdamWScheduled, dict(amsgrad=True)),
                                     (FusedSGDScheduled, dict(momentum=0.9, nesterov=True))],
                         ids=["adamw", "sgd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_follows_an_fp32_run_exactly(cls, kw, dtype):
    # The fp32 run starts from the 16-bit values and sees the 16-bit gradients, upcast.
    low, low_opt = run(cls, [dtype] * 3, "reference", True, **kw)
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(s, generator=gen).to(dtype).float().requires_grad_() for s in SHAPES]
    ref_opt = make(cls, ref, "reference", False, **kw)
    for _ in range(STEPS):
        for p in ref:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype).float()
        ref_opt.step()
    for p, q in zip(low, ref):
        state = low_opt.state[p]
        assert state["master"].dtype == torch.float32
        assert torch.equal(state["master"], q.detach())
        assert torch.equal(p.detach(), q.detach().to(dtype))       # rounding, nothing more
        for key, value in ref_opt.state[q].items():
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], value), key


def test_without_master_weights_states_take_the_parameter_dtype():
    params, opt = run(FusedAdamWScheduled, [torch.bfloat16] * 3, "reference", False)
    for p in params:
        assert "master" not in opt.state[p]
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("cls, kw", [(FusedAdamWScheduled, dict(amsgrad=True)),
                                     (FusedSGDScheduled, dict(momentum=0.9))], ids=["adamw", "sgd"])
def test_kernel_matches_reference_with_masters_in_one_mixed_launch(cls, kw):
    dtypes = [torch.bfloat16, torch.float32, torch.float16]
    (ps, ref), (qs, tri) = (run(cls, dtypes, impl, True, device=KERNEL_DEVICE, **kw)
                            for impl in ("reference", "triton"))
    for p, q in zip(ps, qs):
        for key, value in ref.state[p].items():
            scale = value.abs().max().item()
            assert_close(tri.state[q][key], value, rtol=1e-6, atol=1e-6 * scale, what=key)
        # The 16-bit parameter is its master rounded: equal where the masters round alike.
        if p.dtype != torch.float32:
            assert torch.equal(q.detach(), tri.state[q]["master"].to(p.dtype))


def test_checkpoint_keeps_the_fp32_masters(tmp_path):
    params, opt = run(FusedAdamWScheduled, [torch.bfloat16] * 3, "reference", True)
    torch.save(opt.state_dict(), tmp_path / "ckpt.pt")
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = make(FusedAdamWScheduled, fresh_params, "reference", True)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    for p, q in zip(params, fresh_params):
        for key, value in opt.state[p].items():
            assert fresh.state[q][key].dtype == value.dtype
            assert torch.equal(fresh.state[q][key], value), key


def test_a_bf16_torch_checkpoint_gains_fp32_states_and_masters():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).bfloat16().requires_grad_() for s in SHAPES]
    theirs = torch.optim.AdamW(params, lr=0.01)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).bfloat16()
    theirs.step()
    ours = make(FusedAdamWScheduled, params, "reference", True)
    ours.load_state_dict(theirs.state_dict())
    for p in params:
        state = ours.state[p]
        assert torch.equal(state["master"], p.detach().float())
        assert torch.equal(state["exp_avg"], theirs.state[p]["exp_avg"].float())
    ours.step()                                        # and it steps
