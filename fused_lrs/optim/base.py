"""ScheduledOptimizer: what FusedAdamScheduled, FusedAdamWScheduled and FusedSGDScheduled share.

It is a ``torch.optim.Optimizer`` with device tensors of its own:
  * ``_t``, int64: the schedule counter, the number of ``step()`` calls completed;
  * ``state[p]["step"]``, float32 on the parameter's device: each parameter's own count, which
    advances only when the parameter had a gradient (torch's rule);
  * ``_table``, float64: the schedule's numbers; ``_skipped``: whether GradScaler skipped the
    last step.
``step()`` describes the step (``step.py``: tensors, group rows, schedules) and hands the
description to one backend (``backends/``): ``"triton"`` (one kernel launch on CUDA),
``"torch_fused"`` (torch's fused CPU kernels) or ``"reference"`` (plain PyTorch, the
specification). None of them reads a value back to the host. Under ``torch.compile`` the step is
one custom op (``op.py``) that carries the same description to the same backend.

The description is cached: it is rebuilt only when the set of parameters with a gradient, the
state, a hyperparameter or the schedule changes; a steady-state step only refreshes the
gradients. State tensors are therefore replaced only through ``load_state_dict`` (as in every
torch optimizer, assigning ``opt.state[p][...]`` by hand is not supported after the first step).
"""

from __future__ import annotations

import itertools
import weakref
from itertools import chain, compress, repeat
from operator import is_, is_not, itemgetter
from typing import Any, ClassVar

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from fused_lrs.optim import backends, dtensor
from fused_lrs.optim.backends import IMPLS
from fused_lrs.optim.checkpoint import Checkpoints, initializing_for_dcp
from fused_lrs.optim.op import forget as forget_owner
from fused_lrs.optim.op import step as step_op
from fused_lrs.optim.scheduling import Scheduling
from fused_lrs.optim.step import STATE_KEYS, StepDescription, to_flat
from fused_lrs.schedules import Schedule, constant
from fused_lrs.schedules.base import check_schedule

_OWNERS = itertools.count(1)


def _scalar_key(value):
    """A host-side identity for a hyperparameter: the number, or a tensor's id and version
    (in-place writes bump ``_version``), so checking it never reads the device."""
    if isinstance(value, torch.Tensor):
        return (id(value), value._version)
    if isinstance(value, (tuple, list)):
        return tuple(_scalar_key(v) for v in value)
    return value


