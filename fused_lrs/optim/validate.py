"""What a step needs of its tensors, checked before anything is written: one place per concern.

  * a group's parameters (floating point, dense, distinct, one device): ``params``, when the
    group is added;
  * a group's hyperparameters: its algorithm record's ``check_group`` (the peer's messages);
  * each tensor of a step: ``tensor``: what every backend needs (a dense gradient of the
    parameter's dtype; states of the dtype the update stores in), then what the chosen backend
    needs (its ``requirements``: the kernel's dtypes and layouts). The optimizer calls it when
    it describes a new step (before creating any state); a backend handed a new description by
    the compiled step's custom op calls it too, before its first write;
  * DTensor placements: ``dtensor.check``.
"""

from __future__ import annotations

import torch


def params(name: str, params: list[torch.Tensor], device: torch.device | None
           ) -> torch.device | None:
    """Check a new group's parameters; return the optimizer's device with them."""
    if len(params) != len({id(p) for p in params}):
        raise ValueError(f"{name}: a parameter group lists the same parameter twice")
    for p in params:
        if p.is_complex():
            raise ValueError(f"{name}: complex parameters are not supported; optimize "
                             "torch.view_as_real(p) as a real parameter instead")
        if not p.is_floating_point():
            raise ValueError(f"{name}: parameters must be floating point, got {p.dtype}")
        if p.is_sparse:
            raise ValueError(f"{name}: sparse parameters are not supported")
    device = device or (params[0].device if params else None)
    others = {p.device for p in params} - {device}
    if others:
        raise ValueError(f"{name}: all parameters must be on one device (one launch per "
                         f"step), got {device} and {others.pop()}; use one optimizer per "
                         "device")
    return device


def gradient(name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
    """torch itself guarantees a gradient's shape; its dtype may differ when the parameter's
    ``grad_dtype`` allows it, and it may be sparse."""
    if grad.is_sparse:
        raise RuntimeError(f"{name} does not support sparse gradients")
    if grad.dtype != p.dtype:
        raise RuntimeError(f"{name}: a gradient of dtype {grad.dtype} does not match its "
                           f"parameter's {p.dtype}")


def tensor(name: str, backend, p: torch.Tensor, grad: torch.Tensor, states: list,
           fp32_states: bool) -> None:
    """Everything one parameter's step needs of its tensors (local tensors: a DTensor's
    shards). ``states``: its state tensors and master copy, those that exist; ``fp32_states``:
    it has (or is to get) an fp32 master copy, so its states are fp32 too."""
    gradient(name, p, grad)
    want = torch.float32 if fp32_states else p.dtype
    for x in states:
        if x.dtype != want:
            raise TypeError(f"{name}: a {p.dtype} parameter has optimizer state of dtype "
                            f"{x.dtype}; was the model cast after the optimizer was built? "
                            "Build the optimizer after casting (or load a checkpoint into a "
                            "new one)")
    backend.requirements(p, grad, states)
