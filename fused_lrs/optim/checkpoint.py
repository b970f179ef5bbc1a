"""Checkpoints: torch's ``state_dict`` layout, both ways, checked before anything changes.

Functions over a fused optimizer (``base.py``) and its ``ScheduleState``
(``schedule_state.py``); the optimizer's ``state_dict`` and ``load_state_dict`` call them.

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
table), and are adopted the same way. Every reader of the counter or the plateau
(``schedule_step``, ``last_lr``, ``report``, ``state_dict``, the step) adopts first, so a value
ZeRO loaded reads right away. torch's optimizers keep unknown group entries as they
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

from fused_lrs.optim.schedule_state import check_specs
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
    Read from the call stack: the caller of ``step`` is at most five frames up (the
    optimizer's ``_eager_step``, ``_step`` and ``step``, torch's profiling wrapper and
    ``no_grad``'s). Called only while the optimizer has no state."""
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


def state_dict(opt) -> dict[str, Any]:
    """torch's layout (``state`` and ``param_groups``, loadable by the peer optimizer) plus a
    ``"fused_lrs"`` entry: the schedules and their counter."""
    sync(opt)
    state = opt._schedule_state
    sd = torch.optim.Optimizer.state_dict(opt)
    scales = None if state.plateau is None else state.scales()
    for g, group in enumerate(sd["param_groups"]):   # a snapshot, where DCP and ZeRO keep it
        group[COUNTER] = state.t.clone()
        if scales is not None:
            group[PLATEAU], group[PLATEAU_SCALE] = state.plateau.clone(), scales[g].clone()
    specs = state.specs
    sd["fused_lrs"] = {"schedule": repr(specs[0]), "t": state.t.clone(),
                       "momentum_schedule": _repr_or_none(specs[1]),
                       "weight_decay_schedule": _repr_or_none(specs[2])}
    if scales is not None:          # ReduceLROnPlateau's counters, and each group's scale
        sd["fused_lrs"]["plateau"] = {"state": state.plateau.clone(), "scales": scales.clone()}
    return sd


def load_state_dict(opt, state_dict: dict[str, Any]) -> None:
    """Load a checkpoint saved here or by the peer optimizer. Everything is checked first; a
    bad checkpoint raises and leaves the optimizer unchanged.

    From torch: a group's ``initial_lr`` (left by a torch scheduler) becomes its base lr; take
    over the scheduler's position with ``set_schedule(from_torch(s), torch_position(s))``."""
    state_dict = dict(state_dict)
    extra = state_dict.pop("fused_lrs", None)
    specs, t = _check_checkpoint(opt, state_dict, extra)
    plateau = _check_plateau(opt, extra, specs)
    # torch's load casts every state tensor but "step" to its parameter's dtype; fp32 masters
    # and states of 16-bit parameters, and every scalar state (a bf16 mu_product would keep 8
    # bits), are taken back from the checkpoint untouched (adopt_state makes them float32).
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    ours = [p for g in opt.param_groups for p in g["params"]]
    scalar_keys = opt.algorithm.scalar_keys
    kept = {p: {k: v for k, v in state_dict["state"].get(i, {}).items()
                if k in scalar_keys or opt._wants_master(p) and isinstance(v, torch.Tensor)
                and v.dtype == torch.float32 and k != "step"}
            for i, p in zip(saved_ids, ours)}
    torch.optim.Optimizer.load_state_dict(opt, state_dict)
    for p, values in kept.items():
        if values:                     # (a lookup would give a parameter without state {})
            opt.state[p].update({k: v.to(p.device, copy=True) if isinstance(v, torch.Tensor)
                                 else v for k, v in values.items()})
    for group in opt.param_groups:
        if "initial_lr" in group:
            group["lr"] = group.pop("initial_lr")
    for p, state in opt.state.items():
        adopt_state(opt, p, state)
    schedule_state = opt._schedule_state
    if specs is not None:
        opt._replace_schedules(specs)
        if plateau is not None:
            schedule_state.plateau.copy_(plateau["state"])
            schedule_state.scales().copy_(plateau["scales"])
    if plateau is None:      # DCP: no "fused_lrs" entry, the plateau is in the groups
        _adopt_plateau_from_groups(opt)
    if t is not None:
        schedule_state.t.fill_(t)
    link(opt)
    opt._invalidate()


