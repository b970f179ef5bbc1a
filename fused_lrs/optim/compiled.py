"""A fused optimizer's step under torch.compile, under CUDA-graph capture, and ``init_state``.

Under torch.compile (``step``) the step is one custom op (``op.py``), so dynamo never traces a
backend: the description is built afresh in the trace (never cached, so dynamo guards on
nothing but the tensors and the hyperparameters) and handed to the op.

The state a compiled step lacks is made on its first call, as torch's optimizers make theirs:
dynamo runs a method called ``_init_group`` of any ``torch.optim.Optimizer`` eagerly while it
traces the step (``torch/_dynamo/variables/optimizer.py``), then marks the state it made as
static and guards on it. So the state is made once, outside the graph, and the next call does
not recompile. A gradient that call could not see (one the graph itself makes) gets its state
from ``prepare_state`` traced into the graph; the next call then recompiles once, on it.

An eager step that runs inside a compiled function (dynamo fell back to running a frame
eagerly: a trace it gave up on, a recompile limit hit) runs with dynamo off
(``without_dynamo``): dynamo would otherwise trace every function it calls, the backends
included, and torch's fused CPU ops have no fake kernels.

Under CUDA-graph capture state cannot be made: the capture only records the fills, so every
replay would zero the new state again. Such a step is refused (``require_state``) with an error
that names ``opt.init_state()``.
"""

from __future__ import annotations

import torch

from fused_lrs import adapters
from fused_lrs.optim import checkpoint
from fused_lrs.optim.op import step as step_op
from fused_lrs.optim.step import to_flat

# The frame callback dynamo installs while a compiled function runs (None outside one): read by
# every eager step, one C call.
dynamo_callback = torch._C._dynamo.eval_frame.get_eval_frame_callback


def without_dynamo(fn):
    """``fn`` with dynamo off for every function it calls (``torch._dynamo.disable``)."""
    return torch._dynamo.disable(fn, recursive=True)


def step(opt) -> None:
    """The step under torch.compile: missing state made, then one custom op."""
    # _init_group is called every time, as torch's optimizers call theirs: dynamo may restart
    # its analysis of a frame, and a branch on whether the state exists would then take the
    # other path the second time.
    opt._init_group()
    work = opt._gather()
    opt.prepare_state(work)
    # Nothing cached is written here: dynamo guards on what the trace reads, and a value the
    # trace itself changed would fail its guard at the next call (a recompile). So the rows
    # are made afresh (dynamo guards on the hyperparameters), and the impl is only read.
    rows = [opt.algorithm.row(g, opt.defaults) for g in opt.param_groups]
    impl = opt._cache.impl or opt._choose_impl()
    step_op(**to_flat(opt._build_description(work, rows)), impl=impl,
            explicit=opt.impl_requested != "auto", owner=opt._owner)


def init_group(opt) -> None:
    """Make the state that the parameters with a gradient lack (``opt._init_group``, which
    dynamo runs eagerly while tracing). Run eagerly, it also marks the schedule's tensors as
    static addresses, as ``init_state`` does; dynamo marks the parameters and their state.

    It does first what an eager step does first (``_describe``): adopt a counter, plateau and
    states that a load wrote into the groups (ZeRO's: new state tensors fail dynamo's guards,
    so the step is traced again after one), and warn of a torch scheduler's ``initial_lr``."""
    checkpoint.sync(opt)
    if any("initial_lr" in group for group in opt.param_groups):
        adapters.warn_torch_scheduler(opt)      # once per optimizer
    work = opt._gather()
    if capturing(opt):
        require_state(opt, work)
    opt.prepare_state(work)
    if not torch.compiler.is_dynamo_compiling():      # run, not traced (dynamo folds it True)
        for x in schedule_tensors(opt):
            torch._dynamo.mark_static_address(x)


def init_state(opt) -> None:
    """Make the state of every parameter, gradient or not, and mark every tensor a step reads
    or writes as a static address (``opt.init_state``)."""
    opt.prepare_state([g["params"] for g in opt.param_groups])
    tensors = schedule_tensors(opt)
    for group in opt.param_groups:
        for p in group["params"]:
            tensors += [p, *(v for v in opt.state[p].values() if v is not None)]
            if p.grad is not None:
                tensors.append(p.grad)
    for x in tensors:
        torch._dynamo.mark_static_address(x)


def schedule_tensors(opt) -> list[torch.Tensor]:
    """The schedule's tensors a step reads or writes: counter, table, skip flag and a plateau's
    state."""
    state = opt._schedule_state
    return [state.t, state.table, state.skipped,
            *([state.plateau] if state.plateau is not None else [])]


def capturing(opt) -> bool:
    """Whether the current CUDA stream of ``opt``'s device is being captured into a graph."""
    device = opt._device
    return device is not None and device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def require_state(opt, work) -> None:
    """Refuse a step under CUDA-graph capture that would have to make state for a parameter of
    ``work`` (lists per group). (``.get``: a lookup in the state defaultdict would insert ``{}``
    for the refused parameter.)"""
    if not all("step" in opt.state.get(p, ()) for params in work for p in params):
        raise RuntimeError(
            f"{type(opt).__name__}: call opt.init_state() before CUDA-graph capture (or take "
            "one eager step): some parameters have no optimizer state yet, and state made "
            "during a capture is only recorded, so every replay would zero it again")
