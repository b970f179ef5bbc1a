"""lr_find under DDP and FSDP2 on 2 gloo ranks (spawned by dist_workers.launch), each rank on
its own batches: the loss is averaged across the ranks on the device (an all_reduce of a
tensor, no host read), so both ranks record the same curve, stop at the same step and reach
the same suggestion, and both come back with their model (FSDP2: their shards) and optimizer
state as they were, bitwise."""

import pytest
import torch
import torch.distributed as dist
from conftest import assert_close
from dist_workers import WORLD, launch
from test_distributed import assert_same

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

SCENARIOS = ["lr_find:ddp/torch_fused", "lr_find:ddp/reference", "lr_find:fsdp2/torch_fused"]
TIMEOUT = 180      # seconds for both workers, which take ~10 s on two cores


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch(SCENARIOS, str(tmp_path_factory.mktemp("dist")), TIMEOUT)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_rank_reaches_the_same_suggestion_from_the_averaged_loss(results, name):
    runs = [results[rank][name] for rank in range(WORLD)]
    for rank, r in enumerate(runs):
        assert "error" not in r, f"rank {rank}:\n{r['error']}"
        assert r["t"] == 2
        assert_same(r["after"], r["before"], f"rank {rank}")        # bitwise
    first, second = runs
    assert first["suggestion"] == second["suggestion"] and first["suggestion"] > 0
    assert first["raw"] == second["raw"] and first["losses"] == second["losses"]
    assert first["diverged_at"] == second["diverged_at"] and first["lrs"] == second["lrs"]
    # Each step's recorded loss is the mean of the ranks' own losses, which differ.
    n = len(first["raw"])
    own = torch.stack([r["own"][:n].double() for r in runs])
    assert not torch.equal(own[0], own[1])
    assert_close(first["raw"], own.mean(0), rtol=1e-15, what="averaged loss")
