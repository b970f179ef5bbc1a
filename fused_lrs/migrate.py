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
  * a ``group["lr"]`` written by hand (not the schedule's value at the position) is continued
    where torch's scheduler multiplies ``group["lr"]`` by a factor of its step count alone
    (``_multiplies``): the base lr is then ``group["lr"] / s(t)``, so that the fused lrs are
    ``group["lr"] * s(k) / s(t)``, torch's product of its factors; anywhere else it raises;
  * the position ``t`` is the optimizer steps done: ``last_epoch * every``, plus, with
    ``every > 1``, the steps into the current epoch that the state's largest ``"step"`` count
    (or ``steps=``) gives;
  * with a cycled momentum, the group's momentum-like coefficient (``betas[0]`` where the group
    has betas, else ``momentum``, as torch's schedulers choose) is the scheduler's
    ``max_momentum`` (its value at step 0; ``one_cycle_momentum`` and ``cyclic_momentum`` set
    absolute values, so it is only what ``param_groups`` shows), not the current value;
  * the keys a torch scheduler adds to the groups (``initial_lr``, ``max_lr``, ...) are left out.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
from torch.optim import lr_scheduler as lrs

from fused_lrs import algorithms
from fused_lrs.schedules.base import check_int
from fused_lrs.schedules.convert import FACTORS, take_over, torch_position

# What torch's schedulers write into the param groups.
_SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def from_torch(optimizer, scheduler=None, *, every: int = 1, steps: int | None = None,
               **options):
    """The fused optimizer that continues ``optimizer`` (an instance of exactly a class that a
    fused optimizer mirrors, ``fused_lrs.algorithms.OPTIMIZERS``) and ``scheduler`` (any built-in
    torch scheduler, ``schedules.from_torch`` lists them).

    ``every=n``: the scheduler is stepped once per ``n`` optimizer steps (``from_torch`` of
    ``fused_lrs.schedules``). Taken over mid-epoch, the steps already done in the epoch come
    from the optimizer state's ``"step"`` counts (the largest), which must lie in the
    scheduler's epoch (``steps // n == last_epoch``, else ValueError); an optimizer without
    them (SGD, Lion) is taken at the epoch's start unless ``steps=`` gives the optimizer steps
    done since the scheduler was built. ``options`` go to the fused class (``impl=``,
    ``master_weights=``, ...). The state is copied: the torch pair is left as it was and may be
    dropped. Without a scheduler the schedule is constant at each group's current lr.

    A ``group["lr"]`` written by hand is continued as torch's scheduler continues it where that
    scheduler multiplies the lr by a factor each step (StepLR, MultiStepLR, ExponentialLR,
    ConstantLR, LinearLR, PolynomialLR, a ChainedScheduler of them, a SequentialLR past its last
    milestone into one); under any other scheduler it raises ValueError, changing nothing.
    """
    check_int("from_torch", "every", every, 1)
    if steps is not None:
        check_int("from_torch", "steps", steps, 0)
        if scheduler is None:
            raise ValueError("from_torch: steps= places a scheduler in its run, and no "
                             "scheduler was given")
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
        position = _position(optimizer, scheduler, every, steps, cls.algorithm.saves_step)
        bases = _base_lrs(optimizer, scheduler, converted, position)
    elif any("initial_lr" in g for g in optimizer.param_groups):
        warnings.warn("from_torch: the param groups carry initial_lr, so a torch scheduler is "
                      "attached, but none was given: the fused optimizer holds each group's "
                      "current lr constant; pass the scheduler to take over its schedule",
                      UserWarning, stacklevel=2)

    groups = [_group(g, converted, None if converted is None else bases[i])
              for i, g in enumerate(optimizer.param_groups)]
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
        fused.set_schedule(fused.schedule, position)
    if converted is not None and converted.plateau_state is not None:
        fused._schedule_state.plateau.copy_(torch.tensor(converted.plateau_state,
                                                         dtype=torch.float64))
    return fused


def _group(group: dict, converted, base) -> dict:
    """A fused param group from a torch one: the same entries, base lr and momentum in place
    of the scheduler's current values, the scheduler's own keys left out."""
    out = {k: v for k, v in group.items() if k not in _SCHEDULER_KEYS}
    if converted is None:
        return out
    out["lr"] = base
    if converted.momentum_schedule is not None:
        if "betas" in group:
            out["betas"] = (group["max_momentum"], *group["betas"][1:])
        else:
            out["momentum"] = group["max_momentum"]
    return out


def _position(optimizer, scheduler, every: int, steps: int | None, counted: bool) -> int:
    """Optimizer steps done at the scheduler's position (see ``from_torch``); ``counted``:
    whether the peer keeps a ``"step"`` count per parameter."""
    epoch = torch_position(scheduler)
    if isinstance(scheduler, lrs.ReduceLROnPlateau):
        # It moves with the metrics reported, not with the steps: the position sets no lr.
        return epoch * every if steps is None else steps
    source = "steps="
    if steps is None:
        # With every=1 each optimizer step ends an epoch: last_epoch is the position, also for
        # a scheduler built after the optimizer had stepped (whose counts run ahead).
        if every == 1:
            return epoch
        if not counted:
            warnings.warn(
                f"from_torch: {type(optimizer).__name__} keeps no step count, so the run is "
                f"taken at the start of the scheduler's epoch {epoch} (optimizer step "
                f"{epoch * every} of every={every}); taken over mid-epoch, pass steps= (the "
                "optimizer steps done since the scheduler was built)", UserWarning,
                stacklevel=3)
        counts = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
        if not counts:      # no state made (no step taken, or a checkpoint not loaded)
            return epoch * every
        steps, source = int(max(counts)), "the optimizer state's largest 'step' count"
    if steps // every != epoch:
        raise ValueError(
            f"from_torch: {source} is {steps} optimizer steps, but the scheduler has taken "
            f"{epoch} steps of every={every}, which places it at optimizer steps "
            f"{epoch * every} to {epoch * every + every - 1}; pass steps= (the optimizer "
            "steps done since the scheduler was built)")
    return steps


def _multiplies(s) -> bool:
    """Whether each step of ``s`` from its position on multiplies ``group["lr"]`` by a factor
    of its step count alone, whatever the lr: then an lr written by hand continues as
    ``lr * s(k) / s(t)``. A SequentialLR restarts its next member from ``initial_lr`` at a
    milestone, so only past its last one; CosineAnnealingLR's steps are affine in the lr (and
    past T_max add a step of its base lr); CyclicLR, OneCycleLR and
    CosineAnnealingWarmRestarts set the lr from their bases."""
    kind = type(s)
    if kind is lrs.ChainedScheduler:
        return all(map(_multiplies, s._schedulers))
    if kind is lrs.SequentialLR:
        return s.last_epoch >= max(s._milestones, default=0) and _multiplies(s._schedulers[-1])
    return kind in FACTORS


def _base_lrs(optimizer, scheduler, converted, t: int) -> list:
    """Each group's base lr: ``initial_lr`` where ``group["lr"]`` is the schedule's value at
    ``t``, else the base that gives ``group["lr"]`` there (``_multiplies``)."""
    if converted.base_lrs is not None:      # ReduceLROnPlateau: the current lrs
        return converted.base_lrs
    spec, multiplies = converted.schedule, _multiplies(scheduler)
    last = scheduler.get_last_lr()
    bases = []
    for i, group in enumerate(optimizer.param_groups):
        base, found = group["initial_lr"], float(group["lr"])
        own = spec if spec.groups is None else spec.for_group(i)
        expected = float(own.lr(t, base))
        if multiplies:
            # Rescaling is exact either way; 1e-12 only keeps initial_lr where torch's product
            # of factors rounded differently from the closed form.
            if math.isclose(found, expected, rel_tol=1e-12, abs_tol=1e-12 * abs(float(base))):
                bases.append(base)
                continue
            factor = float(own.lr(t, 1.0))
            if factor != 0.0:
                bases.append(found / factor)
                continue
        # An lr written since the last scheduler step (exactly what the scheduler kept), or
        # earlier and kept by a recursive schedule (CosineAnnealingLR). 1e-6 relative (and
        # 1e-12 of the base absolute, near 0) covers torch's recursion rounding against the
        # closed form (measured: 4e-13 at most, over 300 schedulers drawn from
        # test_from_torch.py's strategies, 400 steps each, and cosines of T_max 20000).
        elif math.isclose(found, float(last[i]), rel_tol=1e-12) and math.isclose(
                found, expected, rel_tol=1e-6, abs_tol=1e-12 * abs(float(base))):
            bases.append(base)
            continue
        raise ValueError(
            f"from_torch: param group {i} has lr {found}, but its {type(scheduler).__name__} "
            f"gives {expected} at this position (its last step set {float(last[i])}): an lr "
            "written by hand? It is continued only where the scheduler multiplies the lr by a "
            "factor of its step count (StepLR, MultiStepLR, ExponentialLR, ConstantLR, "
            "LinearLR, PolynomialLR, chains of them, a SequentialLR past its last milestone "
            "into one) and the schedule is not 0 there. Write the scheduler's lr back "
            f"(param_groups[{i}]['lr'] = {expected}) to continue its schedule, or convert "
            "without the scheduler and give the fused optimizer the schedule you mean "
            "(set_schedule)")
    return bases
