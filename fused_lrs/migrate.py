"""from_torch: a torch optimizer (and its scheduler) as the fused optimizer that continues its run.

``fused_lrs.from_torch(opt, sched)`` returns the fused optimizer whose record mirrors
``type(opt)`` (``fused_lrs.algorithms``) with the same parameters and groups, every
hyperparameter, a copy of the optimizer state, the lr schedule, the momentum schedule
(``cycle_momentum=True``) and the scheduler's position, so that stepping it gives what stepping
the torch pair would have.

Where each value goes:
  * a group's ``lr`` is its base lr, torch's ``initial_lr`` (what a torch scheduler scales),
    not the current ``group["lr"]``, which the torch scheduler overwrites each step; for a
    ReduceLROnPlateau, which keeps no base, it is the current ``group["lr"]``, and the plateau
    continues from scale 1 with torch's counters (``schedules.convert.take_over``);
  * with a cycled momentum, the group's momentum-like coefficient (``betas[0]`` where the group
    has betas, else ``momentum``, as torch's schedulers choose) is the scheduler's
    ``max_momentum`` (its value at step 0; ``one_cycle_momentum`` and ``cyclic_momentum`` set
    absolute values, so it is only what ``param_groups`` shows), not the current value;
  * the keys a torch scheduler adds to the groups (``initial_lr``, ``max_lr``, ...) are left out.
"""

from __future__ import annotations

import inspect
import warnings

import torch

from fused_lrs import algorithms
from fused_lrs.schedules.base import check_int
from fused_lrs.schedules.convert import take_over, torch_position

# What torch's schedulers write into the param groups.
_SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def from_torch(optimizer, scheduler=None, *, every: int = 1, **options):
    """The fused optimizer that continues ``optimizer`` (an instance of exactly a class that a
    fused optimizer mirrors, ``fused_lrs.algorithms.OPTIMIZERS``) and ``scheduler`` (any built-in
    torch scheduler, ``schedules.from_torch`` lists them).

    ``every=n``: the scheduler is stepped once per ``n`` optimizer steps (``from_torch`` of
    ``fused_lrs.schedules``). ``options`` go to the fused class (``impl=``,
    ``master_weights=``, ...). The state is copied: the torch pair is left as it was and may be
    dropped. Without a scheduler the schedule is constant at each group's current lr.
    """
    check_int("from_torch", "every", every, 1)
    # The exact type: a subclass may change the update, and then the copy would silently differ.
    cls = algorithms.for_peer(type(optimizer))
    if cls is None:
        kind = type(optimizer)
        supported = ", ".join(f"{c.algorithm.peer} as {c.__name__}"
                              for c in algorithms.OPTIMIZERS)
        raise TypeError(f"from_torch: cannot convert {kind.__module__}.{kind.__qualname__}; "
                        f"supported (exactly, not subclasses): {supported}")
    converted = None
    if scheduler is not None:
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError("from_torch: the scheduler is attached to another optimizer than "
                             "the one given")
        converted = take_over(scheduler, every)
    elif any("initial_lr" in g for g in optimizer.param_groups):
        warnings.warn("from_torch: the param groups carry initial_lr, so a torch scheduler is "
                      "attached, but none was given: the fused optimizer holds each group's "
                      "current lr constant; pass the scheduler to take over its schedule",
                      UserWarning, stacklevel=2)

    groups = [_group(g, converted, i) for i, g in enumerate(optimizer.param_groups)]
    # What the class takes: AdamW fixes decoupled_weight_decay, for one.
    accepted = inspect.signature(cls).parameters
    defaults = {k: v for k, v in cls.algorithm.peer_arguments(optimizer).items()
                if k in accepted}
    schedules = {} if converted is None else dict(
        schedule=converted.schedule, momentum_schedule=converted.momentum_schedule)
    fused = cls(groups, **defaults, **schedules, **options)

    # The state goes through load_state_dict (torch's layout, checked, adopted), as a copy.
    saved = optimizer.state_dict()
    state = {k: {name: v.clone() if isinstance(v, torch.Tensor) else v
                 for name, v in s.items()} for k, s in saved["state"].items()}
    ours = [{**{k: v for k, v in g.items() if k != "params"}, "params": s["params"]}
            for g, s in zip(fused.param_groups, saved["param_groups"])]
    fused.load_state_dict({"state": state, "param_groups": ours})
    if scheduler is not None:
        fused.set_schedule(fused.schedule, torch_position(scheduler, every))
    if converted is not None and converted.plateau_state is not None:
        fused._schedule_state.plateau.copy_(torch.tensor(converted.plateau_state,
                                                         dtype=torch.float64))
    return fused


def _group(group: dict, converted, i: int) -> dict:
    """A fused param group from a torch one: the same entries, base lr and momentum in place
    of the scheduler's current values, the scheduler's own keys left out."""
    out = {k: v for k, v in group.items() if k not in _SCHEDULER_KEYS}
    if converted is None:
        return out
    out["lr"] = (converted.base_lrs[i] if converted.base_lrs is not None
                 else group["initial_lr"])
    if converted.momentum_schedule is not None:
        if "betas" in group:
            out["betas"] = (group["max_momentum"], *group["betas"][1:])
        else:
            out["momentum"] = group["max_momentum"]
    return out
