"""The schedule catalogue: factories that return immutable specs.

``t`` is the number of optimizer steps already completed; the k-th ``step()`` uses ``lr(k - 1)``
(torch's ``optimizer.step(); scheduler.step()``). See ``base.py`` for what a spec is.
"""

from fused_lrs.schedules.base import Leaf, Schedule
from fused_lrs.schedules.compose import chained, every, sequential, warmup
from fused_lrs.schedules.cosine import cosine, cosine_restarts
from fused_lrs.schedules.cyclic import cyclic, cyclic_momentum, one_cycle, one_cycle_momentum
from fused_lrs.schedules.decay import (
    constant,
    exponential,
    inverse_sqrt,
    linear,
    multistep,
    polynomial,
    step,
)
from fused_lrs.schedules.plateau import plateau
from fused_lrs.schedules.wsd import wsd

FACTORIES = {f.__name__: f for f in (
    constant, step, multistep, exponential, cosine, cosine_restarts, cyclic, one_cycle, linear,
    polynomial, inverse_sqrt, wsd, warmup, sequential, chained, every, one_cycle_momentum,
    cyclic_momentum, plateau)}
"""Every schedule factory by name: what ``parse`` and ``fused-lrs plot`` may call."""

from fused_lrs.schedules.convert import from_torch, torch_position  # noqa: E402
from fused_lrs.schedules.parse import parse  # noqa: E402

__all__ = ["Leaf", "Schedule", "FACTORIES", "from_torch", "torch_position", "parse", *FACTORIES]
