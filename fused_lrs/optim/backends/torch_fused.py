"""The CPU backend: torch's own fused CPU kernels (or foreach kernels, for the algorithms torch
does not fuse), with the lr computed on the device.

Per step: every group's ``lr(t)`` in one float64 evaluation of the schedule (a [groups] tensor,
no host read), then one call of the algorithm's CPU update (its record's ``cpu``: e.g.
``torch._fused_adamw_`` through its tensor-lr overload) per bucket of tensors that share a
group and a storage kind. Those kernels are what ``torch.optim.AdamW(fused=True)`` runs on CPU:
one vectorised pass per tensor over param, grad and states, instead of the reference's ~90 aten
ops and ~17 passes.

What they cannot do is the reference's: momentum and weight decay arrive as Python floats, so
a scheduled one (a device value) makes ``impl="auto"`` choose the reference.

The rest is torch's own fused path, reproduced:
  * step counts: each bucket's counts live in one buffer (``_one_buffer``), advanced by the
    update, and ``-= found_inf`` after it (GradScaler's skip); so do each of the record's scalar
    states (NAdam's ``mu_product``...), which a foreach update computes for the whole bucket at
    once, as [tensors] tensors;
  * GradScaler: torch's fused kernels divide the gradients by ``grad_scale`` *in place* and
    skip on ``found_inf``, as torch's fused optimizers do (so after ``scaler.step(opt)`` the
    gradients are unscaled, as with ``AdamW(fused=True)``); an update that cannot (its record
    says ``amp=False``) leaves such a step to the reference backend.
Master weights: a bf16/fp16 parameter's gradient is copied into an fp32 buffer (one per
parameter, kept), the kernel updates the fp32 master and states, and the master is copied back,
rounded to nearest even, into the parameter: the apex recipe, in three foreach calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

import torch

from fused_lrs.kernels import layout as L
from fused_lrs.optim import validate
from fused_lrs.optim.backends.reference import ReferenceBackend
from fused_lrs.optim.step import StepDescription
from fused_lrs.schedules.base import group_values

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE = attrgetter("dtype")


@dataclass
class Bucket:
    """Tensors of one group and one storage kind, as an algorithm's CPU update receives them."""

    group: int
    index: list[int]                        # tensors of the description
    weights: list[torch.Tensor]             # what the kernel updates: masters or params
    params16: list[torch.Tensor]            # with masters: the 16-bit params to round into
    grad_buffers: list[torch.Tensor]        # with masters: fp32 gradient buffers
    states: list[list[torch.Tensor]]        # the record's three slots, [] where not kept
    steps: list[torch.Tensor]
    options: dict                           # the update's numbers (its record's ``options``)
    counts: torch.Tensor | None = None      # one buffer that ``steps`` are views of
    warm: bool = False                      # every count is past 0: no first update to tell
    # Per scalar state of the record, one float32 buffer that the parameters' states are views of.
    scalars: list[torch.Tensor] = field(default_factory=list)
    # What the update keeps between steps (buffers and their views), made on its first run.
    cache: dict = field(default_factory=dict)


def _one_buffer(steps: list[torch.Tensor]) -> torch.Tensor:
    """Move a bucket's step counts (or one of its scalar states) into one float32 buffer: each
    0-dim state stays the same tensor object with the same value, but becomes a view of the
    buffer, so ``+= 1`` is one add. torch's ``_foreach_add_`` on CPU loops over 0-dim tensors
    one by one: 101 us for 72 counts against 2.2 us for one add of the buffer (torch 2.13, 1
    thread), a third of the ~0.3 ms step of the 72-tensor FSDP2 model of
    benchmarks/bench_fsdp.py."""
    counts = torch.stack(steps)
    storage = counts.untyped_storage()
    for j, step in enumerate(steps):
        step.set_(storage, j, (), ())
    return counts


