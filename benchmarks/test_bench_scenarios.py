"""The ``fused-lrs bench`` scenarios and providers under pytest-benchmark.

    pytest benchmarks --benchmark-only        # not part of `python -m pytest` (testpaths: tests)

One benchmark per scenario and provider. A round is a loop of ``STEPS`` steps with one
synchronisation at its end, as in ``fused-lrs bench``; pytest-benchmark divides it by ``STEPS``,
so its figures are wall-clock time per step with host overhead counted. Without CUDA the sizes are
``--quick``'s reduced CPU variants and fused_lrs runs ``impl="reference"``.
"""

import itertools

import pytest
import torch

from fused_lrs.bench.measure import sync
from fused_lrs.bench.providers import for_device, make_params
from fused_lrs.bench.scenarios import scenarios

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CPU = DEVICE.type == "cpu"
STEPS = 20 if CPU else 200
ROUNDS = 3
SCENARIOS = [s for s in scenarios(quick=CPU, cpu=CPU) if not (CPU and s.gpu_only)]


@pytest.mark.parametrize("provider", for_device(DEVICE), ids=lambda p: p.name)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_step(benchmark, scenario, provider):
    benchmark.group = scenario.name
    benchmark.extra_info.update(tensors=scenario.tensors, params=scenario.params,
                                reduced=scenario.reduced, device=str(DEVICE))
    params = make_params(scenario.shapes, DEVICE, getattr(torch, scenario.dtype))
    try:
        step = provider.build(params, scenario.recipe, DEVICE)
        for _ in range(scenario.recipe.last_boundary + 2):     # state, compile, boundaries
            step()
        calls = itertools.count(1)

        def one_step():
            step()
            if next(calls) % STEPS == 0:                       # the end of a round
                sync(DEVICE)

        sync(DEVICE)
        benchmark.pedantic(one_step, rounds=ROUNDS, iterations=STEPS)
    finally:
        if provider.compiled:
            torch._dynamo.reset()
