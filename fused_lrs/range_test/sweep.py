"""``lr_find``: the learning-rate range test as a schedule on the device.

The sweep is one exponential ramp, ``exponential(gamma)`` from a group lr of ``start_lr``, so
the optimizer evaluates each step's lr itself; the losses, their moving average and the
divergence stop stay on the device (``tracker.py``), and the losses are read once, at the end.
Nothing in a step depends on a Python value that changes from step to step, so the same step
runs eagerly, under ``torch.compile`` without recompiling, or captured once in a CUDA graph and
replayed.
"""

from __future__ import annotations

import itertools
import math
import types
from collections.abc import Callable, Iterable

import torch
import torch.utils._pytree as pytree

from fused_lrs.algorithms import DEFAULT, optimizer_class
from fused_lrs.range_test.result import LRFindResult
from fused_lrs.range_test.snapshot import Snapshot
from fused_lrs.range_test.suggest import smooth, suggest
from fused_lrs.range_test.tracker import LossTracker
from fused_lrs.schedules import exponential

# Eager steps before a CUDA graph is captured, on a side stream, as torch's whole-network
# capture recipe does (lazy state, cuBLAS workspaces, the optimizer's tables); DDP needs 11.
CAPTURE_WARMUP, CAPTURE_WARMUP_DDP = 3, 11


def ramp(start_lr: float, end_lr: float, steps: int):
    """The sweep's schedule, for a group lr of ``start_lr``: ``start_lr * gamma ** t`` with
    ``gamma = (end_lr / start_lr) ** (1 / (steps - 1))``, so step ``k`` (``t = k``) uses
    ``start_lr * (end_lr / start_lr) ** (k / (steps - 1))`` and the last uses ``end_lr``."""
    return exponential((end_lr / start_lr) ** (1.0 / (steps - 1)))


def lr_find(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            loss_fn: Callable[[torch.nn.Module, object], torch.Tensor], batches: Iterable, *,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            diverge_threshold: float | None = 4.0, beta: float = 0.9,
            capture: bool = False, compile: bool | dict = False,
            process_group=None) -> LRFindResult:
    """Run the learning-rate range test and restore the model and optimizer afterwards.

    Step ``k`` trains at ``start_lr * (end_lr / start_lr) ** (k / (steps - 1))``, the same lr
    in every parameter group. No value is read back to the host during the sweep: the losses
    are read once at the end, so the host reads do not grow with ``steps``. Once the loss
    diverges, the remaining steps still run forward and backward but update nothing (the
    optimizer's GradScaler skip), and the result ends at the first diverged step.

    Afterwards the model's parameters, buffers and gradients, the optimizer's state, groups,
    schedule, schedule counter and plateau state, and the random number generators are as
    they were, bitwise, also when ``loss_fn`` raises or the sweep is interrupted
    (``snapshot.py``). The model's train/eval mode is left as it is.

    Args:
        model: the model ``loss_fn`` trains (its parameters and buffers are restored).
        optimizer: a fused_lrs optimizer over the model's parameters, of any algorithm; its
            hyperparameters (betas, momentum, weight decay) and state are used as they are.
        loss_fn: ``loss_fn(model, batch)`` returns the 0-dim loss of one batch. It must not
            read the loss back (``.item()``) if the sweep is to stay free of host syncs.
        batches: any iterable of batches, cycled when it holds fewer than ``steps``; a one-shot
            iterator is cycled over the batches it gave.
        start_lr, end_lr: the lrs of the first and the last step (0 < start_lr < end_lr).
        steps: the number of steps (>= 2). 100 covers the default 8 decades at 12.5 steps a
            decade.
        diverge_threshold: stop when the moving average of the loss exceeds this many times
            its lowest value (> 1; None: never). The losses must be positive for this to mean
            anything.
        beta: the decay of the bias-corrected moving average the divergence stop watches
            (0.9: about 10 steps).
        capture: capture one step (forward, backward, update) in a CUDA graph and replay it
            (CUDA only). The first 3 steps (11 under DDP) run eagerly on a side stream. Every
            batch must have the same structure, shapes and dtypes; batches are copied into the
            captured step's inputs, so keep them on the device.
        compile: compile the step with ``torch.compile`` (``True``, or a dict of its keyword
            arguments). The step holds no Python value that changes, so it compiles once.
        process_group: the ranks to average each step's loss over, on the device, so that
            every rank sees the same curve, stops at the same step and gets the same
            suggestion (DDP, FSDP). None: all ranks, when torch.distributed is initialized.

    Returns:
        ``LRFindResult``: the lrs, the raw and the smoothed losses up to the first diverged
        step, and the suggestion (``suggest.py`` says how it is chosen).
    """
    _check(optimizer, start_lr, end_lr, steps, diverge_threshold, beta)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not {id(p) for p in model.parameters()} & {id(p) for p in params}:
        raise ValueError("lr_find: the optimizer holds none of the model's parameters")
    device = params[0].device
    if capture and device.type != "cuda":
        raise ValueError(f"lr_find: capture=True needs CUDA parameters, these are on {device}")
    group = _process_group(process_group)
    spec = ramp(start_lr, end_lr, steps)
    snapshot = Snapshot(model, optimizer)
    try:
        for g in optimizer.param_groups:
            g["lr"] = start_lr
        optimizer.set_schedule(spec, t=0)
        tracker = LossTracker(steps, device, beta, diverge_threshold, group)
        # GradScaler's protocol: a found_inf > 0 makes the step update nothing.
        optimizer.grad_scale, optimizer.found_inf = None, tracker.diverged

        def one_step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError("lr_find: loss_fn must return a tensor of one value, got "
                                + (f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                                   else type(loss).__name__))
            loss.backward()
            tracker.update(loss)
            optimizer.step()

        step = one_step
        if compile:
            optimizer.init_state()       # a compiled step finds its state made
            step = torch.compile(_own_code(one_step),
                                 **(compile if isinstance(compile, dict) else {}))
        data = _cycle(batches)
        with torch.enable_grad():           # also when called under torch.no_grad()
            if capture:
                ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
                _captured(step, data, steps, CAPTURE_WARMUP_DDP if ddp else CAPTURE_WARMUP)
            else:
                for batch in itertools.islice(data, steps):
                    step(batch)
        raw, stop = tracker.read()
    finally:
        snapshot.restore()
    n = min(stop + 1, steps)       # up to and with the first diverged step
    diverged_at = stop if stop < steps else None
    lrs = spec.lr(torch.arange(n, dtype=torch.float64), start_lr).tolist()
    losses = smooth(lrs, raw[:n], diverged_at)
    return LRFindResult(lrs=lrs, losses=losses, raw_losses=raw[:n],
                        suggestion=suggest(lrs, losses, diverged_at), diverged_at=diverged_at,
                        start_lr=start_lr, end_lr=end_lr, steps=steps)


