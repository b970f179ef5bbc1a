"""What the range test changes, saved before the sweep and put back after it, bitwise, however
the sweep ends (an exception from ``loss_fn``, a KeyboardInterrupt).

  * the model's parameters and buffers (BatchNorm's running statistics and counts), copied
    back into the same tensors, so the optimizer, hooks and compiled graphs that hold them
    keep working;
  * the gradients: each parameter's ``.grad`` object (or None), with its values;
  * the optimizer, through its own checkpoint: ``load_state_dict`` of a cloned
    ``state_dict()`` restores every state tensor and step count, the groups' hyperparameters,
    the schedule, its counter and a plateau's state, for any algorithm. The state tensors the
    optimizer held before are then refilled with those values and put back in their place, so
    the optimizer keeps the same tensor objects (static addresses under torch.compile and CUDA
    graphs stay valid);
  * GradScaler's ``grad_scale`` / ``found_inf`` attributes on the optimizer, which the sweep sets;
  * the CPU and CUDA random number generators (dropout in the sweep draws from them).

Memory: one copy of the parameters, buffers, gradients and optimizer state, on their device.
"""

from __future__ import annotations

import torch

_MISSING = object()
_AMP_ATTRS = ("grad_scale", "found_inf")


def _clone(value):
    """A deep copy whose tensors are detached clones (a checkpoint holds the live tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


class Snapshot:
    """The state of ``model`` and ``optimizer`` now; ``restore()`` puts it back."""

    @torch.no_grad()
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.params = [(p, p.detach().clone()) for p in model.parameters()]
        opt_params = [p for g in optimizer.param_groups for p in g["params"]]
        known = {id(p) for p, _ in self.params}
        self.params += [(p, p.detach().clone()) for p in opt_params if id(p) not in known]
        self.grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone())
                      for p, _ in self.params]
        # (module, name, the tensor object, its values): a module may rebind a buffer.
        self.buffers = [(m, name, b, b.detach().clone())
                        for m in model.modules() for name, b in m.named_buffers(recurse=False)
                        if b is not None]
        self.optim = _clone(optimizer.state_dict())
        self.live_state = {p: dict(s) for p, s in optimizer.state.items()}
        self.amp = {a: optimizer.__dict__.get(a, _MISSING) for a in _AMP_ATTRS}
        self.cpu_rng = torch.get_rng_state()
        devices = {p.device for p, _ in self.params if p.device.type == "cuda"}
        self.cuda_rng = {d: torch.cuda.get_rng_state(d) for d in devices}

    @torch.no_grad()
    def restore(self) -> None:
        """Put everything back. Reads nothing from the device but what the optimizer's
        ``load_state_dict`` reads (its checks read the saved schedule counter)."""
        for attr, value in self.amp.items():
            self.optimizer.__dict__.pop(attr, None)
            if value is not _MISSING:
                setattr(self.optimizer, attr, value)
        for p, saved in self.params:
            p.copy_(saved)
        for p, grad, saved in self.grads:
            if grad is not None:
                grad.copy_(saved)
            p.grad = grad
        for module, name, tensor, saved in self.buffers:
            tensor.copy_(saved)
            setattr(module, name, tensor)
        self.optimizer.load_state_dict(self.optim)
        self._reseat_state()
        torch.set_rng_state(self.cpu_rng)
        for device, state in self.cuda_rng.items():
            torch.cuda.set_rng_state(state, device)

    def _reseat_state(self) -> None:
        """Refill the state tensors the optimizer held before the sweep with the loaded values
        and put them back in place of the loaded copies."""
        for p, state in self.optimizer.state.items():
            before = self.live_state.get(p, {})
            for key, loaded in state.items():
                old = before.get(key)
                if (isinstance(old, torch.Tensor) and isinstance(loaded, torch.Tensor)
                        and old.shape == loaded.shape and old.dtype == loaded.dtype
                        and old.device == loaded.device):
                    old.copy_(loaded)
                    state[key] = old
