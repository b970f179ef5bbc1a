"""Warmup-stable-decay, HF's ``get_wsd_schedule``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fused_lrs.kernels import kinds
from fused_lrs.schedules.base import INF, Leaf, Schedule, check_choice, check_int, check_real
from fused_lrs.schedules.decay import anneal_leaf

_SHAPES = ("linear", "cosine", "1-sqrt")


@dataclass(frozen=True, repr=False)
class WSD(Schedule):
    factory = "wsd"
    num_warmup_steps: int
    num_decay_steps: int
    num_stable_steps: int
    warmup_type: str = "linear"
    decay_type: str = "cosine"
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5

    def _lr(self, t, base):
        w, s, d, r = self.num_warmup_steps, self.num_stable_steps, self.num_decay_steps, \
            self.min_lr_ratio
        p = t / max(1, w)
        warm = {"linear": p, "cosine": 0.5 * (1.0 - torch.cos(math.pi * p)),
                "1-sqrt": 1.0 - torch.sqrt(1.0 - p)}[self.warmup_type]
        q = (t - w - s) / max(1, d)
        decay = {"linear": 1.0 - q,
                 "cosine": 0.5 * (1.0 + torch.cos(math.pi * self.num_cycles * 2.0 * q)),
                 "1-sqrt": 1.0 - torch.sqrt(q)}[self.decay_type]
        factor = torch.where(t < w, warm * (1.0 - r) + r,
                             torch.where(t < w + s, 1.0,
                                         torch.where(t < w + s + d, decay * (1.0 - r) + r, r)))
        return base * torch.clamp(factor, min=0.0)

    def leaves(self):
        w, s, d, r = self.num_warmup_steps, self.num_stable_steps, self.num_decay_steps, \
            self.min_lr_ratio
        shape = {"linear": kinds.SHAPE_LINEAR, "cosine": kinds.SHAPE_COS}
        warm = () if not w else (anneal_leaf(
            r, 1.0, max(1, w), shape.get(self.warmup_type, kinds.SHAPE_ONE_MINUS_SQRT), hi=w),)
        window = dict(lo=w + s, hi=w + s + d, shift=w + s)
        if self.decay_type == "cosine":
            decay = Leaf(kinds.COSINE, (math.pi * self.num_cycles * 2.0 / max(1, d), 0.0, r),
                         **window)
        else:
            decay = anneal_leaf(1.0, r, max(1, d), shape.get(self.decay_type, kinds.SHAPE_SQRT),
                                **window)
        return warm + (decay, Leaf(kinds.SCALE, (r,), lo=w + s + d, hi=INF))


def wsd(num_warmup_steps: int, num_decay_steps: int, num_training_steps: int | None = None,
        num_stable_steps: int | None = None, warmup_type: str = "linear",
        decay_type: str = "cosine", min_lr_ratio: float = 0.0, num_cycles: float = 0.5
        ) -> Schedule:
    """HF ``get_wsd_schedule``: warmup, stable, decay. A warmup from ``min_lr_ratio * base_lr``
    to ``base_lr``, a stable phase at ``base_lr``, a decay back to ``min_lr_ratio * base_lr``,
    then that floor.

    ```text
    w, s, d, r = num_warmup_steps, num_stable_steps, num_decay_steps, min_lr_ratio
    lr(t) = base_lr * (r + (1 - r) * warm(t / w))              for t < w
            base_lr                                            for w <= t < w + s
            base_lr * (r + (1 - r) * decay((t - w - s) / d))   for w + s <= t < w + s + d
            base_lr * r                                        after
    warm(p)  = p | (1 - cos(pi p)) / 2 | 1 - sqrt(1 - p)            (linear | cosine | 1-sqrt)
    decay(q) = 1 - q | (1 + cos(2 pi num_cycles q)) / 2 | 1 - sqrt(q)
    ```

    Args:
        num_warmup_steps: the steps of the warmup (>= 0).
        num_decay_steps: the steps of the decay (>= 0).
        num_training_steps: the whole run; the stable phase is what the warmup and the decay
            leave of it. Give this or ``num_stable_steps``, not both.
        num_stable_steps: the steps of the stable phase (>= 0).
        warmup_type: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.
        decay_type: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.
        min_lr_ratio: the floor as a fraction of the base lr, in [0, 1].
        num_cycles: the cosine periods of a ``"cosine"`` decay (> 0); 0.5 is half a cosine.
    """
    fn = "wsd"
    check_int(fn, "num_warmup_steps", num_warmup_steps, 0)
    check_int(fn, "num_decay_steps", num_decay_steps, 0)
    if (num_training_steps is None) == (num_stable_steps is None):
        raise ValueError(f"{fn}: give exactly one of num_training_steps and num_stable_steps, "
                         f"got {num_training_steps!r} and {num_stable_steps!r}")
    if num_stable_steps is None:
        check_int(fn, "num_training_steps", num_training_steps, num_warmup_steps + num_decay_steps)
        num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    check_int(fn, "num_stable_steps", num_stable_steps, 0)
    return WSD(num_warmup_steps, num_decay_steps, num_stable_steps,
               check_choice(fn, "warmup_type", warmup_type, _SHAPES),
               check_choice(fn, "decay_type", decay_type, _SHAPES),
               check_real(fn, "min_lr_ratio", min_lr_ratio, 0.0, 1.0),
               check_real(fn, "num_cycles", num_cycles, 0.0, INF, lo_open=True))
