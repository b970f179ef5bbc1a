"""The providers: one optimizer step of a scenario, by fused_lrs and by the baselines users run.

  fused_lrs             the recipe's fused class (FusedAdamWScheduled, FusedSGDScheduled, any
                        registry name with --optimizer), impl="auto": on CUDA the Triton kernel
                        (schedule and update in one launch); on CPU torch's own fused kernels,
                        fed lr(t) as a device tensor (backends/torch_fused.py);
  torch_foreach         its peer (torch.optim.AdamW, SGD, ..., its record's) with foreach=True,
                        float lr, + the torch scheduler (a peer without foreach=: its own step);
  torch_fused           the same with fused=True and the lr as a device tensor (n/a where the
                        peer takes no fused=);
  torch_compiled        the PyTorch tutorial's compiled step: lr wrapped in a tensor and
                        ``@torch.compile(fullgraph=False) def fn(): opt.step(); sched.step()``;
  <name>+graph (CUDA)   each of those with opt.step() captured in a CUDA graph after eager
                        warm-up; the torch scheduler (a Python object) steps outside the graph,
                        writing the device lr tensor the graph reads.

With master weights (S4), fused_lrs keeps them itself (``master_weights=True``); torch's
optimizers have none, so the baselines do what apex and DeepSpeed's bf16 optimizer do: step fp32
copies of the parameters, copying the bf16 gradients in before and the rounded parameters out
after (foreach copies, inside the graph or the compiled function when there is one).

A builder takes (params, recipe, device) and returns ``step()``, one training-loop iteration of
optimizer work. Each provider gets fresh parameters, so no provider's state leaks into another's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fused_lrs.bench.scenarios import Recipe


@dataclass(frozen=True)
class Provider:
    name: str
    build: Callable[[list, Recipe, torch.device], Callable[[], None]]
    subject: bool = False      # fused_lrs itself, rather than a baseline
    graphed: bool = False
    compiled: bool = False


class NotApplicable(Exception):
    """The peer has no such implementation (``fused=True`` of a peer that takes no ``fused``):
    its row says so instead of a figure."""


def fused_schedule(r: Recipe):
    from fused_lrs.schedules import cosine, multistep, warmup

    if r.milestones:
        return multistep(list(r.milestones), r.gamma)
    return warmup(cosine(r.t_max), r.warmup, start_factor=r.start_factor)


def torch_scheduler(opt, r: Recipe):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, SequentialLR

    if r.milestones:
        return MultiStepLR(opt, list(r.milestones), r.gamma)
    return SequentialLR(opt, [LinearLR(opt, r.start_factor, 1.0, r.warmup),
                              CosineAnnealingLR(opt, r.t_max)], [r.warmup])


def torch_optimizer(params, r: Recipe, lr, **options):
    """The recipe's peer (its record's: ``torch.optim.AdamW``, ``lion_pytorch.Lion``, ...).
    ``foreach=True`` runs the peer's own step when it takes no ``foreach`` (lion_pytorch);
    ``fused=True`` where it takes no ``fused`` is NotApplicable; ``capturable`` is dropped where
    there is none (SGD keeps no step count)."""
    peer = r.fused_class.algorithm.peer_class()
    accepted = inspect.signature(peer).parameters
    if "fused" in options and "fused" not in accepted:
        raise NotApplicable(f"{r.peer} takes no fused=")
    options = {k: v for k, v in options.items() if k in accepted}
    return peer(params, lr=lr, **r.options(peer), **options)


def fused_lrs_optimizer(params, r: Recipe, device: torch.device):
    # What a user gets: the Triton kernel on CUDA, torch's fused CPU kernels on CPU (the kernel
    # would run under the interpreter there, far too slow to time).
    cls = r.fused_class
    return cls(params, lr=r.lr, schedule=fused_schedule(r), impl="auto",
               master_weights=r.master_weights, **r.options(cls))


def torch_update(params, r: Recipe, lr, **options):
    """(update, scheduler): ``update()`` is the torch optimizer's step, with the master-weight
    copies around it when the recipe has them."""
    if not r.master_weights:
        opt = torch_optimizer(params, r, lr, **options)
        sched = torch_scheduler(opt, r)   # first: it wraps opt.step to check the call order
        return opt.step, sched
    masters = [p.detach().float() for p in params]
    for m in masters:
        m.grad = torch.empty_like(m)
    opt = torch_optimizer(masters, r, lr, **options)
    storage = [p.detach() for p in params]       # the parameters, written outside autograd

    def update():
        torch._foreach_copy_([m.grad for m in masters], [p.grad for p in params])
        opt.step()
        torch._foreach_copy_(storage, masters)
    return update, torch_scheduler(opt, r)


def _then(update, sched):
    def step():
        update()
        sched.step()
    return step


def fused_lrs(params, r, device):
    return fused_lrs_optimizer(params, r, device).step


def torch_foreach(params, r, device):
    return _then(*torch_update(params, r, r.lr, foreach=True))


def torch_fused(params, r, device):
    # A device tensor lr: the scheduler writes it in place, so no step copies an lr from the host.
    return _then(*torch_update(params, r, torch.tensor(r.lr, device=device), fused=True))


def torch_compiled(params, r, device):
    # The tutorial's recipe, as written there: a (CPU) tensor lr, so a new lr is not a new
    # constant to recompile for, and the step and the scheduler in one compiled function.
    update, sched = torch_update(params, r, torch.tensor(r.lr))

    @torch.compile(fullgraph=False)
    def step():
        update()
        sched.step()
    return step


def _captured(step, warmup_steps: int):
    """``step`` captured in a CUDA graph after ``warmup_steps`` eager calls on a side stream (they
    create the optimizer state and compile; torch's recipe for capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def fused_lrs_graph(params, r, device):
    # The schedule and its counter live in the kernel, so the graph is the whole iteration.
    return _captured(fused_lrs_optimizer(params, r, device).step, 1).replay


def _torch_graph(params, r, device, compiled=False, **options):
    lr = torch.tensor(r.lr, device=device)       # read by the graph, written by the scheduler
    update, sched = torch_update(params, r, lr, capturable=True, **options)
    if compiled:
        update = torch.compile(update, fullgraph=False)
    graph = _captured(update, 3 if compiled else 1)

    def replay():
        graph.replay()
        sched.step()
    return replay


EAGER = (
    Provider("fused_lrs", fused_lrs, subject=True),
    Provider("torch_foreach", torch_foreach),
    Provider("torch_fused", torch_fused),
    Provider("torch_compiled", torch_compiled, compiled=True),
)
GRAPHED = (
    Provider("fused_lrs+graph", fused_lrs_graph, subject=True, graphed=True),
    Provider("torch_foreach+graph", lambda p, r, d: _torch_graph(p, r, d, foreach=True),
             graphed=True),
    Provider("torch_fused+graph", lambda p, r, d: _torch_graph(p, r, d, fused=True),
             graphed=True),
    Provider("torch_compiled+graph", lambda p, r, d: _torch_graph(p, r, d, compiled=True),
             graphed=True, compiled=True),
)


ALL = EAGER + GRAPHED


def for_device(device: torch.device, quick: bool = False) -> list[Provider]:
    """The providers for ``device``: CUDA graphs only on CUDA. ``--quick`` on CPU leaves out
    torch_compiled: it compiles again at every schedule boundary, which on a CPU takes longer
    than all the quick run's timed steps together, and torch_fused is the CPU baseline that
    counts (the changelog has the measurement)."""
    cuda = device.type == "cuda"
    return [p for p in ALL if (cuda or not p.graphed) and (cuda or not quick or not p.compiled)]


def named(names: str, device: torch.device) -> list[Provider]:
    """``--providers a,b``: those providers, in the standard order (fused_lrs always first, as
    the speedups are its own)."""
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    known = {p.name: p for p in ALL}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"--providers: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if device.type != "cuda" and any(known[n].graphed for n in wanted):
        raise ValueError("--providers: the +graph providers need CUDA")
    return [p for p in ALL if p.name in wanted or p.name == "fused_lrs"]


def make_params(shapes, device: torch.device, dtype=torch.float32,
                seed: int = 0) -> list[torch.Tensor]:
    """Parameters of the given shapes and dtype with gradients, the same for every provider."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(shape, std):
        return torch.empty(shape, device=device).normal_(0, std, generator=gen).to(dtype)

    params = []
    for s in shapes:
        p = normal(s, 0.02).requires_grad_()
        p.grad = normal(s, 1e-3)
        params.append(p)
    return params