def _own_code(fn):
    """``fn`` with a code object of its own. Dynamo keeps its compiled graphs per code object
    and guards the closure's model and optimizer by identity, so without this a second sweep
    in one process would count as a recompile of the first's step (and the eighth would hit
    dynamo's recompile limit)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def _captured(step, data, steps: int, warmup: int) -> None:
    """``warmup`` eager steps on a side stream, then one step captured in a CUDA graph and
    replayed for the rest, each replay after copying the next batch into the captured inputs."""
    warmup = min(warmup, steps)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for batch in itertools.islice(data, warmup):
            step(batch)
    torch.cuda.current_stream().wait_stream(side)
    if warmup == steps:
        return
    first = next(data)
    leaves, spec = pytree.tree_flatten(first)
    static = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(pytree.tree_unflatten(static, spec))
    graph.replay()
    for k, batch in enumerate(itertools.islice(data, steps - warmup - 1), warmup + 1):
        new, new_spec = pytree.tree_flatten(batch)
        if new_spec != spec:
            raise ValueError(f"lr_find: batch {k} has another structure than the captured one")
        for x, y in zip(static, new):
            if isinstance(x, torch.Tensor):
                if x.shape != y.shape or x.dtype != y.dtype:
                    raise ValueError(f"lr_find: batch {k} holds a {y.dtype} tensor of shape "
                                     f"{tuple(y.shape)} where the captured step has "
                                     f"{x.dtype} {tuple(x.shape)}")
                x.copy_(y, non_blocking=True)
        graph.replay()


def _cycle(batches: Iterable):
    """``batches`` forever: re-iterated when it ends, or, for a one-shot iterator, the batches
    it gave, cycled."""
    if iter(batches) is batches:
        seen = []
        for batch in batches:
            seen.append(batch)
            yield batch
        if not seen:
            raise ValueError("lr_find: batches is empty")
        yield from itertools.cycle(seen)
        return
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_find: batches is empty")


def _process_group(group):
    if group is not None:
        return group
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def _check(optimizer, start_lr, end_lr, steps, diverge_threshold, beta) -> None:
    if not all(hasattr(optimizer, a) for a in ("set_schedule", "schedule_step")) or not getattr(
            optimizer, "_step_supports_amp_scaling", False):
        example = optimizer_class(DEFAULT).__name__
        raise TypeError("lr_find: optimizer must be a fused_lrs optimizer (one with a device "
                        f"schedule, e.g. {example}), got {type(optimizer).__name__}")
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float))
            and 0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, finite, got start_lr="
                         f"{start_lr!r}, end_lr={end_lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"lr_find: steps must be an integer >= 2, got {steps!r}")
    if diverge_threshold is not None and not (isinstance(diverge_threshold, (int, float))
                                              and 1 < diverge_threshold < math.inf):
        raise ValueError(f"lr_find: diverge_threshold must be a finite number > 1 or None, got "
                         f"{diverge_threshold!r}")
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"lr_find: beta must be in [0, 1), got {beta!r}")
