"""from_torch: a ``torch.optim.lr_scheduler`` instance as the equivalent schedule spec.

A spec describes the whole run and is immutable; where a scheduler stands in that run is a
separate number, ``torch_position(scheduler)`` (steps completed). So a scheduler part-way through
its run converts to the same spec as a fresh one.

Relative schedules (all but CyclicLR and OneCycleLR, which set absolute lrs) are relative to each
group's ``initial_lr``, which is torch's ``base_lrs``. Only the lr is converted: the momentum that
CyclicLR and OneCycleLR cycle by default (``cycle_momentum=True``) is not part of a spec.
"""

from __future__ import annotations

import math

from torch.optim import lr_scheduler as lrs

from fused_lrs.schedules.base import Schedule, check_int
from fused_lrs.schedules.compose import chained, sequential
from fused_lrs.schedules.compose import every as every_n  # `every` is from_torch's argument
from fused_lrs.schedules.cosine import cosine, cosine_restarts
from fused_lrs.schedules.cyclic import cyclic, one_cycle
from fused_lrs.schedules.decay import constant, exponential, linear, multistep, polynomial, step


def from_torch(scheduler, every: int = 1) -> Schedule:
    """The spec of a built-in torch scheduler (SequentialLR and ChainedScheduler of them too).

    ``every=n`` says the scheduler is stepped once per ``n`` optimizer steps (once per epoch of
    ``n`` batches): the spec is ``every(spec, n)``. The result is the same wherever the
    scheduler is in its run; ``torch_position`` says where that is."""
    check_int("from_torch", "every", every, 1)
    return every_n(_convert(scheduler), every)


def torch_position(scheduler, every: int = 1) -> int:
    """Optimizer steps completed at the scheduler's position: ``last_epoch * every`` (at an
    epoch boundary when ``every > 1``)."""
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
        raise TypeError("from_torch: ReduceLROnPlateau is not supported yet: its lr depends on "
                        "a metric passed to step(), not on the step count alone")
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


def _same(name: str, what: str, values) -> float:
    values = [float(v) for v in values]
    if len(set(values)) > 1:
        raise ValueError(f"from_torch: {name} has {what} {values}, differing between param "
                         f"groups; a spec sets one absolute {what} for every group, so use one "
                         "optimizer (or one spec) per value")
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


def _cyclic(s):
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
    return cyclic(_same("CyclicLR", "base_lr", s.base_lrs), _same("CyclicLR", "max_lr", s.max_lrs),
                  up, None if down == up else down, s.mode, s.gamma)


def _one_cycle(s):
    groups = s.optimizer.param_groups
    peak = _same("OneCycleLR", "max_lr", [g["max_lr"] for g in groups])
    initial = _same("OneCycleLR", "initial lr", s.base_lrs)
    minimum = _same("OneCycleLR", "min_lr", [g["min_lr"] for g in groups])
    total = s.total_steps
    # torch keeps derived values only: phase ends, and the lrs. Invert them exactly.
    up_end = s._schedule_phases[0]["end_step"]
    pct = _shortest((up_end + 1) / total, lambda p: float(p * total) - 1 == up_end)
    div = _shortest(peak / initial, lambda d: peak / d == initial)
    final = _shortest(initial / minimum, lambda f: initial / f == minimum)
    return one_cycle(peak, total, pct, s._anneal_func_type, div, final,
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
_FACTORS = (lrs.StepLR, lrs.MultiStepLR, lrs.ExponentialLR, lrs.LinearLR, lrs.PolynomialLR,
            lrs.ConstantLR)


def _is_factor(s) -> bool:
    if type(s) is lrs.ChainedScheduler:
        return all(map(_is_factor, s._schedulers))
    return type(s) in _FACTORS or (type(s) is lrs.CosineAnnealingLR and s.eta_min == 0)


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
