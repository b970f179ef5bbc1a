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

Layouts: a record's ``flat`` update (torch's fused kernels) walks memory in storage order, so
the plan sets aside each parameter that is not dense or whose states are in another order
(``flat.py``): the reference updates it, or, with ``impl="torch_fused"`` named, it is refused.
Per step, each flat bucket's gradients are checked against its weights' layout: one C-level
``is_contiguous`` map (or ``stride`` map, for weights that are not all contiguous): 6.5 us
(10 us) for 76 tensors, 1% of adamw-0.7M's 0.54 ms step (torch 2.13, 2-core x86_64); a gradient
in another order is copied into its weight's layout for the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, is_

import torch

from fused_lrs.kernels import layout as L
from fused_lrs.optim import validate
from fused_lrs.optim.backends import flat
from fused_lrs.optim.backends import reference as ref
from fused_lrs.optim.backends.reference import ReferenceBackend
from fused_lrs.optim.step import StepDescription
from fused_lrs.schedules.base import group_values

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE = attrgetter("dtype")
_STRIDE = torch.Tensor.stride
_CONTIGUOUS = torch.Tensor.is_contiguous


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
    # A flat update without masters: the weights' strides, which the gradients must share
    # (None: any gradient goes), and whether every weight is contiguous (then ``is_contiguous``
    # is the check).
    strides: list | None = None
    contiguous: bool = False
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

    def __init__(self, device: torch.device, explicit: bool = False) -> None:
        self.device = device
        # Named by the user (impl="torch_fused"): a tensor the flat kernels cannot walk is
        # refused, not left to the reference.
        self.explicit = explicit
        self._desc, self._key, self._dtypes = None, None, None
        self._buckets: list[Bucket] = []
        self._aside: list[int] = []         # tensors the reference updates (layouts, flat.py)
        self._back: list[tuple] = []        # this step's gradients copied into another layout
        self._hps: list[dict] = []          # each group's row by name, for those
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
        if self.explicit and d.algorithm.cpu.flat:
            for i in range(len(d.params)):
                reason = flat.misfit(*self._kernel_tensors(d, i))
                if reason is not None:
                    raise flat.refusal(d.group_of[i], d.params[i], reason)

    @staticmethod
    def _kernel_tensors(d: StepDescription, i: int) -> tuple[torch.Tensor, list]:
        """Tensor ``i``'s weight (its master, if it has one) and states, as the kernel sees
        them."""
        weight = d.params[i] if d.masters[i] is None else d.masters[i]
        return weight, [col[i] for col in d.states if col[i] is not None]

    def _plan(self, d: StepDescription) -> None:
        """Bucket the description's tensors (once per description: the optimizer rebuilds it
        only when tensors, state or hyperparameters change)."""
        cpu = d.algorithm.cpu
        self._buckets, self._aside = [], []
        self._hps = [d.hyperparameters(g) for g in range(len(d.rows))]
        for g, members in enumerate(d.members):
            options = cpu.options(self._hps[g])
            kinds: dict[tuple, list[int]] = {}
            for i in members:
                if cpu.flat and flat.misfit(*self._kernel_tensors(d, i)) is not None:
                    self._aside.append(i)
                    continue
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
                if cpu.flat and not master:
                    bucket.strides = list(map(_STRIDE, weights))
                    bucket.contiguous = all(map(_CONTIGUOUS, weights))
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
        # Every bucket's gradients before any write: a weight found in another layout than
        # the plan's (a model converted with p.data = ...) means planning again.
        fitted = [self._gradients(d, b) for b in self._buckets]
        if any(map(is_, fitted, repeat(None))):
            self._desc = self._key = None
            self._back.clear()
            return self.step(d)
        lrs = group_values(d.schedules[0], d.t, self._bases, d.table).unbind()
        amp = dict(grad_scale=d.grad_scale, found_inf=d.found_inf)
        run = d.algorithm.cpu.run
        for b, grads in zip(self._buckets, fitted):
            run(b, grads, lrs[b.group], amp)
            if d.found_inf is not None:
                b.counts.sub_(d.found_inf)
            if b.params16:
                torch._foreach_copy_(b.params16, b.weights)
        if self._back:
            if d.grad_scale is not None:     # the kernel unscaled the copies in place
                for grad, copy in self._back:
                    grad.copy_(copy)
            self._back.clear()
        if self._aside:
            self._reference_update(d, lrs)
        d.advance_counters(None if d.found_inf is None else d.found_inf != 0)

    def _gradients(self, d: StepDescription, b: Bucket) -> list | None:
        """Bucket ``b``'s gradients as its update reads them: copied into the fp32 buffers with
        masters; for a flat update, in its weights' memory order (one in another order is
        copied into its weight's layout, and noted in ``_back`` to be copied back after
        GradScaler's in-place unscale). None: a weight's strides are not the plan's."""
        grads = [d.grads[i] for i in b.index]
        if b.grad_buffers:
            torch._foreach_copy_(b.grad_buffers, grads)
            return b.grad_buffers
        if b.strides is None or (all(map(_CONTIGUOUS, grads)) if b.contiguous
                                 else list(map(_STRIDE, grads)) == b.strides):
            return grads
        if list(map(_STRIDE, b.weights)) != b.strides:
            return None
        # Strides that differ only on size-1 dimensions (autograd allows it) cost this loop
        # every step: the answer is kept for the gradients' strides.
        strides = list(map(_STRIDE, grads))
        seen = b.cache.get("gradient_order")
        if seen is None or seen[0] != strides:
            seen = b.cache["gradient_order"] = (strides, [
                j for j, (g, w) in enumerate(zip(grads, b.weights))
                if not flat.same_order(g, w)])
        for j in seen[1]:
            copy = torch.empty_like(b.weights[j]).copy_(grads[j])
            self._back.append((grads[j], copy))
            grads[j] = copy
        return grads

    def _reference_update(self, d: StepDescription, lrs) -> None:
        """The tensors set aside by the plan (``flat.py``), one reference update each, with
        their gradients unscaled in place under GradScaler, as the fused kernels leave
        theirs."""
        skip = None if d.found_inf is None else d.found_inf != 0
        for i in self._aside:
            g, grad = d.group_of[i], d.grads[i]
            ref.update(d.algorithm, d.params[i], grad, [col[i] for col in d.states],
                       d.steps[i], {**self._hps[g], "lr": lrs[g]}, grad_scale=d.grad_scale,
                       skip=skip, master=d.masters[i],
                       scalars=[column[i] for column in d.scalars])
            if d.grad_scale is not None:
                unscaled = grad / d.grad_scale
                grad.copy_(unscaled if skip is None else torch.where(skip, grad, unscaled))
