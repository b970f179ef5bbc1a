"""from_torch: a ``torch.optim.lr_scheduler`` instance as the equivalent schedule spec.

A spec describes the whole run and is immutable; where a scheduler stands in that run is a
separate number, ``torch_position(scheduler)`` (steps completed). So a scheduler part-way through
its run converts to the same spec as a fresh one.

Relative schedules (all but CyclicLR and OneCycleLR, which set absolute lrs) are relative to each
group's ``initial_lr``, which is torch's ``base_lrs``. Values torch keeps per group (CyclicLR's
``base_lr``/``max_lr``, OneCycleLR's ``max_lr``, ReduceLROnPlateau's ``min_lr``) become per-group
values of the spec when they differ. A spec is the lr alone: the momentum that CyclicLR and
OneCycleLR cycle by default (``cycle_momentum=True``) is a second spec, for the optimizer's
``momentum_schedule=``, and a ReduceLROnPlateau's counters are state, not spec. ``from_torch``
warns when it leaves either behind; ``take_over`` (behind ``fused_lrs.from_torch(optimizer,
scheduler)``) converts them too.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

from torch.optim import lr_scheduler as lrs

from fused_lrs.schedules.base import Schedule, check_int
from fused_lrs.schedules.compose import chained, sequential
from fused_lrs.schedules.compose import every as every_n  # `every` is from_torch's argument
from fused_lrs.schedules.cosine import cosine, cosine_restarts
from fused_lrs.schedules.cyclic import cyclic, cyclic_momentum, one_cycle, one_cycle_momentum
from fused_lrs.schedules.decay import constant, exponential, linear, multistep, polynomial, step
from fused_lrs.schedules.plateau import Plateau, plateau


def from_torch(scheduler, every: int = 1) -> Schedule:
    """The spec of a built-in torch scheduler (SequentialLR and ChainedScheduler of them too).

    The result is the same wherever the scheduler is in its run; ``torch_position`` says
    where that is. A OneCycleLR or CyclicLR with ``cycle_momentum=True`` (torch's default) also
    moves the momentum, which a spec does not hold: that warns, pointing to
    ``fused_lrs.from_torch(optimizer, scheduler)``, which converts both. So does a
    ReduceLROnPlateau that has seen metrics, whose counters are state.

    Args:
        scheduler: a ``torch.optim.lr_scheduler`` instance of a built-in class (not a
            subclass); LambdaLR and MultiplicativeLR hold Python functions and raise.
        every: optimizer steps per scheduler step (>= 1): ``every=len(loader)`` for a
            scheduler stepped once per epoch; the spec is then ``every(spec, n)``.
    """
    check_int("from_torch", "every", every, 1)
    spec = _every(_convert(scheduler), every)
    if isinstance(scheduler, lrs.ReduceLROnPlateau) and scheduler.last_epoch > 0:
        warnings.warn(
            f"from_torch: this ReduceLROnPlateau has had {scheduler.last_epoch} metrics, and its "
            "counters (best, num_bad_epochs, cooldown) and lrs are state that the spec leaves "
            "out; fused_lrs.from_torch(optimizer, scheduler) carries them over",
            UserWarning, stacklevel=2)
    cycling = _cycling_momentum(scheduler)
    if cycling:
        warnings.warn(
            f"from_torch: {' and '.join(cycling)} cycles the momentum (cycle_momentum=True), "
            "which this lr spec leaves out; fused_lrs.from_torch(optimizer, scheduler) converts "
            "both (or pass momentum_schedule=one_cycle_momentum(...) / cyclic_momentum(...) "
            "yourself, or build the torch scheduler with cycle_momentum=False)",
            UserWarning, stacklevel=2)
    return spec


class Converted(NamedTuple):
    """What an optimizer needs to continue a torch scheduler's run: the lr spec, the momentum
    spec (None when the scheduler leaves the momentum alone), each group's base lr (None: its
    ``initial_lr``, torch's ``base_lrs``) and a plateau's state ``[best, num_bad_epochs,
    cooldown_counter, last_epoch]`` (``schedules/plateau.py``; None for other schedulers)."""
    schedule: Schedule
    momentum_schedule: Schedule | None
    base_lrs: list | None
    plateau_state: list | None = None


def take_over(scheduler, every: int = 1) -> Converted:
    """The lr spec, the momentum spec and the group base lrs that reproduce ``scheduler``.

    The momentum of a top-level OneCycleLR or CyclicLR with ``cycle_momentum=True`` becomes
    ``one_cycle_momentum`` / ``cyclic_momentum``. A ReduceLROnPlateau continues from each
    group's current lr (the base lr, at scale 1) with its counters."""
    check_int("from_torch", "every", every, 1)
    s = scheduler
    if isinstance(s, lrs.ReduceLROnPlateau):
        return Converted(_convert(s), None, [g["lr"] for g in s.optimizer.param_groups],
                         [float(s.best), float(s.num_bad_epochs), float(s.cooldown_counter),
                          float(s.last_epoch)])
    nested = [] if type(s) in (lrs.OneCycleLR, lrs.CyclicLR) else _cycling_momentum(s)
    if nested:
        raise ValueError(
            f"from_torch: {' and '.join(nested)} inside a {type(s).__name__} cycles the "
            "momentum; only a top-level OneCycleLR or CyclicLR's momentum is converted. Build "
            "that member with cycle_momentum=False, or give the fused optimizer "
            "momentum_schedule= yourself (one_cycle_momentum / cyclic_momentum in a sequential)")
    spec = _convert(s)
    momentum = None
    if getattr(s, "cycle_momentum", False):
        momentum = (_one_cycle_momentum(s) if type(s) is lrs.OneCycleLR
                    else _cyclic_momentum(s))
        momentum = every_n(momentum, every)
    return Converted(every_n(spec, every), momentum, None)


def _every(spec: Schedule, n: int) -> Schedule:
    # A plateau moves when a metric is reported, not with the step count: every does not apply.
    return spec if isinstance(spec, Plateau) else every_n(spec, n)


def _members(s) -> list:
    if isinstance(s, (lrs.SequentialLR, lrs.ChainedScheduler)):
        return [m for member in s._schedulers for m in _members(member)]
    return [s]


def _cycling_momentum(s) -> list[str]:
    """The names of the members of ``s`` that cycle the momentum."""
    return [type(m).__name__ for m in _members(s)
            if type(m) in (lrs.OneCycleLR, lrs.CyclicLR) and m.cycle_momentum]


def _per_group(values):
    """One number if every group has the same, else a tuple with one per group."""
    values = [float(v) for v in values]
    return values[0] if len(set(values)) == 1 else tuple(values)


def torch_position(scheduler, every: int = 1) -> int:
    """Optimizer steps completed at the scheduler's position: ``last_epoch * every`` (at an
    epoch boundary when ``every > 1``), the ``t`` to give ``opt.set_schedule(spec, t)``.

    Args:
        scheduler: a torch scheduler, as for ``from_torch``.
        every: optimizer steps per scheduler step (>= 1), as given to ``from_torch``.
    """
    check_int("torch_position", "every", every, 1)
    return _last_epoch(scheduler) * every


_LAMBDA_HELP = (
    "from_torch: {name} holds an arbitrary Python function, which cannot run inside a GPU "
    "kernel; build the schedule from the factories in fused_lrs.schedules instead, e.g. "
    "warmup(cosine(T_max=total - w), steps=w) for HF get_cosine_schedule_with_warmup, "
    "warmup(polynomial(total - w), steps=w) for get_linear_schedule_with_warmup, or "
    "wsd(...), inverse_sqrt(...), exponential(...), sequential(...), chained(...)")


def _convert(s) -> Schedule:
    kind = type(s)
    if isinstance(s, (lrs.LambdaLR, lrs.MultiplicativeLR)):
        raise TypeError(_LAMBDA_HELP.format(name=kind.__name__))
    if isinstance(s, lrs.ReduceLROnPlateau):
        return _plateau(s)
    # Exact types: a subclass may override get_lr, and then the spec would silently be wrong.
    convert = _CONVERTERS.get(kind)
    if convert is None:
        raise TypeError(f"from_torch: cannot convert {kind.__module__}.{kind.__qualname__}; "
                        "supported: " + ", ".join(t.__name__ for t in _CONVERTERS))
    if kind not in (lrs.CyclicLR, lrs.OneCycleLR) and hasattr(s, "base_lrs"):
        _check_relative(s)
    return convert(s)


def _check_relative(s) -> None:
    # The spec is evaluated on each group's initial_lr. A OneCycleLR built later on the same
    # optimizer rewrites initial_lr, and then this scheduler's own base lrs are elsewhere.
    initial = [float(g["initial_lr"]) for g in s.optimizer.param_groups]
    own = [float(b) for b in s.base_lrs]
    if own != initial:
        raise ValueError(f"from_torch: {type(s).__name__} has base lrs {own} but the groups' "
                         f"initial_lr is {initial} (rewritten by a OneCycleLR on the same "
                         "optimizer?); a spec is relative to initial_lr")


def _whole(x):
    """torch accepts step counts given as integral floats; the factories want ints."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _same(name: str, what: str, values, hint: str = "") -> float:
    values = [float(v) for v in values]
    if len(set(values)) > 1:
        raise ValueError(f"from_torch: {name} has {what} {values}, differing between param "
                         f"groups; a spec sets one absolute {what} for every group, so use one "
                         "optimizer (or one spec) per value" + hint)
    return values[0]


def _shortest(x: float, reproduces) -> float:
    """The shortest decimal that gives torch's stored value back exactly, so the spec reads as
    the user wrote it (pct_start=0.3, not the 0.30000000000000004 recovered from end_step)."""
    for digits in range(1, 18):
        candidate = float(f"{x:.{digits}g}")
        if reproduces(candidate):
            return candidate
    return x


def _constant(s):
    if s.total_iters == 0 and s.factor != 1.0:
        # Stepped, torch's ConstantLR undoes the factor only when last_epoch == total_iters,
        # which with total_iters=0 is never after step 0: the factor holds forever (its closed
        # form disagrees; a SequentialLR restart uses that, see _sequential).
        return linear(s.factor, s.factor, 1)
    return constant(s.factor, _whole(s.total_iters))


def _restarts(s):
    if not float(s.T_cur).is_integer():
        raise ValueError("from_torch: CosineAnnealingWarmRestarts was stepped with fractional "
                         f"epochs (T_cur={s.T_cur}); a spec counts whole steps, so step it once "
                         "per batch with T_0 in batches")
    return cosine_restarts(s.T_0, s.T_mult, s.eta_min)


def _cyclic_sizes(s) -> tuple[int, int | None]:
    """CyclicLR's step_size_up and step_size_down (None when equal), from what torch keeps."""
    if s._scale_fn_custom is not None:
        raise TypeError("from_torch: CyclicLR with a custom scale_fn holds a Python function, "
                        "which cannot run inside a GPU kernel; use a built-in mode "
                        "('triangular', 'triangular2' or 'exp_range')")
    # torch keeps only the cycle length and the up fraction; recover the two step sizes.
    total = s.total_size
    up = round(total * s.step_ratio)
    down = round(total) - up
    if float(up + down) != total or up / total != s.step_ratio or min(up, down) < 1:
        raise ValueError(f"from_torch: CyclicLR step sizes must be whole steps, got a cycle of "
                         f"{total} steps with {total * s.step_ratio} up")
    return up, None if down == up else down


def _cyclic(s):
    up, down = _cyclic_sizes(s)
    return cyclic(_per_group(s.base_lrs), _per_group(s.max_lrs), up, down, s.mode, s.gamma)


def _cyclic_momentum(s):
    up, down = _cyclic_sizes(s)
    return cyclic_momentum(_same("CyclicLR", "base_momentum", s.base_momentums),
                           _same("CyclicLR", "max_momentum", s.max_momentums),
                           up, down, s.mode, s.gamma)


def _one_cycle_shape(s, peak: float, initial: float, minimum: float):
    """OneCycleLR's pct_start, div_factor and final_div_factor, inverted exactly from the
    derived values torch keeps (phase ends, and the lrs)."""
    total = s.total_steps
    up_end = s._schedule_phases[0]["end_step"]
    pct = _shortest((up_end + 1) / total, lambda p: float(p * total) - 1 == up_end)
    div = _shortest(peak / initial, lambda d: peak / d == initial)
    final = _shortest(initial / minimum, lambda f: initial / f == minimum)
    return pct, div, final


def _one_cycle(s):
    groups = s.optimizer.param_groups
    g = groups[0]
    pct, div, final = _one_cycle_shape(s, g["max_lr"], g["initial_lr"], g["min_lr"])
    # torch derives every group's initial and minimum lr from its max_lr with the same two
    # factors; check that the factors recovered from group 0 give the others' exactly.
    for i, g in enumerate(groups):
        if g["max_lr"] / div != g["initial_lr"] or g["initial_lr"] / final != g["min_lr"]:
            raise ValueError(f"from_torch: OneCycleLR group {i} has initial_lr "
                             f"{g['initial_lr']} and min_lr {g['min_lr']}, which max_lr "
                             f"{g['max_lr']} / div_factor {div} / final_div_factor {final} do "
                             "not give (rewritten by hand?)")
    return one_cycle(_per_group(g["max_lr"] for g in groups), s.total_steps, pct,
                     s._anneal_func_type, div, final, len(s._schedule_phases) == 3)


def _plateau(s):
    return plateau(s.mode, s.factor, s.patience, s.threshold, s.threshold_mode, s.cooldown,
                   _per_group(s.min_lrs), s.eps)


def _one_cycle_momentum(s):
    groups = s.optimizer.param_groups
    g = groups[0]
    pct, _, _ = _one_cycle_shape(s, g["max_lr"], g["initial_lr"], g["min_lr"])
    return one_cycle_momentum(
        s.total_steps, pct, s._anneal_func_type,
        _same("OneCycleLR", "base_momentum", [g["base_momentum"] for g in groups]),
        _same("OneCycleLR", "max_momentum", [g["max_momentum"] for g in groups]),
        len(s._schedule_phases) == 3)


def _sequential(s):
    members = []
    for i, m in enumerate(s._schedulers):
        if isinstance(m, (lrs.SequentialLR, lrs.ChainedScheduler)):
            # torch restarts a member at its milestone through its closed form, which composite
            # schedulers lack, and undoes only the leaves' initial step: its own sequence is off.
            raise ValueError(f"from_torch: SequentialLR member {i} is a {type(m).__name__}, "
                             "which torch does not restart correctly; flatten the nesting")
        spec = _convert(m)
        if i and type(m) is lrs.ConstantLR and m.total_iters == 0:
            spec = constant(m.factor, 0)  # restarted by its closed form, which has no factor
        members.append(spec)
    return sequential(members, [_whole(m) for m in s._milestones])


# ChainedScheduler steps each member on the lr the previous one left, so its sequence is the
# product of the members' factors only when every member multiplies the lr by a factor of the
# step count. CosineAnnealingLR is such a factor while eta_min = 0 and t <= T_max (past T_max
# torch adds an increment computed from its own base lr).
FACTORS = (lrs.StepLR, lrs.MultiStepLR, lrs.ExponentialLR, lrs.LinearLR, lrs.PolynomialLR,
           lrs.ConstantLR)


def _is_factor(s) -> bool:
    if type(s) is lrs.ChainedScheduler:
        return all(map(_is_factor, s._schedulers))
    return type(s) in FACTORS or (type(s) is lrs.CosineAnnealingLR and s.eta_min == 0)


def _chained(s):
    members = list(s._schedulers)
    if len(members) > 1:
        for i, m in enumerate(members):
            if not _is_factor(m):
                raise ValueError(
                    f"from_torch: ChainedScheduler member {i} is a {type(m).__name__}, which "
                    "does not just multiply the lr by a factor, so torch's chained sequence is "
                    "not a composition of schedules; chain only StepLR, MultiStepLR, "
                    "ExponentialLR, LinearLR, PolynomialLR, ConstantLR and CosineAnnealingLR "
                    "with eta_min=0")
    _last_epoch(s)  # the members must share one clock
    return chained([_convert(m) for m in members])


_CONVERTERS = {
    lrs.ConstantLR: _constant,
    lrs.StepLR: lambda s: step(_whole(s.step_size), s.gamma),
    lrs.MultiStepLR: lambda s: multistep(sorted(s.milestones.elements()), s.gamma),
    lrs.ExponentialLR: lambda s: exponential(s.gamma),
    lrs.CosineAnnealingLR: lambda s: cosine(_whole(s.T_max), s.eta_min),
    lrs.CosineAnnealingWarmRestarts: _restarts,
    lrs.CyclicLR: _cyclic,
    lrs.OneCycleLR: _one_cycle,
    lrs.LinearLR: lambda s: linear(s.start_factor, s.end_factor, _whole(s.total_iters)),
    lrs.PolynomialLR: lambda s: polynomial(_whole(s.total_iters), s.power),
    lrs.SequentialLR: _sequential,
    lrs.ChainedScheduler: _chained,
}


def _last_epoch(s) -> int:
    if isinstance(s, lrs.ChainedScheduler):  # it keeps no counter of its own
        positions = [_last_epoch(m) for m in s._schedulers]
        if len(set(positions)) != 1:
            raise ValueError(f"from_torch: ChainedScheduler members are at different positions "
                             f"{positions}; chain them before stepping any")
        return positions[0]
    if isinstance(s, lrs.LRScheduler):
        return math.floor(s.last_epoch)
    raise TypeError(f"torch_position: expected a torch LR scheduler, got {type(s).__name__}")
