"""The multi-process side of ``test_distributed.py``: a launcher, and the scenarios each rank
runs (DDP, FSDP2, ZeRO, torch.distributed.checkpoint), on CPU with gloo.

``launch`` starts ``WORLD`` spawned processes once for every scenario (starting a process that
imports torch costs seconds, so one start serves them all), on a
free port, and kills them after a deadline. Each rank runs each scenario, catches its error, and
saves ``{scenario: result or {"error": traceback}}``; the tests compare in the parent, so a
failing scenario fails its own test with the first mismatching entries. Every result also
counts the torch-scheduler warnings (``fused_lrs.adapters``) its scenario raised: none of these
flows attaches a torch scheduler to ours.

A result holds this rank's tensors, local shards under FSDP2: an elementwise update is right
everywhere if it is right on every rank's shard, and comparing locally needs no collective.

The optimizers are rows of the table (``tests/optimizers.py``), named by class in the
scenario (``fsdp:impl/setup/Class``), each with its representative configuration; the
scenarios every algorithm shares (DDP, the checkpoint formats) run ``ANY``. The schedule is
the table's warmup then cosine (``tests/schedule_table.py``).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import time
import traceback
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
LR = 0.01
STEPS, SAVE_AT = 8, 4   # resume scenarios: save after SAVE_AT steps, run to STEPS


def row(name: str):
    """The table's row of class ``name``."""
    from optimizers import OPTIMIZER_INFOS
    return next(info for info in OPTIMIZER_INFOS if info.name == name)


def spec():
    """Warmup then cosine, ours; ``torch_scheduler`` is torch's equivalent."""
    from schedule_table import BY_NAME
    return BY_NAME["warmup+cosine"][1]


def torch_scheduler(opt):
    from schedule_table import BY_NAME
    return BY_NAME["warmup+cosine"][0](opt)


def resume_spec():
    """The resume scenarios' schedule: a warmup (the counter matters) then a plateau (its
    state and scales must travel too), reported ``metric(k)`` after every step."""
    from fused_lrs.schedules import plateau, warmup
    return warmup(plateau(factor=0.5, patience=1, cooldown=1), 3)


def metric(k: int) -> float:
    """Step k's reported metric: a plateau from step 2, so the lr is halved after step 3 (the
    last before the save) and the cooldown is running at the save."""
    return (3.0, 2.0)[min(k, 1)] if k < 4 else 1.0


# ---------------------------------------------------------------- launcher

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenarios: list[str], out: str, timeout: float) -> list[dict]:
    """Run ``scenarios`` on ``WORLD`` spawned ranks; each rank's results, by rank."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, scenarios, out), daemon=True)
             for rank in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if hung:
        raise TimeoutError(f"distributed workers still running after {timeout:.0f} s")
    codes = [p.exitcode for p in procs]
    if any(codes):
        raise RuntimeError(f"distributed workers exited with {codes}")
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False)
            for r in range(WORLD)]


def _worker(rank: int, port: int, scenarios: list[str], out: str) -> None:
    torch.set_num_threads(1)           # a core a rank: CI has two cores for the two ranks
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    results = {}
    for name in scenarios:
        kind, _, arg = name.partition(":")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                results[name] = SCENARIOS[kind](arg, os.path.join(out, name.replace(":", "-")))
            except Exception:
                results[name] = {"error": traceback.format_exc()}
        results[name]["scheduler_warnings"] = [
            str(w.message) for w in seen if "torch LR scheduler" in str(w.message)]
        dist.barrier()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


# ---------------------------------------------------------------- models and loops

def mlp(seed: int = 0) -> nn.Module:
    """Two hidden layers and a head of one output: its [1, 16] weight and [1] bias leave rank 1
    an empty FSDP2 shard."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def shard(model: nn.Module, **options) -> nn.Module:
    from torch.distributed.fsdp import fully_shard
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **options)
    return fully_shard(model, **options)


def batch(k: int, micro: int = 0):
    """Step k's input on this rank: a function of (k, micro, rank), so a resumed run sees what
    the uninterrupted one saw."""
    gen = torch.Generator().manual_seed(1000 * k + 10 * micro + dist.get_rank())
    return torch.randn(4, 8, generator=gen)


def loss_of(model, k, micro=0):
    return model(batch(k, micro)).pow(2).mean()


