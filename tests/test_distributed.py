"""torch.distributed on CPU: 2 gloo ranks, spawned once for the module (``dist_workers.py``).

* FSDP2 (``fully_shard``, DTensor parameters): ours updates the local shards directly and
  matches torch AdamW(fused=True) + its scheduler: fp32, bf16 compute with a
  MixedPrecisionPolicy, reshard_after_forward=False, and a head whose shard on rank 1 is empty;
  and SGD with momentum against SGD(foreach=True) (torch 2.13's fused SGD refuses DTensors);
  and the Triton kernel (interpreted) on shards reallocated mid-run.
  The CPU backend runs torch's own fused kernel on the shards: bitwise equal. The reference
  (and fused SGD against torch's foreach SGD) differs from torch's kernel by rounding: float32
  rtol 1e-5 / atol 1e-7, as test_optim_vs_torch.py, over 8 steps.
* DDP with gradient_as_bucket_view, no_sync gradient accumulation and clip_grad_norm_: the same
  comparison.
* The schedule counter and a plateau's state survive torch.save in a DDP run,
  ZeroRedundancyOptimizer's consolidate_state_dict / load_state_dict,
  torch.distributed.checkpoint with and without FSDP2 (also with flatten_optimizer_state_dict),
  and FSDP2's full state dicts (cpu_offload, torch.save on rank 0): the run saved after 4 steps
  and resumed in fresh objects equals the uninterrupted run bitwise, every state tensor
  included; and right after the load, before any step, the counter, ``last_lr``,
  ``get_last_lr()`` and the plateau's state read what the saved optimizer read.
* None of these flows warns that a torch scheduler is attached (none is, to ours).
* A shard FSDP2 reallocates mid-run (reset_sharded_param) makes a new description; otherwise
  the whole run uses one. DCP's state initialisation (a step at lr 0 of a fresh
  optimizer) moves neither the counter nor the weights.
"""

import importlib.util
import os

import pytest
import torch
import torch.distributed as dist
from conftest import assert_close
from dist_workers import SAVE_AT, STEPS, WORLD, launch

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

FSDP = [f"fsdp:{impl}/{setup}" for impl in ("torch_fused", "reference")
        for setup in ("fp32", "bf16", "keep")] + ["fsdp:torch_fused/realloc",
                                                  "fsdp:torch_fused/sgd"]
# The kernel on reallocated shards, interpreted on CPU (conftest sets TRITON_INTERPRET=1 without
# CUDA; the spawned ranks inherit it): ~0.5 s more. test_distributed_triton.py runs its fp32 and
# reshard_after_forward=False cases.
if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton"):
    FSDP += ["fsdp:triton/realloc"]
DDP = ["ddp:torch_fused", "ddp:reference"]
RESUME = ["ddp_save:torch_fused", "zero:torch_fused", "zero:reference", "dcp:ddp",
          "dcp:fsdp2", "dcp:fsdp2-flat", "full:fsdp2"]
# Seconds for the whole module's workers; measured ~25 s on a loaded 2-core machine.
TIMEOUT = 240
TOL = dict(rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch(FSDP + DDP + RESUME, str(tmp_path_factory.mktemp("dist")), TIMEOUT)


def on_each_rank(results, name):
    for rank in range(WORLD):
        result = results[rank][name]
        assert "error" not in result, f"rank {rank}:\n{result['error']}"
        yield rank, result


def assert_same(a, b, what, **tol):
    """Parameters and every state tensor (with the same keys), bitwise unless ``tol``."""
    assert len(a["params"]) == len(b["params"])
    for i, (x, y) in enumerate(zip(a["params"], b["params"])):
        compare(x, y, f"{what}: param {i}", **tol)
    for i, (s, r) in enumerate(zip(a["state"], b["state"])):
        assert s.keys() == r.keys(), f"{what}: param {i}: state {sorted(s)} != {sorted(r)}"
        for key in s:
            compare(s[key].to(r[key].dtype), r[key], f"{what}: param {i}: {key}", **tol)


def compare(x, y, what, **tol):
    assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: {x.dtype}{tuple(x.shape)} " \
                                                      f"!= {y.dtype}{tuple(y.shape)}"
    if tol:
        assert_close(x, y, what=what, **tol)
    else:
        assert torch.equal(x, y), f"{what}: not bitwise equal (max diff " \
                                  f"{(x.double() - y.double()).abs().max().item():.3g})"


def test_no_flow_warns_of_a_torch_scheduler(results):
    for name in FSDP + DDP + RESUME:
        for rank, r in on_each_rank(results, name):
            assert r["scheduler_warnings"] == [], f"{name}, rank {rank}"


@pytest.mark.parametrize("name", FSDP)
def test_fsdp2_matches_torch_adamw(results, name):
    impl = name.split(":")[1].split("/")[0]
    empty = []
    for rank, r in on_each_rank(results, name):
        assert r["described"], "the step did not run on local shards"
        # One description for the whole run; a reallocated shard makes a second one.
        assert r["built"] == (2 if name.endswith("realloc") else 1), r["built"]
        assert r["t"] == STEPS
        bitwise = impl == "torch_fused" and not name.endswith("sgd")  # torch's own kernel
        assert_same(r["ours"], r["torch"], f"rank {rank}", **({} if bitwise else TOL))
        empty += [p.numel() == 0 for p in r["ours"]["params"]]
    assert any(empty), "no rank had an empty shard: the model no longer covers that case"


@pytest.mark.parametrize("name", DDP)
def test_ddp_matches_torch_adamw(results, name):
    impl = name.split(":")[1]
    for rank, r in on_each_rank(results, name):
        assert r["t"] == STEPS
        assert_same(r["ours"], r["torch"], f"rank {rank}",
                    **({} if impl == "torch_fused" else TOL))


@pytest.mark.parametrize("name", RESUME)
def test_resumed_run_is_bitwise_the_uninterrupted_one(results, name):
    for rank, r in on_each_rank(results, name):
        assert r["t"] == STEPS, f"rank {rank}: schedule counter {r['t']} after the resumed run"
        assert_same(r["resumed"], r["uninterrupted"], f"rank {rank}")
        # Read after the load, before any step: what the saved optimizer read at the save.
        saved, loaded = r["saved"], r["loaded"]
        assert saved["t"] == SAVE_AT and loaded["t"] == SAVE_AT, (saved["t"], loaded["t"])
        compare(loaded["last_lr"], saved["last_lr"], f"rank {rank}: last_lr")
        assert loaded["get_last_lr"] == saved["get_last_lr"]
        # The plateau moved before the save (dist_workers.metric: halved after step 3, its
        # cooldown of 1 running), so a fresh plateau's [inf, 0, 0, 0] and scale 1 differ.
        assert saved["plateau"]["scales"].tolist() == [0.5]
        assert saved["plateau"]["state"][2] == 1.0
        for key in ("state", "scales"):
            compare(loaded["plateau"][key], saved["plateau"][key], f"rank {rank}: plateau {key}")
        if "fresh" in r:
            # get_optimizer_state_dict on the fresh optimizer: DCP stepped it at lr 0 to make
            # its state; the counter, the weights and the step counts stay where they were.
            fresh = r["fresh"]
            assert fresh["t"] == 0 and not fresh["moved"]
            assert fresh["states"] > 0 and set(fresh["steps"]) == {0.0}