def as_float(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class ScheduledOptimizer(Scheduling, Checkpoints, torch.optim.Optimizer):
    """Base class: argument checks, state, checkpoints and the choice of implementation.

    A subclass names its ``algorithm`` ("adam" or "sgd": the state slots are
    ``step.STATE_KEYS``), checks its groups (``_check_group``), creates its state
    (``_ensure_state``), and lays out its hyperparameters (``row_keys``, ``_group_row``).
    """

    algorithm: ClassVar[str]
    #: The hyperparameters every saved group of this optimizer holds: a checkpoint group that
    #: lacks one was saved by another kind of optimizer.
    group_keys: ClassVar[tuple[str, ...]]
    #: The group entries the kernel's group row is made of (a change rebuilds the row).
    row_keys: ClassVar[tuple[str, ...]]

    # GradScaler hands its scale and found_inf to step() (as torch's fused optimizers take
    # them): unscaling and the skip decision happen inside the launch, with no sync.
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict[str, Any], *, schedule: Schedule | None,
                 impl: str, differentiable: bool, hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        if differentiable:
            raise NotImplementedError(
                f"{type(self).__name__}: differentiable=True is not supported: the update runs as "
                "in-place tensor ops (or a Triton kernel) outside autograd, so no gradient can "
                "flow through step(); use torch.optim for higher-order optimization")
        if impl not in IMPLS:
            raise ValueError(f"{type(self).__name__}: impl must be one of {IMPLS}, got {impl!r}")
        schedule = check_schedule(type(self).__name__, "schedule",
                                  constant() if schedule is None else schedule)
        self.impl_requested = impl
        self._device: torch.device | None = None
        self._invalidate()
        super().__init__(params, defaults)
        self._t = torch.zeros((), dtype=torch.int64, device=self._device)
        self._skipped = torch.zeros((), dtype=torch.float32, device=self._device)
        self.hold_schedule_on_skip = bool(hold_schedule_on_skip)
        self._draw_owner()
        self.master_weights = bool(master_weights)
        self._rows_key, self._rows = None, None
        name = type(self).__name__
        self._momentum_schedule = None if momentum_schedule is None else check_schedule(
            name, "momentum_schedule", momentum_schedule)
        self._weight_decay_schedule = None if weight_decay_schedule is None else check_schedule(
            name, "weight_decay_schedule", weight_decay_schedule)
        self.schedule = schedule
        self._impl = self._choose_impl()        # an impl that cannot run raises here

    # ---------------------------------------------------------------- groups and checks

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, plus this class's checks. On any error the optimizer is
        left exactly as it was."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            device = self._check_params(group["params"])
            self._check_group(group)
            if "_schedule" in self.__dict__:  # (groups given to __init__: when it is set)
                self._check_schedules(self._schedules())
        except Exception:
            self.param_groups.pop()
            raise
        self._device = device
        self._invalidate()
        if "_schedule" in self.__dict__:   # (groups given to __init__: packed when it is set)
            self._pack_schedules(keep_state=True)       # which links the groups (checkpoint.py)

    def _check_params(self, params: list[torch.Tensor]) -> torch.device | None:
        """Check a new group's parameters; return the optimizer's device with them."""
        name = type(self).__name__
        if len(params) != len({id(p) for p in params}):
            raise ValueError(f"{name}: a parameter group lists the same parameter twice")
        for p in params:
            if p.is_complex():
                raise ValueError(f"{name}: complex parameters are not supported; optimize "
                                 "torch.view_as_real(p) as a real parameter instead")
            if not p.is_floating_point():
                raise ValueError(f"{name}: parameters must be floating point, got {p.dtype}")
            if p.is_sparse:
                raise ValueError(f"{name}: sparse parameters are not supported")
        device = self._device or (params[0].device if params else None)
        others = {p.device for p in params} - {device}
        if others:
            raise ValueError(f"{name}: all parameters must be on one device (one launch per "
                             f"step), got {device} and {others.pop()}; use one optimizer per "
                             "device")
        return device

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _check_lr(lr) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")

    # ---------------------------------------------------------------- the step

    @property
    def impl(self) -> str:
        """The backend ``step()`` uses: ``impl=`` resolved against the parameters' device and
        dtypes (``"triton"``, ``"torch_fused"`` or ``"reference"``)."""
        if self._impl is None:
            self._impl = self._choose_impl()
        return self._impl

    def _choose_impl(self) -> str:
        # The dtypes the update stores in: an fp32 master stands in for its 16-bit parameter.
        dtypes = {torch.float32 if self._wants_master(p) else p.dtype
                  for g in self.param_groups for p in g["params"]}
        scheduled = self._momentum_schedule is not None or self._weight_decay_schedule is not None
        return backends.choose(type(self).__name__, self.impl_requested, self._device,
                               self.algorithm, dtypes, scheduled)

    def _invalidate(self) -> None:
        """Forget the cached description, backend and choice of impl: the tensors, state or
        schedules changed."""
        self._description, self._description_key = None, None
        self._backend, self._impl = None, None

    def step(self, closure=None):
        """One update of every parameter with a gradient, at ``lr(t)`` for ``t`` steps completed.

        No host-device synchronisation: the schedule is evaluated on the device."""
        # torch's Optimizer wraps step() in a profiler record and its step hooks, which cost
        # ~10 us a step on a loaded 2-core host (benchmarks/bench_host.py): that wrapper runs
        # only while a hook is registered or a profiler records.
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or torch.autograd.profiler._is_profiler_enabled):
            return self._hooked_step(closure)
        return self._step(closure)

    step.hooked = True          # torch's Optimizer.__init__ leaves a hooked step() unwrapped

    def _step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            with torch.no_grad():
                self._compiled_step()
            return loss
        if not self.state and initializing_for_dcp():
            with torch.no_grad():
                self.prepare_state(self._gather())  # DCP makes state, no step (checkpoint.py)
            return loss
        grad_enabled = torch.is_grad_enabled()      # no_grad, without its context object
        torch._C._set_grad_enabled(False)
        try:
            description = self._describe()
            if self._backend is None:
                self._backend = backends.create(self.impl, self._device)
            self._backend.step(description)
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    _hooked_step = torch.optim.Optimizer.profile_hook_step(_step)

    def _compiled_step(self) -> None:
        """Under torch.compile: the step is one custom op (``op.py``), no Python bookkeeping
        in the graph (the description is built afresh, never cached, so dynamo guards on
        nothing but the tensors). State must exist already: ``init_state()``, or one eager
        step."""
        work = self._gather()
        self._require_state(work)
        step_op(**to_flat(self._build_description(work)), impl=self.impl, owner=self._owner)

    def _describe(self) -> StepDescription:
        """The description of this step: the cached one with this step's gradients, or, when
        the parameters with a gradient, the hyperparameters or the schedule changed, a new one,
        after checking every tensor and creating missing state (nothing is touched if a check
        fails). Reads host-side facts only."""
        self._sync_counter()     # a checkpoint loaded behind our back (ZeRO): checkpoint.py
        grads = [p.grad for g in self.param_groups for p in g["params"]]
        self.group_rows()
        # Which parameters have a gradient, in C-level loops (map, compress): at 148 tensors a
        # generator expression here cost more than the whole Triton launcher's host work.
        present = (list(map(is_not, grads, repeat(None)))
                   if any(map(is_, grads, repeat(None))) else None)      # None: all present
        # The state dict's identity and size too: opt.state.clear() (or a new dict) resets the
        # moments in torch, and must here, not leave the cached description on the old tensors.
        key = (present, self._rows_key, id(self.state), len(self.state))
        d = self._description
        if d is None or key != self._description_key or (
                d.wrappers is not None and not dtensor.current(d)):
            work = self._gather()
            if (self._device is not None and self._device.type == "cuda"
                    and torch.cuda.is_current_stream_capturing()):
                # State created during a capture is only recorded: every replay would zero
                # the moments and step counts again. (A rebuild is rare: the query is cheap.)
                self._require_state(work)
            self.check_gradients([p for ps in work for p in ps])
            backend = backends.BACKENDS[self.impl]
            name = type(self).__name__
            for p in (p for params in work for p in params):
                state = self.state.get(p, {})       # no {} inserted for a refused one
                backend.check(backend, name, p, p.grad, state)
                dtensor.check(name, p, p.grad, state)
            self.prepare_state(work)
            d = self._description = self._build_description(work)
            self._description_key = (present, self._rows_key, id(self.state), len(self.state))
        else:
            d.grads = grads if present is None else list(compress(grads, present))
            if d.wrappers is not None:      # FSDP2: new DTensor gradients every step
                d.grads = dtensor.local_grads(d.grads)
                if self.impl != "triton" and not dtensor.grads_match(d):
                    self.check_gradients(d.wrappers)
            elif self.impl != "triton":
                # What torch's kernels or the reference would trip on, refused before any
                # write. (The Triton backend checks gradients whose addresses are new.)
                self.check_gradients(d.params)
        d.grad_scale, d.found_inf = self._amp_tensors()
        d.hold_on_skip = self.hold_schedule_on_skip   # a plain attribute: may change any step
        return d

    def _require_state(self, work) -> None:
        """Refuse a step that would have to create state: under torch.compile or CUDA-graph
        capture it must exist already. (``.get``: a lookup in the state defaultdict would
        insert ``{}`` for the refused parameter.)"""
        if any("step" not in self.state.get(p, ()) for params in work for p in params):
            raise RuntimeError(f"{type(self).__name__}: some parameters have no optimizer state "
                               "yet; call opt.init_state() (or take one eager step) before "
                               "torch.compile or CUDA-graph capture")

    def _build_description(self, work) -> StepDescription:
        """A description of a step over ``work``, the parameters with a gradient per group."""
        params = [p for ps in work for p in ps]
        states = [self.state[p] for p in params]
        grad_scale, found_inf = self._amp_tensors()
        # Tensors the optimizer owns are read through __dict__: dynamo proxies a dict lookup,
        # while it cannot proxy an optimizer's own tensor attributes.
        d = StepDescription(
            algorithm=self.algorithm, params=params, grads=[p.grad for p in params],
            states=tuple([s.get(k) if k else None for s in states]
                         for k in STATE_KEYS[self.algorithm]),
            steps=[s["step"] for s in states], masters=[s.get("master") for s in states],
            group_of=[g for g, ps in enumerate(work) for _ in ps], rows=self.group_rows(),
            schedules=(self._schedule, self._momentum_schedule, self._weight_decay_schedule),
            table=self.__dict__["_table"], t=self.__dict__["_t"],
            skipped=self.__dict__["_skipped"], grad_scale=grad_scale, found_inf=found_inf,
            hold_on_skip=self.hold_schedule_on_skip)
        dtensor.unwrap(d)        # DTensor (FSDP2) parameters: every backend sees local shards
        return d

    def _amp_tensors(self) -> tuple:
        """GradScaler's tensors for this step, if ``scaler.step(opt)`` is the caller: it sets
        ``opt.grad_scale`` (None once ``scaler.unscale_(opt)`` ran) and ``opt.found_inf``."""
        return getattr(self, "grad_scale", None), getattr(self, "found_inf", None)

    @property
    def last_step_skipped(self) -> torch.Tensor:
        """Device bool tensor: whether GradScaler skipped the most recent ``step()`` (an inf or
        NaN gradient). Params, states and step counts were left as they were; the schedule
        counter advanced unless ``hold_schedule_on_skip``."""
        return self._skipped != 0

    def group_rows(self) -> list[list[float]]:
        """Each group's hyperparameters as the kernel's float64 row. Rebuilt only when an entry
        changes, judged from host facts alone (a tensor hyperparameter by its id and version),
        so reading the rows never synchronises."""
        # Fast path, every step: the very same value objects as last time, none a tensor or a
        # list (an immutable number or tuple that is the same object has the same value).
        values = list(map(itemgetter(*self.row_keys), self.param_groups))
        last = self.__dict__.get("_rows_values")
        if last is not None and len(last) == len(values) and all(
                map(is_, chain.from_iterable(values), chain.from_iterable(last))):
            return self._rows
        key = tuple(tuple(_scalar_key(g[k]) for k in self.row_keys) for g in self.param_groups)
        if key != self._rows_key:
            self._rows = [self._group_row(g) for g in self.param_groups]
            self._rows_key = key
        plain = not any(isinstance(x, (torch.Tensor, list)) for row in values for v in row
                        for x in (v if isinstance(v, tuple) else (v,)))
        self._rows_values = values if plain else None     # a tensor: its version decides
        return self._rows

    def _group_row(self, group: dict[str, Any]) -> list[float]:
        raise NotImplementedError

    def init_state(self) -> None:
        """Create the state of every parameter now, gradient or not, without stepping: what
        torch.compile and CUDA-graph capture need to find before their first step.

        It also marks every tensor the step reads or writes as having a static address, as
        torch's own optimizers do under compile, so that ``mode="reduce-overhead"`` can keep
        the step inside its CUDA graph instead of copying the mutated inputs."""
        self.prepare_state([g["params"] for g in self.param_groups])
        tensors = [self._t, self._table, *([self._plateau] if self._plateau is not None else [])]
        for group in self.param_groups:
            for p in group["params"]:
                tensors += [p, *(v for v in self.state[p].values() if v is not None)]
                if p.grad is not None:
                    tensors.append(p.grad)
        for x in tensors:
            torch._dynamo.mark_static_address(x)

    def _gather(self) -> list[list[torch.Tensor]]:
        """The parameters with a gradient, per group."""
        return [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]

    def check_gradients(self, params: list[torch.Tensor]) -> None:
        """Check what a step needs of each gradient of ``params``. torch itself guarantees a
        gradient's shape; its dtype may differ when the parameter's ``grad_dtype`` allows it,
        and it may be sparse. Called before anything is written."""
        name = type(self).__name__
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
            if p.grad.dtype != p.dtype:
                raise RuntimeError(f"{name}: a gradient of dtype {p.grad.dtype} does not "
                                   f"match its parameter's {p.dtype}")

    def prepare_state(self, work) -> None:
        """Create whatever state each parameter with a gradient lacks (torch's lazy init)."""
        for group, params in zip(self.param_groups, work):
            for p in params:
                self._ensure_state(p, self.state[p], group)

    def _ensure_state(self, p: torch.Tensor, state: dict, group: dict[str, Any]) -> None:
        """Create whatever state ``group``'s options need and ``state`` lacks."""
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps defaults, state and param_groups; a copy or a pickle also needs the
        # schedule (with its device table), its counter and the implementation. The cached
        # description, backend and group rows are rebuilt on demand.
        return {**super().__getstate__(), "_schedule": self._schedule,
                "_momentum_schedule": self._momentum_schedule,
                "_weight_decay_schedule": self._weight_decay_schedule,
                "_table": self._table, "_t": self._t, "impl_requested": self.impl_requested,
                "_plateau": self._plateau, "_plateau_key": None,
                "_table_groups": self._table_groups, "_plateau_spec": self._plateau_spec,
                "_plateau_row": self._plateau_row,
                "_skipped": self._skipped, "hold_schedule_on_skip": self.hold_schedule_on_skip,
                "master_weights": self.master_weights,
                "_device": self._device, "_rows_key": None, "_rows": None,
                "_rows_values": None, "_description": None, "_description_key": None,
                "_backend": None,
                "_impl": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # As torch's Adam and SGD do: a group saved before an option existed gets its default.
        super().__setstate__(state)
        self._draw_owner()                 # a copy is another optimizer: its own backends
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _draw_owner(self) -> None:
        """The number that names this optimizer to the compiled step's op (``op.py`` keeps
        one backend per number), released with its backends when the optimizer is collected."""
        self._owner = next(_OWNERS)
        weakref.finalize(self, forget_owner, self._owner)

    def _wants_master(self, p: torch.Tensor) -> bool:
        """Whether ``p`` keeps an fp32 master copy and fp32 states."""
        return self.master_weights and p.dtype in (torch.bfloat16, torch.float16)

    def _new_state_tensor(self, p: torch.Tensor) -> torch.Tensor:
        """A zero state tensor for ``p``: its dtype (torch's rule), or fp32 with master weights."""
        dtype = torch.float32 if self._wants_master(p) else p.dtype
        return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _ensure_master(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        if self._wants_master(p) and "master" not in state:
            state["master"] = p.detach().float()
