"""Checkpoints: torch's ``state_dict`` layout, both ways, checked before anything changes.

A mixin of ``ScheduledOptimizer`` (``base.py``), which it expects to provide ``schedule``,
``_t``, ``_check_group``, ``group_keys`` and the master-weight helpers.

The schedule counter ``t`` travels in two places:
  * the ``"fused_lrs"`` entry (schedules and ``t``), which only our own ``load_state_dict``
    reads: torch.distributed.checkpoint (``get_optimizer_state_dict``) and
    ``ZeroRedundancyOptimizer`` keep nothing of a state_dict but ``state`` and
    ``param_groups``;
  * every parameter group, under ``"schedule_step"``, which those flows carry: DCP saves and
    loads group entries, and ZeRO copies each key of its local optimizer's live groups into its
    own groups after every step and back on ``load_state_dict``. So the live groups hold the
    counter tensor itself (linked whenever the schedules' table is packed, and after a load;
    ``state_dict`` saves a copy), and a step that finds another value
    there (ZeRO's load writes it there without calling our ``load_state_dict``) adopts it,
    with the states ZeRO put in place (``_sync_counter``).
A ``plateau(...)``'s counters and each group's scale travel beside the counter, in the groups
(``PLATEAU``, ``PLATEAU_SCALE``: the live state tensor and a view of the group's scale in the
table), and are adopted the same way. torch's optimizers keep unknown group entries as they
are, so a checkpoint still loads into ``torch.optim`` and back.

DCP's ``_init_optim_state`` calls ``step()`` with lr 0 on an optimizer without state, to create
it. Our step would still advance the schedule (and a schedule with an absolute floor, e.g.
``eta_min``, would still move the weights at base lr 0), so that call only creates the state
(``initializing_for_dcp``).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from fused_lrs.schedules import Schedule, parse

#: The parameter-group entry that carries the schedule counter (see above).
COUNTER = "schedule_step"
#: With a ``plateau(...)`` in the schedule, its counters ([best, bad epochs, cooldown, reports],
#: shared by the groups) and each group's scale travel in the groups the same way.
PLATEAU, PLATEAU_SCALE = "plateau_state", "plateau_scale"


def _allow_schedules_in_torch_load() -> None:
    """Let ``torch.load`` (``weights_only=True``, torch's default since 2.6) read schedule
    specs. ``ZeroRedundancyOptimizer`` builds its param_groups from its keyword arguments, so
    a ZeRO checkpoint of ours holds ``schedule=`` itself, and torch refuses any class it was not
    told about. A spec is plain data (numbers, tuples, other specs): unpickling one runs no code
    of the checkpoint's choosing."""
    classes, todo = set(), [Schedule]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in classes:
                classes.add(sub)
                todo.append(sub)
    torch.serialization.add_safe_globals(sorted(classes, key=lambda c: c.__qualname__))


_allow_schedules_in_torch_load()


def _repr_or_none(spec) -> str | None:
    return None if spec is None else repr(spec)


def initializing_for_dcp() -> bool:
    """Whether ``step()`` was called by torch.distributed.checkpoint's ``_init_optim_state``
    (which creates a fresh optimizer's state by stepping it with lr 0 and zero gradients).
    Read from the call stack: step's caller is at most three frames up (torch's profiling
    wrapper and ``no_grad``'s). Called only while the optimizer has no state."""
    frame = sys._getframe(1)
    for _ in range(6):
        if frame is None:
            return False
        if frame.f_code.co_name == "_init_optim_state" and frame.f_globals.get(
                "__name__", "").startswith("torch.distributed.checkpoint"):
            return True
        frame = frame.f_back
    return False


def _check_plateau_entry(where: str, key: str, value) -> None:
    """A plateau value carried by a group: the state's 4 numbers or the group's scale."""
    numel = 4 if key == PLATEAU else 1
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()
            and value.numel() == numel):
        raise ValueError(f"{where}: {key!r} must be a float tensor of {numel} value(s), got "
                         f"{value!r}")


