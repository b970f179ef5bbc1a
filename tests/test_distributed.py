"""torch.distributed on CPU: 2 gloo ranks, spawned once for the module (``dist_workers.py``).

* FSDP2 (``fully_shard``, DTensor parameters): ours updates the local shards directly and
  matches the peer + its scheduler, for every row of the table (``tests/optimizers.py``, its
  representative) on the CPU backend in fp32, with a head whose shard on rank 1 is empty; for
  ANY also bf16 compute with a MixedPrecisionPolicy, reshard_after_forward=False, the
  reference, and the Triton kernel (interpreted) on shards reallocated mid-run. The peer runs
  its fused kernel where that takes DTensors (``fused_peer_on_dtensor``: torch 2.13's fused
  SGD has no sharding rule), else its foreach path.
  The CPU backend runs torch's own fused kernel on the shards: bitwise equal to a fused peer.
  The reference (and the fused kernel against a foreach peer) differs by rounding: float32
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
import torch.distributed as dist
from conftest import assert_close, assert_same_optimizer
from dist_workers import SAVE_AT, STEPS, WORLD, launch, row
from optimizers import ANY, OPTIMIZER_INFOS

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

# Every row on the CPU backend in fp32; ANY in every setup (what they check every row shares).
FSDP = ([f"fsdp:{impl}/{setup}/{ANY.name}" for impl in ("torch_fused", "reference")
         for setup in ("fp32", "bf16", "keep")] + [f"fsdp:torch_fused/realloc/{ANY.name}"]
        + [f"fsdp:torch_fused/fp32/{info.name}" for info in OPTIMIZER_INFOS if info is not ANY])
# The kernel on reallocated shards, interpreted on CPU (conftest sets TRITON_INTERPRET=1 without
# CUDA; the spawned ranks inherit it): ~0.5 s more. test_distributed_triton.py runs its fp32 and
# reshard_after_forward=False cases.
if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton"):
    FSDP += [f"fsdp:triton/realloc/{ANY.name}"]
DDP = ["ddp:torch_fused", "ddp:reference"]
RESUME = ["ddp_save:torch_fused", "zero:torch_fused", "zero:reference", "dcp:ddp",
          "dcp:fsdp2", "dcp:fsdp2-flat", "full:fsdp2"]
# Seconds for the whole module's workers: they take ~25 s on two cores; the rest is room for
# other jobs on those cores.
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


def assert_same(ours, theirs, what, extra_state=frozenset(), bitwise=False):
    """Snapshots of two optimizers: parameters and every state tensor, bitwise or within TOL."""
    assert_same_optimizer(ours, theirs, **({"rtol": 0, "atol": 0} if bitwise else TOL),
                          what=what, extra_state=extra_state)


def compare(x, y, what):
    """Bitwise: a value read right after a load against what the saved optimizer read."""
    assert_close(x, y, rtol=0, atol=0, what=what)


def test_no_flow_warns_of_a_torch_scheduler(results):
    for name in FSDP + DDP + RESUME:
        for rank, r in on_each_rank(results, name):
            assert r["scheduler_warnings"] == [], f"{name}, rank {rank}"


@pytest.mark.parametrize("name", FSDP)
def test_fsdp2_matches_the_peer(results, name):
    impl, setup, row_name = name.split(":")[1].split("/")
    info = row(row_name)
    empty = []
    for rank, r in on_each_rank(results, name):
        assert r["described"], "the step did not run on local shards"
        # One description for the whole run; a reallocated shard makes a second one.
        assert r["built"] == (2 if setup == "realloc" else 1), r["built"]
        assert r["t"] == STEPS
        bitwise = impl == "torch_fused" and info.fused_peer_on_dtensor  # the peer's own kernel
        assert_same(r["ours"], r["torch"], f"rank {rank}", info.extra_state, bitwise)
        empty += [p.numel() == 0 for p in r["ours"]["params"]]
    assert any(empty), "no rank had an empty shard: the model no longer covers that case"


@pytest.mark.parametrize("name", DDP)
def test_ddp_matches_the_peer(results, name):
    impl = name.split(":")[1]
    for rank, r in on_each_rank(results, name):
        assert r["t"] == STEPS
        assert_same(r["ours"], r["torch"], f"rank {rank}", ANY.extra_state,
                    bitwise=impl == "torch_fused")


@pytest.mark.parametrize("name", RESUME)
def test_resumed_run_is_bitwise_the_uninterrupted_one(results, name):
    for rank, r in on_each_rank(results, name):
        assert r["t"] == STEPS, f"rank {rank}: schedule counter {r['t']} after the resumed run"
        assert_same(r["resumed"], r["uninterrupted"], f"rank {rank}", bitwise=True)
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
