"""How long a benchmark run takes: the time left on the progress line, and the length of a full
CPU run said before it starts.

The cost model. One item of a run is one provider on one scenario: build fresh parameters, take
the warm-up steps, time ``repeats`` loops of ``steps`` steps (on CUDA, a few more steps for the
GPU time, kernels and syncs). At the sizes that make a run long, a step moves every byte of the
parameters, gradients and states (``Scenario.bytes_per_step``: 28 B a parameter for fp32 AdamW),
so an item's work is counted in bytes moved::

    work = bytes_per_step * (steps taken + BUILD_STEPS)

and its time is ``work * rate``, with ``rate`` in seconds per byte. Providers differ in rate
(torch's foreach path makes several passes over the states where a fused step makes one), so
each provider has its own rate, learned from its completed items; a provider with none yet
takes the mean rate of the others. Small, launch-bound scenarios cost more per byte than the
model says, and a compiled provider's compilation is not proportional to bytes at all: the
estimate is corrected as soon as that provider has finished one item.

Before a full CPU run, the rates come from a probe: a few steps of each eager provider on one
GPT-2-small block (12 tensors, 7.1M parameters, the shape S2 and S4 repeat), a fraction of a
second. The probe is bandwidth-bound like the full sizes, which is what makes it a fair guide
to them.
"""

from __future__ import annotations

import statistics
import time

import torch

from fused_lrs.bench.scenarios import TRANSFORMER, bytes_per_param, gpt_shapes

# Building an item's parameters and gradients (random normal fills of both) costs about as much
# as a couple of optimizer steps over the same bytes.
BUILD_STEPS = 2
# CUDA items also time ``steps`` steps with events and 5 + 5 for kernels and syncs (measure.py).
CUDA_EXTRA_STEPS = 10
PROBE_SHAPES = tuple(gpt_shapes(1, 768, 0, 0, embeddings=False))     # 12 tensors, 7.1M
# The median of 5 steps: on a 2-core machine that other jobs load, single steps of this block
# range over 10x (a preempted OpenMP thread stalls the step), and the median keeps to the middle.
PROBE_STEPS = 5


def steps_taken(scenario, provider, steps: int, repeats: int, cuda: bool) -> int:
    """The optimizer steps one item takes: warm-up (``bench._measure``), timed loops, extras."""
    warm = scenario.recipe.last_boundary + 2 if provider.compiled else 2
    extra = steps + CUDA_EXTRA_STEPS if cuda else 0
    return warm + steps * repeats + extra


def work(scenario, provider, steps: int, repeats: int, cuda: bool = False) -> float:
    """Bytes one item moves: its steps and the building of its tensors."""
    taken = steps_taken(scenario, provider, steps, repeats, cuda)
    return float(scenario.bytes_per_step * (taken + BUILD_STEPS))


class Eta:
    """Time left in a run of items ``(key, work)``, from the seconds per unit of work that
    completed items of the same key (the provider) took; ``prior`` gives rates before any
    item of a key has completed."""

    def __init__(self, items, prior: dict[str, float] | None = None):
        self.items = list(items)
        self.prior = dict(prior or {})
        self.seconds: dict[int, float] = {}

    def done(self, index: int, seconds: float) -> None:
        self.seconds[index] = seconds

    def rates(self) -> dict[str, float]:
        spent, worked = {}, {}
        for i, seconds in self.seconds.items():
            key, w = self.items[i]
            spent[key] = spent.get(key, 0.0) + seconds
            worked[key] = worked.get(key, 0.0) + w
        learned = {k: spent[k] / worked[k] for k in spent if worked[k] > 0}
        return {**self.prior, **learned}

    def left(self) -> float | None:
        """Seconds left, or None while nothing is known to estimate from."""
        rates = self.rates()
        if not rates:
            return None
        fallback = statistics.mean(rates.values())
        return sum(w * rates.get(key, fallback) for i, (key, w) in enumerate(self.items)
                   if i not in self.seconds)


def probe(plan, device: torch.device, shapes=None, steps: int | None = None
          ) -> dict[str, float]:
    """Seconds per byte of each eager provider of ``plan``, from the median of ``steps`` timed
    fp32 steps of the transformer recipe (``scenarios.TRANSFORMER``) on ``shapes`` (default
    ``PROBE_STEPS`` on ``PROBE_SHAPES``), after one untimed step that creates the state.
    Compiled providers are left out: a probe would spend its time compiling."""
    from fused_lrs.bench import measure, providers

    shapes, steps = shapes or PROBE_SHAPES, steps or PROBE_STEPS
    per_step = (bytes_per_param(TRANSFORMER.states)
                * sum(torch.Size(s).numel() for s in shapes))
    rates = {}
    for provider in plan:
        if provider.compiled:
            continue
        params = providers.make_params(shapes, device)
        step = provider.build(params, TRANSFORMER, device)
        step()
        times = []
        for _ in range(steps):
            measure.sync(device)
            t0 = time.perf_counter()
            step()
            measure.sync(device)
            times.append(time.perf_counter() - t0)
        rates[provider.name] = statistics.median(times) / per_step
        del params, step
    return rates


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h12m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