def _count(value) -> int:
    """A saved schedule counter as an int (reads a tensor back: loading may synchronise)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            raise TypeError(f"expected an integer count, got a {value.dtype} tensor of "
                            f"shape {tuple(value.shape)}")
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer count, got {value!r}")
    return value


class Checkpoints:
    """state_dict / load_state_dict for the scheduled optimizers."""

    def state_dict(self) -> dict[str, Any]:
        """torch's layout (``state`` and ``param_groups``, loadable by the matching torch
        optimizer) plus a ``"fused_lrs"`` entry: the schedules and their counter."""
        self._sync_counter()
        sd = super().state_dict()
        scales = None if self._plateau is None else self._plateau_scales(self._table)
        for g, group in enumerate(sd["param_groups"]):   # a snapshot, where DCP and ZeRO keep it
            group[COUNTER] = self._t.clone()
            if scales is not None:
                group[PLATEAU], group[PLATEAU_SCALE] = self._plateau.clone(), scales[g].clone()
        sd["fused_lrs"] = {"schedule": repr(self.schedule), "t": self._t.clone(),
                           "momentum_schedule": _repr_or_none(self._momentum_schedule),
                           "weight_decay_schedule": _repr_or_none(self._weight_decay_schedule)}
        if self._plateau is not None:   # ReduceLROnPlateau's counters, and each group's scale
            sd["fused_lrs"]["plateau"] = {"state": self._plateau.clone(),
                                          "scales": self._plateau_scales(self._table).clone()}
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
        plateau = self._check_plateau(extra, schedules)
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
            if plateau is not None:
                self._plateau.copy_(plateau["state"])
                self._plateau_scales(self._table).copy_(plateau["scales"])
        if plateau is None:      # DCP: no "fused_lrs" entry, the plateau is in the groups
            self._adopt_plateau_from_groups()
        if t is not None:
            self._t.fill_(t)
        self._link_counter()
        self._invalidate()

    def _link_counter(self) -> None:
        """Every live group holds the counter tensor itself (``COUNTER``) and, with a plateau,
        its state tensor and a view of its own scale in the table."""
        plateau = self.__dict__.get("_plateau")
        views = (list(self._plateau_scales(self._table).unbind()) if plateau is not None
                 else None)
        self._scale_views = views
        for g, group in enumerate(self.param_groups):
            group[COUNTER] = self._t
            if views is None:
                group.pop(PLATEAU, None)
                group.pop(PLATEAU_SCALE, None)
            else:
                group[PLATEAU], group[PLATEAU_SCALE] = plateau, views[g]

    def _plateau_linked(self) -> bool:
        views = self.__dict__.get("_scale_views")
        if views is None:
            return True
        return all(group.get(PLATEAU) is self._plateau and group.get(PLATEAU_SCALE) is v
                   for group, v in zip(self.param_groups, views))

    def _adopt_plateau_from_groups(self) -> None:
        """Take plateau values that arrived in the groups (a DCP or ZeRO load) into the live
        state and table. Reads nothing back: copies on the device."""
        if self.__dict__.get("_plateau") is None:
            return
        name = type(self).__name__
        scales = self._plateau_scales(self._table)
        views = self.__dict__.get("_scale_views") or [None] * len(self.param_groups)
        for g, (group, view) in enumerate(zip(self.param_groups, views)):
            state, scale = group.get(PLATEAU), group.get(PLATEAU_SCALE)
            if state is not None and state is not self._plateau:
                _check_plateau_entry(f"{name}: group {g}", PLATEAU, state)
                self._plateau.copy_(state.reshape(4))
            if scale is not None and scale is not view:
                _check_plateau_entry(f"{name}: group {g}", PLATEAU_SCALE, scale)
                scales[g].copy_(scale.reshape(()))

    def _sync_counter(self) -> None:
        """Adopt a counter that arrived in the groups without ``load_state_dict``, with the
        state that came with it: ``ZeroRedundancyOptimizer.load_state_dict`` puts the
        checkpoint's states into ``optim.state`` and its group entries into
        ``optim.param_groups`` directly. O(groups) identity tests: called every step."""
        t = self._t
        if all(group.get(COUNTER) is t for group in self.param_groups) and self._plateau_linked():
            return
        self._adopt_plateau_from_groups()
        loaded = [v for g in self.param_groups
                  if (v := g.get(COUNTER)) is not None and v is not t]
        if loaded:
            try:
                count = _count(loaded[0])
            except TypeError as e:
                raise ValueError(f"{type(self).__name__}: parameter group entry {COUNTER!r}: "
                                 f"{e}") from None
            if count < 0:
                raise ValueError(f"{type(self).__name__}: a negative schedule counter "
                                 f"({count}) in the parameter groups")
            t.fill_(count)
            for p, state in self.state.items():
                self._adopt_state(p, state)
        self._link_counter()
        self._invalidate()

    def _check_plateau(self, extra, schedules) -> dict | None:
        """The checkpoint's plateau state (``schedules/plateau.py``), checked, or None."""
        entry = extra.get("plateau") if isinstance(extra, dict) else None
        if entry is None:
            return None
        name = type(self).__name__
        if schedules is None or schedules[0].state_row is None:
            raise ValueError(f"{name}: the checkpoint has plateau state but its schedule holds "
                             "no plateau(...)")
        shapes = {"state": (4,), "scales": (len(self.param_groups),)}
        for key, shape in shapes.items():
            value = entry.get(key) if isinstance(entry, dict) else None
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()
                    and tuple(value.shape) == shape):
                raise ValueError(f"{name}: the checkpoint's plateau {key!r} must be a float "
                                 f"tensor of shape {shape}, got {value!r}")
        return entry

    def _adopt_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        """Bring loaded state into this class's form: steps as float32 device tensors; with
        master weights, fp32 states and a master (from the parameter, when the checkpoint has
        none, e.g. one saved by torch)."""
        if "step" in state:
            # A copy: a checkpoint taken from a live optimizer holds its step tensors, which a
            # backend may re-point (torch_fused's one-buffer counts); never share them.
            state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(
                p.device, copy=True)
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
        t = None
        for i, saved in enumerate(saved_groups):
            if saved.get(COUNTER) is not None:
                try:
                    t = _count(saved[COUNTER])
                except TypeError as e:
                    raise ValueError(f"{name}: group {i} of the checkpoint: {COUNTER!r}: {e}"
                                     ) from None
                if t < 0:
                    raise ValueError(f"{name}: the checkpoint's schedule counter is negative "
                                     f"({t})")
                break
        for i, saved in enumerate(saved_groups):        # a plateau's, carried by the groups
            for key in (PLATEAU, PLATEAU_SCALE):
                if saved.get(key) is not None:
                    _check_plateau_entry(f"{name}: group {i} of the checkpoint", key, saved[key])
        if extra is None:
            return None, t
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
        # What the schedule setter would refuse (per-group values for another group count, a
        # plateau outside the lr schedule), refused here, before anything is loaded.
        self._check_schedules(schedules)
        return schedules, t
