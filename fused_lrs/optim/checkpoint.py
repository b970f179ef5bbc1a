"""Checkpoints: torch's ``state_dict`` layout, both ways, checked before anything changes.

A mixin of ``ScheduledOptimizer`` (``base.py``), which it expects to provide ``schedule``,
``_t``, ``_check_group``, ``group_keys`` and the master-weight helpers.
"""

from __future__ import annotations

from typing import Any

import torch

from fused_lrs.schedules import parse


def _repr_or_none(spec) -> str | None:
    return None if spec is None else repr(spec)


class Checkpoints:
    """state_dict / load_state_dict for the scheduled optimizers."""

    def state_dict(self) -> dict[str, Any]:
        """torch's layout (``state`` and ``param_groups``, loadable by the matching torch
        optimizer) plus a ``"fused_lrs"`` entry: the schedules and their counter."""
        sd = super().state_dict()
        sd["fused_lrs"] = {"schedule": repr(self.schedule), "t": self._t.clone(),
                           "momentum_schedule": _repr_or_none(self._momentum_schedule),
                           "weight_decay_schedule": _repr_or_none(self._weight_decay_schedule)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint saved here or by the matching torch optimizer. Everything is
        checked first; a bad checkpoint raises and leaves this optimizer unchanged.

        From torch: a group's ``initial_lr`` (left by a torch scheduler) becomes its base lr;
        take over the scheduler's position with ``set_schedule(from_torch(s), torch_position(s))``.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("fused_lrs", None)
        schedules, t = self._check_checkpoint(state_dict, extra)
        # torch's load casts every state tensor to its parameter's dtype; fp32 masters and
        # states of 16-bit parameters are taken back from the checkpoint untouched.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        ours = [p for g in self.param_groups for p in g["params"]]
        fp32 = {p: {k: v for k, v in state_dict["state"].get(i, {}).items()
                    if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and k != "step"}
                for i, p in zip(saved_ids, ours) if self._wants_master(p)}
        super().load_state_dict(state_dict)
        for p, values in fp32.items():
            self.state[p].update({k: v.to(p.device, copy=True) for k, v in values.items()})
        for group in self.param_groups:
            if "initial_lr" in group:
                group["lr"] = group.pop("initial_lr")
        for p, state in self.state.items():
            self._adopt_state(p, state)
        if schedules is not None:
            self._momentum_schedule, self._weight_decay_schedule = schedules[1:]
            self.schedule = schedules[0]
            self._t.fill_(t)
        self._invalidate()

    def _adopt_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        """Bring loaded state into this class's form: steps as float32 device tensors; with
        master weights, fp32 states and a master (from the parameter, when the checkpoint has
        none, e.g. one saved by torch)."""
        if "step" in state:
            state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device)
        if self._wants_master(p):
            for k, v in state.items():
                if k != "step" and isinstance(v, torch.Tensor):
                    state[k] = v.float()
            if state and "master" not in state:
                state["master"] = p.detach().float()

    def _expected_state(self, group: dict[str, Any]) -> tuple[set[str], set[str]]:
        """(required, allowed) state keys for a parameter of a saved group."""
        raise NotImplementedError

    def _check_saved_group(self, i: int, saved) -> None:
        """A saved group is one of this kind of optimizer, with valid hyperparameters."""
        name = type(self).__name__
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise ValueError(f"{name}: group {i} of the checkpoint is not a parameter group (a "
                             "dict with a 'params' list)")
        missing = [k for k in self.group_keys if k not in saved]
        if missing:
            raise ValueError(f"{name}: group {i} of the checkpoint has no {missing}: a "
                             f"checkpoint of another kind of optimizer? ({self.algorithm} groups "
                             f"hold {list(self.group_keys)})")
        group = {**self.defaults, **saved}
        if "initial_lr" in saved:
            group["lr"] = saved["initial_lr"]
        try:
            self._check_group(group)
        except ValueError as e:
            raise ValueError(f"{name}: group {i} of the checkpoint: {e}") from None

    def _check_checkpoint(self, sd, extra):
        name = type(self).__name__
        if not isinstance(sd.get("state"), dict) or not isinstance(sd.get("param_groups"), list):
            raise ValueError(f"{name}: not an optimizer state_dict (needs 'state' and "
                             "'param_groups')")
        saved_groups = sd["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}: the checkpoint has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for i, saved in enumerate(saved_groups):
            self._check_saved_group(i, saved)
        params = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}: group {i} of the checkpoint has "
                                 f"{len(saved['params'])} parameters, this optimizer's has "
                                 f"{len(group['params'])}")
            params.update({k: (p, saved) for k, p in zip(saved["params"], group["params"])})
        for key, state in sd["state"].items():
            if key not in params:
                raise ValueError(f"{name}: the checkpoint has state for parameter {key!r}, "
                                 "which no group lists")
            p, saved = params[key]
            required, allowed = self._expected_state(saved)
            keys = set(state)
            if not required <= keys or not keys <= allowed:
                raise ValueError(f"{name}: parameter {key} of the checkpoint has state "
                                 f"{sorted(keys)}; this optimizer needs {sorted(required)} "
                                 f"(and allows {sorted(allowed)}): a checkpoint of another "
                                 "optimizer or option?")
            for k, v in state.items():
                if k == "step":
                    if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                            or isinstance(v, torch.Tensor) and v.numel() == 1):
                        raise ValueError(f"{name}: parameter {key}: 'step' must be a scalar "
                                         f"count, got {v!r}")
                elif v is not None or k in required:
                    if not isinstance(v, torch.Tensor):
                        raise ValueError(f"{name}: parameter {key}: state {k!r} is "
                                         f"{type(v).__name__}, expected a tensor")
                    if v.shape != p.shape:
                        raise ValueError(f"{name}: parameter {key}: state {k!r} has shape "
                                         f"{tuple(v.shape)}, the parameter has "
                                         f"{tuple(p.shape)}")
                    if not v.is_floating_point():
                        raise ValueError(f"{name}: parameter {key}: state {k!r} has dtype "
                                         f"{v.dtype}, expected floating point")
        if extra is None:
            return None, None
        if not isinstance(extra, dict):
            raise ValueError(f"{name}: the checkpoint's 'fused_lrs' entry is unreadable: "
                             f"expected a dict, got {type(extra).__name__}")
        try:
            schedules = (parse(extra["schedule"]),
                         *(parse(extra[k]) if extra.get(k) is not None else None
                           for k in ("momentum_schedule", "weight_decay_schedule")))
            t = int(extra["t"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{name}: the checkpoint's 'fused_lrs' entry is unreadable: {e}"
                             ) from None
        if t < 0:
            raise ValueError(f"{name}: the checkpoint's schedule counter is negative ({t})")
        return schedules, t