def ours(params, impl, info=None, schedule=None):
    """Ours of ``info``'s representative (ANY's by default), with ``schedule`` (``spec()``'s
    warmup-cosine by default)."""
    from optimizers import ANY
    info = info or ANY
    return info.cls(params, lr=LR, schedule=schedule or spec(), impl=impl,
                    **info.representative)


def peer(params, info=None, dtensor=False):
    """The peer of ``info``'s representative (ANY's by default), with its fused kernel; on
    DTensor shards, its foreach path where the fused kernel has no sharding rule."""
    from optimizers import ANY
    info = info or ANY
    path = {"fused": True} if not dtensor or info.fused_peer_on_dtensor else {"foreach": True}
    if "foreach" not in inspect.signature(info.record.peer_class()).parameters:
        path.pop("foreach", None)           # lion_pytorch.Lion: its one step
    return info.peer(params, lr=LR, **path, **info.representative)


def train(model, opt, sched, start, stop, accumulate=1, clip=None, before=None, report=None):
    """Steps ``start..stop-1`` of torch's loop; ``accumulate`` micro-batches per step, all but
    the last under DDP's ``no_sync``; ``clip``: ``clip_grad_norm_`` before the step;
    ``before(k)`` runs first in step k; ``report``: the fused optimizer that gets
    ``report(metric(k))`` after step k."""
    for k in range(start, stop):
        if before is not None:
            before(k)
        for micro in range(accumulate):
            last = micro == accumulate - 1
            sync = contextlib.nullcontext() if last else model.no_sync()
            with sync:
                (loss_of(model, k, micro) / accumulate).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        if report is not None:
            report.report(metric(k))
        opt.zero_grad()


def local(x):
    """A tensor's local shard, detached and cloned (a DTensor's ``to_local``)."""
    from torch.distributed.tensor import DTensor
    x = x.to_local() if isinstance(x, DTensor) else x
    return x.detach().clone()


def snapshot(model, opt) -> dict:
    """This rank's parameters and every state tensor, in parameter order (local shards)."""
    params = list(model.parameters())
    inner = getattr(opt, "optim", opt)           # ZeRO's local optimizer
    return {"params": [local(p) for p in params],
            "state": [{k: local(v) for k, v in inner.state[p].items()}
                      if p in inner.state else {} for p in params]}


# ---------------------------------------------------------------- scenarios

def reallocate(model) -> None:
    """What FSDP2 does when a sharded parameter's data is replaced (``module.to()`` with
    swapped tensors, ``load_state_dict(assign=True)``): new local storage, re-registered
    through ``reset_sharded_param``, which re-points ``_local_tensor`` on the same DTensor."""
    from torch.distributed.fsdp import FSDPModule
    for module in model.modules():
        group = module._get_fsdp_state()._fsdp_param_group if isinstance(
            module, FSDPModule) else None
        for fsdp_param in group.fsdp_params if group is not None else ():
            param = fsdp_param.sharded_param
            param._local_tensor = param._local_tensor.clone()
            fsdp_param.reset_sharded_param()


