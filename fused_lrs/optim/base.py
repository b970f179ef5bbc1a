"""ScheduledOptimizer: the ``torch.optim.Optimizer`` every fused optimizer class is.

A class names its algorithm's record (``algorithm``, ``fused_lrs/algorithms/``) and its
``__init__`` signature; everything else is here, the same for every algorithm:
  * ``state[p]["step"]``, float32 on the parameter's device: each parameter's own count, which
    advances only when the parameter had a gradient (torch's rule), beside the record's state
    slots and 0-dim scalar states (torch's keys);
  * the schedules, their counter ``t`` and table: one ``ScheduleState`` (``schedule_state.py``);
    checkpoints are functions over the optimizer and it (``checkpoint.py``);
  * ``step()`` describes the step (``step.py``: tensors, group rows, schedules) and hands the
    description to one backend (``backends/``): ``"triton"`` (one kernel launch on CUDA),
    ``"torch_fused"`` (torch's CPU kernels) or ``"reference"`` (plain PyTorch, the
    specification). None of them reads a value back to the host. Under ``torch.compile`` the
    step is one custom op (``op.py``) that carries the same description to the same backend
    (``compiled.py``: the compiled step, its state, CUDA-graph capture).

The description is cached (``_Cache``, with everything else that is derived and rebuilt on
demand): it is rebuilt only when the set of parameters with a gradient, the state, a
hyperparameter or the schedule changes; a steady-state step only refreshes the gradients. State
tensors are therefore replaced only through ``load_state_dict`` (as in every torch optimizer,
assigning ``opt.state[p][...]`` by hand is not supported after the first step).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import attrgetter, contains, is_, is_not, itemgetter
from typing import Any, ClassVar

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from fused_lrs import adapters
from fused_lrs.kernels import layout
from fused_lrs.optim import backends, checkpoint, compiled, docstring, dtensor, validate
from fused_lrs.optim.backends import IMPLS
from fused_lrs.optim.op import forget as forget_owner
from fused_lrs.optim.op import know as op_knows
from fused_lrs.optim.schedule_state import ScheduleState, check_specs
from fused_lrs.optim.step import StepDescription
from fused_lrs.schedules import Schedule, constant
from fused_lrs.schedules.base import check_schedule

_OWNERS = itertools.count(1)
_GRAD = attrgetter("grad")


def _scalar_key(value):
    """A host-side identity for a hyperparameter: the number, or a tensor's id and version
    (in-place writes bump ``_version``), so checking it never reads the device."""
    if isinstance(value, torch.Tensor):
        return (id(value), value._version)
    if isinstance(value, (tuple, list)):
        return tuple(_scalar_key(v) for v in value)
    return value


@dataclass
class _Cache:
    """What the optimizer derives from its groups, state and schedules, and rebuilds on demand:
    never pickled or copied."""

    description: StepDescription | None = None
    key: tuple | None = None             # what the description was built for
    params: list | None = None           # ... and the groups' parameters, in order
    backend: Any = None
    impl: str | None = None
    rows: list | None = None             # the group rows, and the host facts they came from
    rows_key: tuple | None = None
    rows_values: list | None = None
    warned_scheduler: bool = False       # a torch scheduler's initial_lr was seen


class ScheduledOptimizer(torch.optim.Optimizer):
    """Base class: argument checks, state, checkpoints and the choice of implementation."""

    algorithm: ClassVar[Any]     # the record (fused_lrs/algorithms/record.py)

    # GradScaler hands its scale and found_inf to step() (as torch's fused optimizers take
    # them): unscaling and the skip decision happen inside the launch, with no sync.
    _step_supports_amp_scaling = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "algorithm" in cls.__dict__:      # a class of the registry
            op_knows(cls.algorithm)          # the compiled step's op runs it by name
            cls.__doc__ = docstring.compose(cls.__doc__, cls.algorithm)

    def __init__(self, params, defaults: dict[str, Any], *, schedule: Schedule | None,
                 impl: str, hold_schedule_on_skip: bool = False,
                 momentum_schedule: Schedule | None = None,
                 weight_decay_schedule: Schedule | None = None,
                 master_weights: bool = False) -> None:
        name = type(self).__name__
        self.algorithm.check_group(defaults)      # torch checks the defaults before anything
        if defaults.get("differentiable"):
            raise NotImplementedError(
                f"{name}: differentiable=True is not supported: the update runs as in-place "
                "tensor ops (or a Triton kernel) outside autograd, so no gradient can flow "
                "through step(); use torch.optim for higher-order optimization")
        if impl not in IMPLS:
            raise ValueError(f"{name}: impl must be one of {IMPLS}, got {impl!r}")
        specs = (check_schedule(name, "schedule", constant() if schedule is None else schedule),
                 momentum_schedule, weight_decay_schedule)
        self.impl_requested = impl
        self.master_weights = bool(master_weights)
        self.hold_schedule_on_skip = bool(hold_schedule_on_skip)
        self._device: torch.device | None = None
        self._cache = _Cache()
        # Made once torch's __init__ has added the groups given here (add_param_group below
        # checks the schedules against the groups only after that: a per-group spec holds
        # values for all of them).
        self._schedule_state: ScheduleState | None = None
        super().__init__(params, defaults)
        groups = len(self.param_groups)
        self._schedule_state = ScheduleState(self._check_specs(specs, groups), self._device,
                                             groups)
        self._packed()
        self._draw_owner()
        if self.algorithm.eager_state:       # the peer makes every state at construction
            self.prepare_state([g["params"] for g in self.param_groups])
        self._cache.impl = self._choose_impl()       # an impl that cannot run raises here

    # ---------------------------------------------------------------- groups and checks

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, plus this class's checks. On any error the optimizer is
        left exactly as it was."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        state = self._schedule_state
        try:
            device = validate.params(type(self).__name__, group["params"], self._device)
            self.algorithm.check_group(group)
            if state is not None:
                self._check_specs(state.specs, len(self.param_groups))
        except Exception:
            self.param_groups.pop()
            raise
        self._device = device
        if state is not None:
            state.pack(len(self.param_groups), keep_plateau=True)
            self._packed()
        self._invalidate()

    def _check_specs(self, specs, groups: int) -> tuple:
        name = type(self).__name__
        if specs[1] is not None and self.algorithm.momentum is None:
            raise ValueError(f"{name}: momentum_schedule: {self.algorithm.peer} has no "
                             "momentum coefficient to schedule")
        return check_specs(name, specs, groups)

    # ---------------------------------------------------------------- the schedules

    @property
    def schedule(self) -> Schedule:
        """The lr schedule spec. Setting it uploads the schedules' table to the device (new
        numbers never recompile: the kernel is keyed by the specs' kinds only)."""
        return self._schedule_state.specs[0]

    @schedule.setter
    def schedule(self, spec: Schedule) -> None:
        self._replace_schedules((spec, *self._schedule_state.specs[1:]))

    @property
    def momentum_schedule(self) -> Schedule | None:
        """The schedule of the momentum-like coefficient (Adam's beta1, SGD's momentum; None:
        the group's value), e.g. ``one_cycle_momentum(...)`` for torch's
        ``OneCycleLR(cycle_momentum=True)``."""
        return self._schedule_state.specs[1]

    @property
    def weight_decay_schedule(self) -> Schedule | None:
        """The schedule of the weight decay (None: the group's value), e.g. ``cosine(T)``."""
        return self._schedule_state.specs[2]

    def set_schedule(self, schedule: Schedule, t: int | None = None) -> None:
        """Replace the schedule, and optionally its position ``t`` (steps completed), e.g. with
        ``from_torch(sched)`` and ``torch_position(sched)`` when taking over a torch run."""
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise ValueError(f"{type(self).__name__}: t must be an integer >= 0, got {t!r}")
        self.schedule = schedule
        if t is not None:
            self._schedule_state.t.fill_(t)

    def _replace_schedules(self, specs) -> None:
        """New specs (checked first: a refusal changes nothing), the counter kept."""
        state = self._schedule_state
        state.specs = self._check_specs(specs, len(self.param_groups))
        state.pack(len(self.param_groups))
        self._packed()

    def _packed(self) -> None:
        """After the table is packed: the groups carry the counter and plateau
        (``checkpoint.py``), and a plateau's constants are made now, so that a compiled
        ``report()`` finds them made."""
        state = self._schedule_state
        if state.plateau is not None:
            state.plateau_constants(self._base_lrs())
        checkpoint.link(self)
        self._invalidate()

    def _base_lrs(self) -> list[float]:
        return [row[layout.G_LR] for row in self.group_rows()]

    @property
    def schedule_step(self) -> torch.Tensor:
        """The schedule counter: a 0-dim int64 device tensor (steps completed)."""
        checkpoint.sync(self)
        return self._schedule_state.t

    @property
    def last_lr(self) -> torch.Tensor:
        """float64 device tensor: the lr each group's most recent ``step()`` used, ``lr(t - 1)``
        after ``t`` steps (``lr(0)`` before the first). Computed on the device, so logging it
        costs no sync until it is read. (A torch scheduler's ``get_last_lr()`` after
        ``scheduler.step()`` is the lr of the *next* step, ``lr(t)``.)"""
        checkpoint.sync(self)
        return self._schedule_state.last_lr([g["lr"] for g in self.param_groups])

    def get_last_lr(self) -> list[float]:
        """``last_lr`` as Python floats: the lr each group's most recent ``step()`` used.

        This synchronises with the device (it reads ``last_lr`` back); use ``last_lr`` in a
        loop that must not wait."""
        return self.last_lr.tolist()

    def report(self, metric) -> None:
        """torch ``ReduceLROnPlateau.step(metric)`` for a schedule that holds
        ``plateau(...)``: updates the plateau's state on the device (``schedules/plateau.py``).
        ``metric``: a 0-dim tensor (or a float). Nothing is read back to the host, and under
        ``torch.compile`` a new metric value does not recompile."""
        checkpoint.sync(self)
        self._schedule_state.report(type(self).__name__, metric, self._base_lrs())

    @property
    def last_step_skipped(self) -> torch.Tensor:
        """Device bool tensor: whether GradScaler skipped the most recent ``step()`` (an inf or
        NaN gradient). Params, states and step counts were left as they were; the schedule
        counter advanced unless ``hold_schedule_on_skip``."""
        return self._schedule_state.skipped != 0

    def as_lr_scheduler(self):
        """A torch ``LRScheduler`` for frameworks that want one beside the optimizer (HF
        Trainer, Lightning): its ``step()`` changes nothing and its ``get_last_lr()`` is the lr
        this optimizer's last step used (``fused_lrs.adapters``)."""
        return adapters.as_lr_scheduler(self)

    def __setattr__(self, name: str, value) -> None:
        # Every torch LRScheduler wraps the optimizer's step on attaching (the wrapper carries
        # _wrapped_by_lr_sched); here that scheduler would rewrite the base lr: warn, once.
        if name == "step" and getattr(value, "_wrapped_by_lr_sched", False):
            adapters.warn_torch_scheduler(self)
        super().__setattr__(name, value)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """torch's layout (``state`` and ``param_groups``, loadable by the peer optimizer) plus
        a ``"fused_lrs"`` entry: the schedules and their counter (``checkpoint.py``)."""
        return checkpoint.state_dict(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint saved here or by the peer optimizer; a bad one raises and changes
        nothing (``checkpoint.py``)."""
        checkpoint.load_state_dict(self, state_dict)

    # ---------------------------------------------------------------- the step

    @property
    def impl(self) -> str:
        """The backend ``step()`` uses: ``impl=`` resolved against the parameters' device and
        dtypes (``"triton"``, ``"torch_fused"`` or ``"reference"``)."""
        if self._cache.impl is None:
            self._cache.impl = self._choose_impl()
        return self._cache.impl

    def _choose_impl(self) -> str:
        # The dtypes the update stores in: an fp32 master stands in for its 16-bit parameter.
        dtypes = {torch.float32 if self._wants_master(p) else p.dtype
                  for g in self.param_groups for p in g["params"]}
        specs = self._schedule_state.specs
        return backends.choose(type(self).__name__, self.impl_requested, self._device,
                               self.algorithm, dtypes, specs[1] is not None or specs[2] is not None)

    def _invalidate(self) -> None:
        """Forget the cached description, backend and choice of impl: the tensors, state or
        schedules changed."""
        cache = self._cache
        cache.description, cache.key, cache.backend, cache.impl = None, None, None, None

    def step(self, closure=None):
        """One update of every parameter with a gradient, at ``lr(t)`` for ``t`` steps completed.

        No host-device synchronisation: the schedule is evaluated on the device."""
        # torch's Optimizer wraps step() in a profiler record and its step hooks, a cost
        # benchmarks/bench_host.py shows next to the whole host work of a step: that wrapper
        # runs only while a hook is registered or a profiler records.
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
                compiled.step(self)             # one custom op (compiled.py)
        elif compiled.dynamo_callback() is not None:
            # An eager step inside a compiled function: dynamo off, or it would trace the
            # backends (compiled.py).
            compiled.without_dynamo(self._eager_step)()
        else:
            self._eager_step()
        return loss

    _hooked_step = torch.optim.Optimizer.profile_hook_step(_step)

    def _eager_step(self) -> None:
        if not self.state and checkpoint.initializing_for_dcp():
            with torch.no_grad():
                self.prepare_state(self._gather())  # DCP makes state, no step (checkpoint.py)
            return
        grad_enabled = torch.is_grad_enabled()      # no_grad, without its context object
        torch._C._set_grad_enabled(False)
        try:
            description = self._describe()
            cache = self._cache
            if cache.backend is None:
                cache.backend = backends.create(self.impl, self._device,
                                                explicit=self.impl_requested != "auto")
            cache.backend.step(description)
        finally:
            torch._C._set_grad_enabled(grad_enabled)

    def _describe(self) -> StepDescription:
        """The description of this step: the cached one with this step's gradients, or, when
        the parameters with a gradient, the hyperparameters or the schedule changed, a new one,
        after checking every tensor and creating missing state (nothing is touched if a check
        fails). Reads host-side facts only."""
        checkpoint.sync(self)    # a checkpoint loaded behind our back (ZeRO)
        cache = self._cache
        groups = self.param_groups
        if not cache.warned_scheduler and any(map(contains, groups, repeat("initial_lr"))):
            # A torch LRScheduler writes initial_lr into the groups it drives, also through a
            # wrapper of this optimizer (accelerate's, under HF Trainer): it rewrites the base
            # lr that the fused schedule scales.
            cache.warned_scheduler = True
            adapters.warn_torch_scheduler(self)
        params = [p for g in groups for p in g["params"]]
        grads = list(map(_GRAD, params))
        self.group_rows()
        # Which parameters have a gradient, in C-level loops (map, compress): at 148 tensors a
        # generator expression here cost more than the whole Triton launcher's host work.
        present = (list(map(is_not, grads, repeat(None)))
                   if any(map(is_, grads, repeat(None))) else None)      # None: all present
        # The state dict's identity and size too: opt.state.clear() (or a new dict) resets the
        # moments in torch, and must here, not leave the cached description on the old tensors.
        key = (present, cache.rows_key, id(self.state), len(self.state))
        d = cache.description
        # And the parameters themselves, by identity and in order: a group's list edited in
        # place (a tensor replaced, the list reordered) must not leave the description stepping
        # the old tensors with the new gradients (2.5 us at 148 tensors; ids in the key: 5).
        cached = cache.params
        if (d is None or key != cache.key or len(params) != len(cached)
                or not all(map(is_, params, cached))
                or (d.wrappers is not None and not dtensor.current(d))):
            work = self._gather()
            if compiled.capturing(self):
                # State created during a capture is only recorded: every replay would zero
                # the moments and step counts again. (A rebuild is rare: the query is cheap.)
                compiled.require_state(self, work)
            self._check_tensors([p for ps in work for p in ps])
            self.prepare_state(work)
            d = cache.description = self._build_description(work, self.group_rows())
            cache.key = (present, cache.rows_key, id(self.state), len(self.state))
            cache.params = params
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

    def _check_tensors(self, params: list[torch.Tensor]) -> None:
        """Everything a new description's tensors need (``validate.py``, ``dtensor.check``),
        checked before any state is created."""
        name = type(self).__name__
        backend = backends.BACKENDS[self.impl]
        local = dtensor.local
        counters = self.algorithm.counters      # 0-dim float32 values, plain tensors
        for p in params:
            state = self.state.get(p, {})       # no {} inserted for a refused one
            state = {k: v for k, v in state.items() if k not in counters}
            dtensor.check(name, p, p.grad, state)
            tensors = [local(v) for v in state.values() if isinstance(v, torch.Tensor)]
            validate.tensor(name, backend, local(p), local(p.grad), tensors,
                            self._wants_master(p))

    def check_gradients(self, params: list[torch.Tensor]) -> None:
        """Check what a step needs of each gradient of ``params`` (``validate.gradient``),
        before anything is written."""
        name = type(self).__name__
        for p in params:
            validate.gradient(name, p, p.grad)

    def _init_group(self) -> None:
        """Make the state that the parameters with a gradient lack: dynamo runs a method of
        this name eagerly while it traces a compiled step, as for torch's optimizers
        (``compiled.py``)."""
        compiled.init_group(self)

    def _build_description(self, work, rows) -> StepDescription:
        """A description of a step over ``work``, the parameters with a gradient per group, with
        the groups' ``rows``."""
        params = [p for ps in work for p in ps]
        states = [self.state[p] for p in params]
        group_of = [g for g, ps in enumerate(work) for _ in ps]
        # A slot goes to the update only where its group's options keep it now, as torch reads
        # the group every step: a group that turned amsgrad, centered or momentum off keeps its
        # tensor in the state, untouched, and steps without it.
        keys = [slot.key for slot in self.algorithm.slots]
        keys += [None] * (3 - len(keys))
        kept = [self.algorithm.keeps(group) for group in self.param_groups]   # 3 flags each
        columns = tuple([s.get(k) if kept[g][c] else None for s, g in zip(states, group_of)]
                        for c, k in enumerate(keys))
        grad_scale, found_inf = self._amp_tensors()
        # The schedule state's tensors are read through __dict__: dynamo proxies a dict lookup,
        # while it cannot proxy an object's own tensor attributes.
        schedules = self._schedule_state.__dict__
        d = StepDescription(
            algorithm=self.algorithm, params=params, grads=[p.grad for p in params],
            states=columns,
            steps=[s["step"] for s in states], masters=[s.get("master") for s in states],
            group_of=group_of, rows=rows,
            schedules=schedules["specs"], table=schedules["table"], t=schedules["t"],
            skipped=schedules["skipped"], grad_scale=grad_scale, found_inf=found_inf,
            hold_on_skip=self.hold_schedule_on_skip,
            scalars=tuple([s[key] for s in states] for key in self.algorithm.scalar_keys))
        dtensor.unwrap(d)        # DTensor (FSDP2) parameters: every backend sees local shards
        return d

    def _amp_tensors(self) -> tuple:
        """GradScaler's tensors for this step, if ``scaler.step(opt)`` is the caller: it sets
        ``opt.grad_scale`` (None once ``scaler.unscale_(opt)`` ran) and ``opt.found_inf``."""
        return getattr(self, "grad_scale", None), getattr(self, "found_inf", None)

    def group_rows(self) -> list[list[float]]:
        """Each group's hyperparameters as the kernel's float64 row (the record's layout).
        Rebuilt only when an entry changes, judged from host facts alone (a tensor
        hyperparameter by its id and version), so reading the rows never synchronises."""
        cache, row_keys = self._cache, self.algorithm.row_keys
        # Fast path, every step: the very same value objects as last time, none a tensor or a
        # list (an immutable number or tuple that is the same object has the same value).
        values = list(map(itemgetter(*row_keys), self.param_groups))
        last = cache.rows_values
        if last is not None and len(last) == len(values) and all(
                map(is_, chain.from_iterable(values), chain.from_iterable(last))):
            return cache.rows
        key = tuple(tuple(_scalar_key(g[k]) for k in row_keys) for g in self.param_groups)
        if key != cache.rows_key:
            cache.rows = [self.algorithm.row(g, self.defaults) for g in self.param_groups]
            cache.rows_key = key
        plain = not any(isinstance(x, (torch.Tensor, list)) for row in values for v in row
                        for x in (v if isinstance(v, tuple) else (v,)))
        cache.rows_values = values if plain else None     # a tensor: its version decides
        return cache.rows

    # ---------------------------------------------------------------- state

    def init_state(self) -> None:
        """Create the state of every parameter now, gradient or not, without stepping: what
        CUDA-graph capture needs to find before its first step (a compiled step makes what
        it lacks on its first call, as torch's optimizers do).

        It also marks every tensor the step reads or writes as having a static address, as
        torch's own optimizers do under compile, so that ``mode="reduce-overhead"`` can keep
        the step inside its CUDA graph instead of copying the mutated inputs."""
        compiled.init_state(self)

    def _gather(self) -> list[list[torch.Tensor]]:
        """The parameters with a gradient, per group."""
        return [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]

    def prepare_state(self, work) -> None:
        """Create whatever state each parameter of ``work`` (lists per group) lacks, as its
        group's options need (torch's lazy init): the step count, the record's scalar states
        and its slots."""
        algorithm = self.algorithm
        for group, params in zip(self.param_groups, work):
            kept = [(slot, self.defaults[slot.initial] if slot.initial else 0.0)
                    for slot in algorithm.slots if slot.present(group)]
            scalars = [(scalar.key, scalar.start(group)) for scalar in algorithm.scalars]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                for key, value in scalars:
                    if key not in state:
                        state[key] = torch.full((), value, dtype=torch.float32, device=p.device)
                for slot, value in kept:
                    if slot.key not in state:
                        state[slot.key] = self._new_state_tensor(p, value)
                        if algorithm.first_update_copies:
                            # The count of updates made with this slot: 0 makes the next one
                            # copy the gradient in, as torch does for a missing buffer.
                            state["step"].zero_()
                if self._wants_master(p) and "master" not in state:
                    state["master"] = p.detach().float()

    def _wants_master(self, p: torch.Tensor) -> bool:
        """Whether ``p`` keeps an fp32 master copy and fp32 states."""
        return self.master_weights and p.dtype in (torch.bfloat16, torch.float16)

    def _new_state_tensor(self, p: torch.Tensor, value: float) -> torch.Tensor:
        """A state tensor for ``p`` filled with ``value``: its dtype (torch's rule), or fp32
        with master weights."""
        dtype = torch.float32 if self._wants_master(p) else p.dtype
        return torch.full_like(p, value, dtype=dtype, memory_format=torch.preserve_format)

    # ---------------------------------------------------------------- copies

    def __getstate__(self) -> dict[str, Any]:
        # Everything but what is derived (the cache, rebuilt on demand; the owner number, drawn
        # anew: a copy is another optimizer) and torch's hooks (its __setstate__ makes them).
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_cache", "_owner") and not k.startswith("_optimizer_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also what torch's load_state_dict calls, with only "state" and "param_groups".
        # The class's own defaults: torch's __setstate__ adds "differentiable" to them, which a
        # class mirroring a peer without one (lion_pytorch) must not put in its groups.
        own = set(state.get("defaults", getattr(self, "defaults", {})))
        super().__setstate__(state)
        self._cache = _Cache()
        self._draw_owner()                 # a copy is another optimizer: its own backends
        # As torch's optimizers do: a group saved before an option existed gets its default.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key in own:
                    group.setdefault(key, value)
        if "_schedule_state" in state:     # a copy or an unpickle, not a load_state_dict
            # A plain pickle copies the scale views apart from the table they view.
            self._schedule_state.relink()
            checkpoint.link(self)

    def _draw_owner(self) -> None:
        """The number that names this optimizer to the compiled step's op (``op.py`` keeps
        one backend per number), released with its backends when the optimizer is collected."""
        self._owner = next(_OWNERS)
        weakref.finalize(self, forget_owner, self._owner)
