"""The range test's bookkeeping on the device: each step's loss, its smoothing and the
divergence stop, with no value read back until the sweep ends.

Per step (``update``), in fixed-shape tensor ops on the loss's device, so that the same code runs
eagerly, under ``torch.compile`` (no Python value changes from step to step, nothing
recompiles) and inside a captured CUDA graph:
  * the loss, averaged over the ranks of a process group by an all-reduce of a device tensor;
  * written into ``raw[i]`` (``i`` is a device counter);
  * a bias-corrected exponential moving average, ``avg / (1 - beta ** (i + 1))``: Adam's
    correction, so the first steps are not pulled towards the zero the average starts from
    (Lightning-AI/pytorch-lightning#14167);
  * ``diverged``: set once that average exceeds ``threshold`` times its lowest value so far,
    or the loss is not finite. It is a float32 0-dim tensor, the ``found_inf`` of torch's
    GradScaler protocol, so every later step of the optimizer updates nothing; ``stop`` keeps
    the index of the first diverged step.
"""

from __future__ import annotations

import torch


class LossTracker:
    """Device buffers for ``steps`` losses and the running state of the divergence stop.

    Args:
        steps: the number of steps the buffers hold.
        device: where the losses are computed (the model's device).
        beta: the moving average's decay (0.9: a window of about 10 steps).
        threshold: the divergence factor over the lowest average (None: never stop).
        group: a process group to average the loss over (None: no averaging).
    """

    def __init__(self, steps: int, device: torch.device, beta: float,
                 threshold: float | None, group=None) -> None:
        f64 = dict(dtype=torch.float64, device=device)
        self.beta, self.threshold, self.group = beta, threshold, group
        self.world = 1 if group is None else torch.distributed.get_world_size(group)
        self.raw = torch.full((steps,), float("nan"), **f64)
        # The bias correction of step k, 1 / (1 - beta ** (k + 1)), as a table the device
        # counter indexes: one op a step instead of a running power and a division. (Made on
        # the device: a copy from pageable host memory would synchronise.)
        self.debias = 1 / (1 - beta ** torch.arange(1, steps + 1, **f64))
        # Running values as 1-element tensors: torch.compile (aot_eager, torch 2.13) drops the
        # in-place updates of 0-dim float64 CPU tensors held by an object.
        self.i = torch.zeros((1,), dtype=torch.int64, device=device)
        self.avg = torch.zeros((1,), **f64)            # beta-weighted sum, not yet corrected
        self.best = torch.full((1,), float("inf"), **f64)
        self.stop = torch.full((1,), steps, dtype=torch.int64, device=device)
        self.never = self.stop.clone()     # where's other operand, a tensor (capture-safe)
        self.diverged = torch.zeros((), dtype=torch.float32, device=device)   # found_inf

    @torch.no_grad()
    def update(self, loss: torch.Tensor) -> None:
        """Record this step's loss (a 0-dim tensor) and update the divergence stop. About 20
        tensor ops: on CPU ~45 us a step (their dispatch, not their arithmetic)."""
        x = loss.reshape(1).to(torch.float64)
        if self.group is not None:
            x = x.clone()           # all_reduce writes in place; the caller's loss is its own
            torch.distributed.all_reduce(x, group=self.group)
            x = x / self.world
        i = self.i
        self.raw.index_copy_(0, i, x)
        self.avg.mul_(self.beta).add_(x, alpha=1 - self.beta)
        smoothed = self.avg * self.debias.index_select(0, i)
        torch.fmin(self.best, smoothed, out=self.best)     # fmin: a NaN never becomes best
        if self.threshold is None:
            bad = torch.isfinite(smoothed).logical_not_()
        else:
            # "not <=": also true for a NaN, and, by the abs, for an infinity of either sign.
            bad = torch.le(smoothed.abs(), self.best * self.threshold).logical_not_()
        torch.minimum(self.stop, torch.where(bad, i, self.never), out=self.stop)
        self.diverged.copy_(self.stop.le(i).reshape(()))
        self.i.add_(1)

    def read(self) -> tuple[list[float], int]:
        """The losses and the first diverged step (``steps`` if none): the sweep's one read."""
        values = torch.cat([self.raw, self.stop.to(torch.float64)]).tolist()
        return values[:-1], int(values[-1])