def fsdp_vs_torch(arg, _):
    """FSDP2 ours (impl and row from ``arg``) against the peer (fused where its fused kernel
    takes DTensors) + scheduler, same model and data. ``arg``: impl/setup/Class, setup one of
    fp32, bf16 (MixedPrecisionPolicy), keep (reshard_after_forward=False), realloc (fp32,
    every shard reallocated before step SAVE_AT)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    impl, setup, name = arg.split("/")
    info = row(name)
    options = {"fp32": {}, "realloc": {}, "keep": dict(reshard_after_forward=False),
               "bf16": dict(mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                           reduce_dtype=torch.float32))}[setup]
    a, b = shard(mlp(), **options), shard(mlp(), **options)
    opt_a = ours(a.parameters(), impl, info)
    opt_b = peer(b.parameters(), info, dtensor=True)
    descriptions = []

    def before(model, opt):
        def hook(k):
            if setup == "realloc" and k == SAVE_AT:
                reallocate(model)
            descriptions.append(getattr(getattr(opt, "_cache", None), "description", None))
        return hook
    train(a, opt_a, None, 0, STEPS, before=before(a, opt_a))
    train(b, opt_b, torch_scheduler(opt_b), 0, STEPS, before=before(b, opt_b))
    # Descriptions ours built: the first step's, and one more after a reallocation.
    built = len({id(x) for x in descriptions[1:STEPS]} | {id(opt_a._cache.description)})
    return {"ours": snapshot(a, opt_a), "torch": snapshot(b, opt_b), "built": built,
            "t": int(opt_a.schedule_step),
            "described": opt_a._cache.description.wrappers is not None}


def ddp_vs_torch(impl, _):
    """DDP with gradient_as_bucket_view, 2 micro-batches (no_sync on the first) and
    clip_grad_norm_: ours against the peer (fused) + scheduler."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    a, b = (DDP(mlp(), gradient_as_bucket_view=True) for _ in range(2))
    opt_a = ours(a.parameters(), impl)
    opt_b = peer(b.parameters())
    train(a, opt_a, None, 0, STEPS, accumulate=2, clip=0.5)
    train(b, opt_b, torch_scheduler(opt_b), 0, STEPS, accumulate=2, clip=0.5)
    return {"ours": snapshot(a, opt_a), "torch": snapshot(b, opt_b),
            "t": int(opt_a.schedule_step)}


# What a user reads of the schedule without stepping: the counter, the lr (a device tensor, and
# floats) and the plateau's state (through state_dict).
READS = {"t": lambda opt: int(opt.schedule_step),
         "last_lr": lambda opt: opt.last_lr.clone(),
         "get_last_lr": lambda opt: opt.get_last_lr(),
         "plateau": lambda opt: {k: v.clone() for k, v
                                 in opt.state_dict()["fused_lrs"]["plateau"].items()}}


def _resume(make, save, load, path, impl="torch_fused"):
    """The uninterrupted run and the run saved after SAVE_AT steps and resumed in fresh objects
    (``make() -> (model, opt)``), both to STEPS, with ``resume_spec()`` and a report after every
    step; and each of ``READS`` on the saved optimizer at the save and on a freshly loaded one,
    before any step (each on its own load: a read adopts what a load left in the groups, which
    every read after it would then see)."""
    def inner(opt):
        return getattr(opt, "optim", opt)          # ZeRO's local optimizer: ours

    model, opt = make(impl)
    train(model, opt, None, 0, STEPS, report=inner(opt))
    uninterrupted = snapshot(model, opt)
    model, opt = make(impl)
    train(model, opt, None, 0, SAVE_AT, report=inner(opt))
    saved = {key: read(inner(opt)) for key, read in READS.items()}
    save(model, opt, path)
    dist.barrier()
    del model, opt
    loaded = {}
    for key, read in READS.items():
        model, opt = make(impl)
        info = load(model, opt, path)
        loaded[key] = read(inner(opt))
    train(model, opt, None, SAVE_AT, STEPS, report=inner(opt))
    return {"uninterrupted": uninterrupted, "resumed": snapshot(model, opt),
            "t": int(inner(opt).schedule_step), "saved": saved, "loaded": loaded,
            **(info or {})}


def _load_saved(model, opt, path):
    """Every rank loads what rank 0 saved with torch.save: model, then optimizer."""
    saved = torch.load(path)
    model.module.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optim"])


def ddp_torch_save(impl, path):
    """DDP; rank 0 saves model and optimizer with torch.save; every rank loads."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make(impl):
        model = DDP(mlp())
        return model, ours(model.parameters(), impl, schedule=resume_spec())

    def save(model, opt, path):
        if dist.get_rank() == 0:
            torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, path)

    return _resume(make, save, _load_saved, path, impl)


def zero(impl, path):
    """ZeroRedundancyOptimizer around ours under DDP: consolidate_state_dict on rank 0,
    torch.save, and every rank's load_state_dict."""
    from optimizers import ANY
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make(impl):
        model = DDP(mlp())
        return model, ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=ANY.cls, lr=LR, schedule=resume_spec(),
            impl=impl, **ANY.representative)

    def save(model, opt, path):
        opt.consolidate_state_dict(to=0)
        if dist.get_rank() == 0:
            torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, path)

    return _resume(make, save, _load_saved, path, impl)