def link(opt) -> None:
    """Every live group holds the counter tensor itself (``COUNTER``) and, with a plateau, its
    state tensor and a view of its own scale in the table."""
    state = opt._schedule_state
    views = state.scale_views
    for g, group in enumerate(opt.param_groups):
        group[COUNTER] = state.t
        if views is None:
            group.pop(PLATEAU, None)
            group.pop(PLATEAU_SCALE, None)
        else:
            group[PLATEAU], group[PLATEAU_SCALE] = state.plateau, views[g]


def _linked(opt) -> bool:
    state = opt._schedule_state
    t, views = state.t, state.scale_views
    if views is None:
        return all(group.get(COUNTER) is t for group in opt.param_groups)
    return all(group.get(COUNTER) is t and group.get(PLATEAU) is state.plateau
               and group.get(PLATEAU_SCALE) is v for group, v in zip(opt.param_groups, views))


def _adopt_plateau_from_groups(opt) -> None:
    """Take plateau values that arrived in the groups (a DCP or ZeRO load) into the live state
    and table. Reads nothing back: copies on the device."""
    state = opt._schedule_state
    if state.plateau is None:
        return
    name = type(opt).__name__
    scales = state.scales()
    for g, (group, view) in enumerate(zip(opt.param_groups, state.scale_views)):
        plateau, scale = group.get(PLATEAU), group.get(PLATEAU_SCALE)
        if plateau is not None and plateau is not state.plateau:
            _check_plateau_entry(f"{name}: group {g}", PLATEAU, plateau)
            state.plateau.copy_(plateau.reshape(4))
        if scale is not None and scale is not view:
            _check_plateau_entry(f"{name}: group {g}", PLATEAU_SCALE, scale)
            scales[g].copy_(scale.reshape(()))


def sync(opt) -> None:
    """Adopt a counter (and plateau) that arrived in the groups without ``load_state_dict``,
    with the state that came with it: ``ZeroRedundancyOptimizer.load_state_dict`` puts the
    checkpoint's states into ``optim.state`` and its group entries into ``optim.param_groups``
    directly. O(groups) identity tests when nothing arrived: called by every reader."""
    if _linked(opt):
        return
    _adopt_plateau_from_groups(opt)
    t = opt._schedule_state.t
    loaded = [v for g in opt.param_groups if (v := g.get(COUNTER)) is not None and v is not t]
    if loaded:
        name = type(opt).__name__
        try:
            count = _count(loaded[0])
        except TypeError as e:
            raise ValueError(f"{name}: parameter group entry {COUNTER!r}: {e}") from None
        if count < 0:
            raise ValueError(f"{name}: a negative schedule counter ({count}) in the parameter "
                             "groups")
        t.fill_(count)
        for p, state in opt.state.items():
            adopt_state(opt, p, state)
    link(opt)
    opt._invalidate()


def _check_plateau(opt, extra, specs) -> dict | None:
    """The checkpoint's plateau state (``schedules/plateau.py``), checked, or None."""
    entry = extra.get("plateau") if isinstance(extra, dict) else None
    if entry is None:
        return None
    name = type(opt).__name__
    if specs is None or specs[0].state_row is None:
        raise ValueError(f"{name}: the checkpoint has plateau state but its schedule holds "
                         "no plateau(...)")
    shapes = {"state": (4,), "scales": (len(opt.param_groups),)}
    for key, shape in shapes.items():
        value = entry.get(key) if isinstance(entry, dict) else None
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()
                and tuple(value.shape) == shape):
            raise ValueError(f"{name}: the checkpoint's plateau {key!r} must be a float "
                             f"tensor of shape {shape}, got {value!r}")
    return entry


