"""DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): the step runs on the local
shards.

A DTensor op goes through DTensor's dispatcher (sharding propagation, then the local op), so
torch's ``AdamW(fused=True)`` on DTensors pays that dispatch per tensor and per op: several
times the cost of the same fused kernel on the local shards (``benchmarks/bench_fsdp.py``;
its figures are in ``benchmarks/results/fsdp_cpu.json``).
The update is elementwise and every operand (parameter, gradient, states, master) has the same
placements, so each rank can update its own shards directly: this module
swaps each DTensor in a step description for its local tensor, once, when the description is
built (``base.py``), so every backend sees plain tensors and makes one fused call (CPU) or one
launch (GPU) per rank.

Kept as DTensors, in torch's convention: the optimizer's state (``zeros_like`` of a DTensor
parameter is a DTensor with its placements), so ``state_dict`` and torch.distributed.checkpoint
see sharded states exactly as with ``torch.optim.AdamW``. The per-parameter ``step`` counts are
plain tensors, as torch's are.

What can change under a cached description: FSDP2 re-points a parameter's ``_local_tensor`` when
it re-shards it (lazy init at the first forward, ``module.to()``, ``load_state_dict(assign=
True)``), and the gradients are new DTensors every step. So a steady-state step unwraps the
gradients (one attribute read each) and checks that each parameter's local tensor is the one
described (one identity test each); a different one rebuilds the description.
"""

from __future__ import annotations

import sys
from itertools import repeat
from operator import attrgetter, is_

import torch

_DTYPE, _SPARSE = attrgetter("dtype"), attrgetter("is_sparse")


def dtensor_class():
    """``DTensor``, or None when ``torch.distributed.tensor`` was never imported (then no
    DTensor can exist, and fused_lrs does not pay for importing it)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def local(x):
    """``x``'s local shard if it is a DTensor, else ``x`` (None stays None)."""
    cls = dtensor_class()
    return x._local_tensor if cls is not None and isinstance(x, cls) else x


def check(name: str, p, grad, state: dict) -> None:
    """What updating ``p`` through its local shard needs: its gradient and state tensors are
    DTensors on the same mesh with the same placements (an elementwise update of same-placed
    shards is the update of the whole tensor). A ``Partial`` gradient, one still to be
    reduced, would be summed on no rank: refused."""
    cls = dtensor_class()
    if cls is None or not isinstance(p, cls):
        others = [x for x in (grad, *state.values()) if isinstance(x, torch.Tensor)]
        if cls is not None and any(isinstance(x, cls) for x in others):
            raise TypeError(f"{name}: a plain parameter has a DTensor gradient or state")
        return
    tensors = {"gradient": grad, **{f"state {k!r}": v for k, v in state.items()
                                     if k != "step" and isinstance(v, torch.Tensor)}}
    for what, x in tensors.items():
        if not isinstance(x, cls):
            raise TypeError(f"{name}: a DTensor parameter's {what} is a plain tensor; the "
                            "step updates local shards and needs both sharded alike")
        if x.device_mesh != p.device_mesh or x.placements != p.placements:
            raise ValueError(f"{name}: a DTensor parameter ({p.placements}) has a {what} "
                             f"placed {x.placements}; redistribute it to the parameter's "
                             "placements before step()")


def unwrap(d) -> None:
    """Replace the DTensors of step description ``d`` by their local tensors, in place, and
    record the parameters they came from in ``d.wrappers`` (None when there is no DTensor)."""
    cls = dtensor_class()
    if cls is None or not any(isinstance(p, cls) for p in d.params):
        d.wrappers = None
        return
    d.wrappers = list(d.params)
    d.params = [local(p) for p in d.params]
    d.grads = [local(g) for g in d.grads]
    d.states = tuple([local(x) for x in column] for column in d.states)
    d.masters = [local(m) for m in d.masters]


# The per-step checks below run as C-level loops (map), not generator expressions: at 72
# tensors a Python-level loop costs tens of microseconds, a tenth of a small model's step.
# ``getattr(x, "_local_tensor", x)`` is a DTensor's local tensor and a plain tensor itself.

def current(d) -> bool:
    """Whether ``d``'s local tensors are still its parameters' (one identity test each)."""
    return all(map(is_, map(getattr, d.wrappers, repeat("_local_tensor"), d.params), d.params))


def local_grads(grads: list) -> list:
    """This step's gradients' local shards (one attribute read each)."""
    return list(map(getattr, grads, repeat("_local_tensor"), grads))


def grads_match(d) -> bool:
    """Whether ``d``'s (local) gradients are dense and of their parameters' dtypes: what
    ``check_gradients`` asks, without reading each DTensor's ``.grad`` again. False sends the
    step to ``check_gradients`` for the error."""
    return not any(map(_SPARSE, d.grads)) and list(map(_DTYPE, d.grads)) == list(
        map(_DTYPE, d.params))
