"""The backends a step description can run on, and the choice among them.

Each backend is one file with one class:
  * ``name``; ``unsupported(device, algorithm, dtypes, scheduled_hyperparameters)``: why it
    cannot run such a step, or None (``algorithm``: the record; ``dtypes``: those the update
    stores in, fp32 for a parameter with an fp32 master copy);
  * ``requirements(p, grad, states)``: what it needs of one tensor (local shards), raised
    before anything is written (``optim/validate.py`` calls it);
  * ``step(description)``: the whole update, counters included, with no host sync.
A backend object lives as long as its optimizer's tensors and may cache per description.
"""

from __future__ import annotations

import torch

from fused_lrs.optim.backends.reference import ReferenceBackend
from fused_lrs.optim.backends.torch_fused import TorchFusedBackend
from fused_lrs.optim.backends.triton import TritonBackend

BACKENDS = {b.name: b for b in (TritonBackend, TorchFusedBackend, ReferenceBackend)}
IMPLS = ("auto", *BACKENDS)


def candidates(device: torch.device | None) -> tuple[str, ...]:
    """``impl="auto"``'s order of preference: the kernel on CUDA, torch's fused kernels on
    CPU, the reference anywhere. (Triton on CPU only interprets: never chosen by itself.)"""
    first = ("triton",) if device is not None and device.type == "cuda" else ()
    return (*first, "torch_fused", "reference")


def choose(owner: str, requested: str, device, algorithm, dtypes,
           scheduled_hyperparameters: bool) -> str:
    """The backend for a step: ``requested`` if it can run it, else a clear error naming the
    ones that can; ``"auto"``, the first of ``candidates`` that can."""
    def why_not(name):
        return BACKENDS[name].unsupported(device, algorithm, dtypes, scheduled_hyperparameters)

    if requested == "auto":
        return next(name for name in candidates(device) if why_not(name) is None)
    reason = why_not(requested)
    if reason is not None:
        usable = [name for name in BACKENDS if why_not(name) is None]
        raise ValueError(f"{owner}: impl={requested!r} cannot run this optimizer: {reason}. "
                         f"impl='auto' picks one that can; here: "
                         f"{', '.join(repr(n) for n in usable)}")
    return requested


def create(name: str, device: torch.device, explicit: bool = False):
    """A backend object. ``explicit``: the user named it (``impl=name``), so where the CPU
    backend would leave a tensor whose layout its kernels cannot walk to the reference, it
    refuses (``backends/flat.py``)."""
    if explicit and name == TorchFusedBackend.name:
        return TorchFusedBackend(device, explicit=True)
    return BACKENDS[name](device)