def adopt_state(opt, p: torch.Tensor, state: dict[str, Any]) -> None:
    """Bring loaded state into the optimizer's form: steps and scalar states as float32
    tensors on the parameter's device (a peer that saves no step, torch's SGD or lion_pytorch,
    made at least one update if it has state tensors; torch's load casts scalar states to the
    parameter's dtype, and its NAdam keeps ``mu_product`` on the CPU); slots the peer saved as
    None dropped; with master weights, fp32 states and a master (from the parameter, when the
    checkpoint has none, e.g. one saved by torch)."""
    for key in [k for k, v in state.items() if v is None]:
        del state[key]
    if "step" not in state:
        state["step"] = torch.tensor(float(any(isinstance(v, torch.Tensor)
                                               for v in state.values())))
    # A copy: a checkpoint taken from a live optimizer holds its step tensors, which a backend
    # may re-point (torch_fused's one-buffer counts); never share them.
    for key in ("step", *opt.algorithm.scalar_keys):
        if key in state:
            state[key] = torch.as_tensor(state[key], dtype=torch.float32).reshape(()).to(
                p.device, copy=True)
    if opt._wants_master(p):
        for k, v in state.items():
            if k != "step" and isinstance(v, torch.Tensor):
                state[k] = v.float()
        if "master" not in state:
            state["master"] = p.detach().float()


def _check_saved_group(opt, i: int, saved) -> None:
    """A saved group is one of this kind of optimizer, with valid hyperparameters."""
    name, algorithm = type(opt).__name__, opt.algorithm
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
        raise ValueError(f"{name}: group {i} of the checkpoint is not a parameter group (a "
                         "dict with a 'params' list)")
    missing = [k for k in algorithm.group_keys if k not in saved]
    if missing:
        raise ValueError(f"{name}: group {i} of the checkpoint has no {missing}: a "
                         f"checkpoint of another kind of optimizer? ({algorithm.name} groups "
                         f"hold {list(algorithm.group_keys)})")
    group = {**opt.defaults, **saved}
    if "initial_lr" in saved:
        group["lr"] = saved["initial_lr"]
    try:
        algorithm.check_group(group)
    except ValueError as e:
        raise ValueError(f"{name}: group {i} of the checkpoint: {e}") from None


def _check_checkpoint(opt, sd, extra):
    name = type(opt).__name__
    if not isinstance(sd.get("state"), dict) or not isinstance(sd.get("param_groups"), list):
        raise ValueError(f"{name}: not an optimizer state_dict (needs 'state' and "
                         "'param_groups')")
    saved_groups = sd["param_groups"]
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"{name}: the checkpoint has {len(saved_groups)} parameter groups, "
                         f"this optimizer has {len(opt.param_groups)}")
    for i, saved in enumerate(saved_groups):
        _check_saved_group(opt, i, saved)
    params = {}
    for i, (saved, group) in enumerate(zip(saved_groups, opt.param_groups)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(f"{name}: group {i} of the checkpoint has "
                             f"{len(saved['params'])} parameters, this optimizer's has "
                             f"{len(group['params'])}")
        params.update({k: (p, saved) for k, p in zip(saved["params"], group["params"])})
    counters = opt.algorithm.counters
    for key, state in sd["state"].items():
        if key not in params:
            raise ValueError(f"{name}: the checkpoint has state for parameter {key!r}, "
                             "which no group lists")
        p, saved = params[key]
        required, allowed = opt.algorithm.expected_state({**opt.defaults, **saved})
        keys = set(state)
        if not required <= keys or not keys <= allowed:
            raise ValueError(f"{name}: parameter {key} of the checkpoint has state "
                             f"{sorted(keys)}; this optimizer needs {sorted(required)} "
                             f"(and allows {sorted(allowed)}): a checkpoint of another "
                             "optimizer or option?")
        for k, v in state.items():
            if k in counters:
                if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                        or isinstance(v, torch.Tensor) and v.numel() == 1
                        and not v.is_complex()):
                    raise ValueError(f"{name}: parameter {key}: {k!r} must be a scalar, got "
                                     f"{v!r}")
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
        specs = (parse(extra["schedule"]),
                 *(parse(extra[k]) if extra.get(k) is not None else None
                   for k in ("momentum_schedule", "weight_decay_schedule")))
        t = _count(extra["t"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: the checkpoint's 'fused_lrs' entry is unreadable: {e}"
                         ) from None
    if t < 0:
        raise ValueError(f"{name}: the checkpoint's schedule counter is negative ({t})")
    # What the schedule setter would refuse (per-group values for another group count, a
    # plateau outside the lr schedule), refused here, before anything is loaded.
    return check_specs(name, specs, len(opt.param_groups)), t