class TorchFusedBackend:
    name = "torch_fused"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._desc, self._key, self._dtypes = None, None, None
        self._buckets: list[Bucket] = []
        self._bases = None
        self._reference = None

    @staticmethod
    def unsupported(device, algorithm, dtypes, scheduled_hyperparameters) -> str | None:
        if device is not None and device.type != "cpu":
            return f"it runs on CPU tensors, these are on {device}"
        if algorithm.cpu is None:
            return f"there is no CPU kernel for {algorithm.name}"
        if not set(dtypes) <= set(DTYPES):
            return (f"torch's CPU kernels take {[str(d) for d in DTYPES]}, got "
                    f"{sorted(map(str, set(dtypes) - set(DTYPES)))}")
        reason = algorithm.cpu.unsupported(set(dtypes))
        if reason is not None:
            return reason
        if scheduled_hyperparameters:
            return ("torch's CPU kernels take the momentum and weight decay as numbers; a "
                    "momentum_schedule or weight_decay_schedule needs impl='reference' (or "
                    "'triton' on CUDA)")
        return None

    @staticmethod
    def requirements(p, grad, states) -> None:
        """Nothing beyond what every backend needs (``optim/validate.py``)."""

    def _check(self, d: StepDescription) -> None:
        """The tensors of a new plan (a model cast after the optimizer was built, a compiled
        step's new description), checked as the optimizer checks them (``validate.py``): torch's
        kernels would raise only after earlier buckets were updated."""
        for i, p in enumerate(d.params):
            master = d.masters[i]
            states = [x for x in (*(col[i] for col in d.states), master) if x is not None]
            validate.tensor("fused_lrs::step", self, p, d.grads[i], states, master is not None)

    def _plan(self, d: StepDescription) -> None:
        """Bucket the description's tensors (once per description: the optimizer rebuilds it
        only when tensors, state or hyperparameters change)."""
        cpu = d.algorithm.cpu
        self._buckets = []
        for g, members in enumerate(d.members):
            hp = d.hyperparameters(g)
            options = cpu.options(hp)
            kinds: dict[tuple, list[int]] = {}
            for i in members:
                kinds.setdefault((d.params[i].dtype, d.masters[i] is not None), []).append(i)
            for (_, master), index in kinds.items():
                weights = [d.masters[i] if master else d.params[i] for i in index]
                states = [[col[i] for i in index] if col[index[0]] is not None else []
                          for col in d.states]
                bucket = Bucket(
                    group=g, index=index, weights=weights,
                    params16=[d.params[i] for i in index] if master else [],
                    grad_buffers=[torch.empty_like(w) for w in weights] if master else [],
                    states=states, steps=[d.steps[i] for i in index], options=options)
                bucket.counts = _one_buffer(bucket.steps)
                bucket.scalars = [_one_buffer([column[i] for i in index])
                                  for column in d.scalars]
                self._buckets.append(bucket)
        self._bases = torch.tensor([row[L.G_LR] for row in d.rows], dtype=torch.float64,
                                   device=d.t.device)

    def step(self, d: StepDescription) -> None:
        if d.found_inf is not None and not d.algorithm.cpu.amp:
            # GradScaler's skip decided on the device: the reference writes with torch.where.
            self._reference = self._reference or ReferenceBackend(self.device)
            return self._reference.step(d)
        dtypes = list(map(_DTYPE, d.params))   # a recast parameter (p.data = ...) keeps its id
        if d is not self._desc or dtypes != self._dtypes:
            # A new description (the optimizer's after a change, or the custom op's, one per
            # call) or a recast. Plan again only if it holds other tensors, numbers or dtypes;
            # the plan holds the tensors, so their ids cannot be reused while it lives.
            key = (tuple(map(id, (*d.params, *d.steps, *d.masters,
                                  *(x for c in (*d.states, *d.scalars) for x in c)))),
                   tuple(map(tuple, d.rows)), tuple(d.group_of), d.algorithm.name,
                   tuple(dtypes))
            if key != self._key:
                self._check(d)          # before any write, so a refusal changes nothing
                self._plan(d)
                self._key = key
            self._desc, self._dtypes = d, dtypes
        lrs = group_values(d.schedules[0], d.t, self._bases, d.table).unbind()
        amp = dict(grad_scale=d.grad_scale, found_inf=d.found_inf)
        run = d.algorithm.cpu.run
        for b in self._buckets:
            grads = [d.grads[i] for i in b.index]
            if b.grad_buffers:
                torch._foreach_copy_(b.grad_buffers, grads)
                grads = b.grad_buffers
            run(b, grads, lrs[b.group], amp)
            if d.found_inf is not None:
                b.counts.sub_(d.found_inf)
            if b.params16:
                torch._foreach_copy_(b.params16, b.weights)
        d.advance_counters(None if d.found_inf is None else d.found_inf != 0)
