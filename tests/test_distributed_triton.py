"""FSDP2 on the Triton path: 2 gloo ranks on CPU, the kernel interpreted (the workers inherit
TRITON_INTERPRET=1 from conftest), ANY's representative against its fused peer + its scheduler
under the same FSDP2 setup (``dist_workers.py``'s scenarios). Unwrapping DTensors is what every
algorithm shares: one row carries it.

A DTensor parameter's ``data_ptr()`` is not its local shard's address: a launch given it would
write outside the shard (SIGSEGV in a worker; on a GPU an illegal memory access or silent
corruption). Each rank's launch updates its local shards (one launch per rank). Tolerance as the
reference's in test_distributed.py: the kernel rounds as the reference does, not as torch's
fused kernel.
"""

import pytest
from conftest import KERNEL_DEVICE
from dist_workers import STEPS, launch
from optimizers import ANY
from test_distributed import assert_same, on_each_rank

pytestmark = pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="gloo on CPU, interpreted")

SCENARIOS = [f"fsdp:triton/fp32/{ANY.name}", f"fsdp:triton/keep/{ANY.name}"]
TIMEOUT = 300          # seconds for both scenarios, with room for other jobs on the cores


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return launch(SCENARIOS, str(tmp_path_factory.mktemp("dist_triton")), TIMEOUT)


@pytest.mark.parametrize("name", SCENARIOS)
def test_fsdp2_local_shards_on_the_triton_path_match_the_peer(results, name):
    empty = []
    for rank, r in on_each_rank(results, name):
        assert r["described"], "the step did not run on local shards"
        assert r["t"] == STEPS
        assert_same(r["ours"], r["torch"], f"rank {rank}", ANY.extra_state)
        empty += [p.numel() == 0 for p in r["ours"]["params"]]
    assert any(empty), "no rank had an empty shard: the model no longer covers that case"