def dcp(setup, path):
    """torch.distributed.checkpoint: get_*_state_dict, dcp.save; in fresh objects
    get_*_state_dict (DCP steps a fresh optimizer to make its state), dcp.load,
    set_*_state_dict. ``setup``: ddp, fsdp2, or fsdp2-flat (flatten_optimizer_state_dict)."""
    import torch.distributed.checkpoint as DCP
    from torch.distributed.checkpoint import state_dict as SD
    from torch.nn.parallel import DistributedDataParallel as DDP
    options = SD.StateDictOptions(flatten_optimizer_state_dict=setup.endswith("-flat"))

    def make(impl):
        model = shard(mlp()) if setup.startswith("fsdp2") else DDP(mlp())
        return model, ours(model.parameters(), impl, schedule=resume_spec())

    def save(model, opt, path):
        DCP.save({"model": SD.get_model_state_dict(model),
                  "optim": SD.get_optimizer_state_dict(model, opt, options=options)},
                 checkpoint_id=path)

    def load(model, opt, path):
        before = [local(p) for p in model.parameters()]
        sd = {"model": SD.get_model_state_dict(model),
              "optim": SD.get_optimizer_state_dict(model, opt, options=options)}
        # What DCP's state initialisation left: the counter, the weights, the step counts.
        fresh = {"t": int(opt.schedule_step),
                 "moved": any(not torch.equal(x, local(p))
                              for x, p in zip(before, model.parameters())),
                 "steps": [float(s["step"]) for s in opt.state.values()],
                 "states": len(opt.state)}
        DCP.load(sd, checkpoint_id=path)
        SD.set_model_state_dict(model, sd["model"])
        SD.set_optimizer_state_dict(model, opt, sd["optim"], options=options)
        return {"fresh": fresh}

    return _resume(make, save, load, path)


def full_state_dict(setup, path):
    """FSDP2, full (unsharded) state dicts offloaded to the CPU: rank 0 saves them with
    torch.save, every rank loads the file and hands it to set_*_state_dict, which shards it."""
    from torch.distributed.checkpoint import state_dict as SD
    options = SD.StateDictOptions(full_state_dict=True, cpu_offload=True)

    def make(impl):
        model = shard(mlp())
        return model, ours(model.parameters(), impl, schedule=resume_spec())

    def save(model, opt, path):
        sd = {"model": SD.get_model_state_dict(model, options=options),
              "optim": SD.get_optimizer_state_dict(model, opt, options=options)}
        if dist.get_rank() == 0:
            torch.save(sd, path)

    def load(model, opt, path):
        sd = torch.load(path)
        SD.set_model_state_dict(model, sd["model"], options=SD.StateDictOptions(
            full_state_dict=True))
        SD.set_optimizer_state_dict(model, opt, sd["optim"], options=SD.StateDictOptions(
            full_state_dict=True))

    return _resume(make, save, load, path)


def lr_find_ranks(arg, _):
    """lr_find on a DDP or FSDP2 model (``arg``: ddp/impl or fsdp2/impl), each rank on its own
    batches: the curve, the suggestion, this rank's own losses (recorded by loss_fn), and
    whether the model (this rank's shards) and the optimizer state came back unchanged."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from fused_lrs import lr_find
    wrap, impl = arg.split("/")
    model = DDP(mlp()) if wrap == "ddp" else shard(mlp())
    opt = ours(model.parameters(), impl)
    train(model, opt, None, 0, 2)               # some optimizer state to restore
    before = snapshot(model, opt)
    data = [(x, x.sum(1, keepdim=True).tanh()) for x in (batch(k) for k in range(6))]
    own = []

    def loss_fn(m, b):
        loss = (m(b[0]) - b[1]).pow(2).mean()
        own.append(loss.detach().clone())
        return loss

    result = lr_find(model, opt, loss_fn, data, steps=40)
    return {"lrs": result.lrs, "raw": result.raw_losses, "losses": result.losses,
            "suggestion": result.suggestion, "diverged_at": result.diverged_at,
            "own": torch.stack(own), "t": int(opt.schedule_step),
            "before": before, "after": snapshot(model, opt)}


SCENARIOS = {"fsdp": fsdp_vs_torch, "ddp": ddp_vs_torch, "ddp_save": ddp_torch_save,
             "zero": zero, "dcp": dcp, "full": full_state_dict, "lr_find": lr_find_ranks}
