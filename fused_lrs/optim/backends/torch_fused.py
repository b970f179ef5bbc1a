"""The CPU backend: torch's own fused CPU kernels, with the lr computed on the device.

Per step: every group's ``lr(t)`` in one float64 evaluation of the schedule (a [groups] tensor,
no host read), then one call of ``torch._fused_adam_`` / ``_fused_adamw_`` / ``_fused_sgd_``
(their tensor-lr overloads) per bucket of tensors that share a group and a storage kind. Those
kernels are what ``torch.optim.AdamW(fused=True)`` runs on CPU: one vectorised pass per tensor
over param, grad and states, instead of the reference's ~90 aten ops and ~17 passes.

What they cannot do is the reference's: beta1 / momentum and weight decay arrive as Python
floats, so a scheduled one (a device value) makes ``impl="auto"`` choose the reference.

The rest is torch's own fused path, reproduced:
  * step counts: ``+= 1`` before the kernel, ``-= found_inf`` after it (GradScaler's skip);
  * GradScaler: the kernels divide the gradients by ``grad_scale`` *in place* and skip on
    ``found_inf``, as torch's fused optimizers do (so after ``scaler.step(opt)`` the gradients
    are unscaled, as with ``AdamW(fused=True)``);
  * SGD's first momentum update copies the gradient (``is_first_step``): a bucket is split by
    ``step == 0``, read from the CPU counts, until every count is past 0.
Master weights: a bf16/fp16 parameter's gradient is copied into an fp32 buffer (one per
parameter, kept), the kernel updates the fp32 master and states, and the master is copied back,
rounded to nearest even, into the parameter: the apex recipe, in three foreach calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import torch

from fused_lrs.kernels import layout as L
from fused_lrs.optim.step import ADAM, SGD, StepDescription
from fused_lrs.schedules.base import group_values

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE = attrgetter("dtype")


@dataclass
class _Bucket:
    group: int
    index: list[int]                        # tensors of the description
    weights: list[torch.Tensor]             # what the kernel updates: masters or params
    params16: list[torch.Tensor]            # with masters: the 16-bit params to round into
    grad_buffers: list[torch.Tensor]        # with masters: fp32 gradient buffers
    states: list[list[torch.Tensor]]        # the kernel's state lists
    steps: list[torch.Tensor]
    kwargs: dict                            # the kernel's number arguments
    warm: bool = False                      # SGD: every step count is past 0
    counts: torch.Tensor | None = None      # one buffer that ``steps`` are views of


def _one_buffer(steps: list[torch.Tensor]) -> torch.Tensor:
    """Move a bucket's step counts into one float32 buffer: each state's 0-dim ``step`` stays
    the same tensor object with the same value, but becomes a view of the buffer, so ``+= 1``
    is one add. torch's ``_foreach_add_`` on CPU loops over 0-dim tensors one by one: 101 us
    for 72 counts against 2.2 us for one add of the buffer (torch 2.13, 1 thread), a third of
    the ~0.3 ms step of the 72-tensor FSDP2 model of benchmarks/bench_fsdp.py."""
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
        self._buckets: list[_Bucket] = []
        self._bases = None

    @staticmethod
    def unsupported(device, algorithm, dtypes, scheduled_hyperparameters) -> str | None:
        if device is not None and device.type != "cpu":
            return f"it runs on CPU tensors, these are on {device}"
        if not set(dtypes) <= set(DTYPES):
            return (f"torch's fused kernels take {[str(d) for d in DTYPES]}, got "
                    f"{sorted(map(str, set(dtypes) - set(DTYPES)))}")
        if algorithm == SGD and set(dtypes) & {torch.bfloat16, torch.float16}:
            # pytorch/pytorch#191763: torch 2.12 and 2.13's fused CPU SGD skips every full
            # SIMD block of a bf16/fp16 tensor (measured here: 0.26 off after one step of lr 0.1
            # on 64 elements). With master_weights=True the kernel sees fp32 and is right.
            return ("torch's fused CPU SGD miscomputes bf16/fp16 parameters "
                    "(pytorch/pytorch#191763); use master_weights=True or impl='reference'")
        if scheduled_hyperparameters:
            return ("torch's fused kernels take beta1/momentum and weight decay as numbers; a "
                    "momentum_schedule or weight_decay_schedule needs impl='reference' (or "
                    "'triton' on CUDA)")
        return None

    def check(self, name, p, grad, state) -> None:
        pass

    @staticmethod
    def _check_dtypes(d: StepDescription) -> None:
        """torch's kernels want every state in the dtype of what they update (the parameter, or
        its fp32 master); a model cast after the optimizer was built breaks that, and their
        own error ("expected scalar type BFloat16 but found Float") would come after earlier
        buckets were updated."""
        for i, p in enumerate(d.params):
            want = torch.float32 if d.masters[i] is not None else p.dtype
            for x in (*(col[i] for col in d.states), d.masters[i]):
                if x is not None and x.dtype != want:
                    raise TypeError(
                        f"fused_lrs::step: parameter {i} is {p.dtype} but its optimizer state "
                        f"is {x.dtype}; was the model cast after the optimizer was built? Build "
                        "the optimizer after casting (or load a checkpoint into a new one)")

    def _plan(self, d: StepDescription) -> None:
        """Bucket the description's tensors (once per description: the optimizer rebuilds it
        only when tensors, state or hyperparameters change)."""
        self._buckets = []
        for g, members in enumerate(d.members):
            row = d.rows[g]
            kinds: dict[tuple, list[int]] = {}
            for i in members:
                kinds.setdefault((d.params[i].dtype, d.masters[i] is not None), []).append(i)
            for (_, master), index in kinds.items():
                weights = [d.masters[i] if master else d.params[i] for i in index]
                s1, s2, s3 = ([col[i] for i in index] for col in d.states)
                if d.algorithm == ADAM:
                    states = [s1, s2, s3 if row[L.G_FLAG] != 0 else []]
                    kwargs = dict(beta1=row[L.G_A], beta2=row[L.G_B], weight_decay=row[L.G_WD],
                                  eps=row[L.G_EPS], amsgrad=row[L.G_FLAG] != 0,
                                  maximize=row[L.G_MAXIMIZE] != 0)
                else:
                    states = [s1 if row[L.G_A] != 0 else []]
                    kwargs = dict(weight_decay=row[L.G_WD], momentum=row[L.G_A],
                                  dampening=row[L.G_B], nesterov=row[L.G_FLAG] != 0,
                                  maximize=row[L.G_MAXIMIZE] != 0)
                self._buckets.append(_Bucket(
                    group=g, index=index, weights=weights,
                    params16=[d.params[i] for i in index] if master else [],
                    grad_buffers=[torch.empty_like(w) for w in weights] if master else [],
                    states=states, steps=[d.steps[i] for i in index], kwargs=kwargs,
                    warm=d.algorithm == ADAM or row[L.G_A] == 0))
                self._buckets[-1].counts = _one_buffer(self._buckets[-1].steps)
        self._bases = torch.tensor([row[L.G_LR] for row in d.rows], dtype=torch.float64,
                                   device=d.t.device)
        if d.algorithm == ADAM:
            self._kernel = {True: torch._fused_adamw_, False: torch._fused_adam_}

    def step(self, d: StepDescription) -> None:
        dtypes = list(map(_DTYPE, d.params))   # a recast parameter (p.data = ...) keeps its id
        if d is not self._desc or dtypes != self._dtypes:
            # A new description (the optimizer's after a change, or the custom op's, one per
            # call) or a recast. Plan again only if it holds other tensors, numbers or dtypes;
            # the plan holds the tensors, so their ids cannot be reused while it lives.
            key = (tuple(map(id, (*d.params, *d.steps, *d.masters, *(x for c in d.states
                                                                     for x in c)))),
                   tuple(map(tuple, d.rows)), tuple(d.group_of), d.algorithm, tuple(dtypes))
            if key != self._key:
                self._check_dtypes(d)          # before any write, so a refusal changes nothing
                self._plan(d)
                self._key = key
            self._desc, self._dtypes = d, dtypes
        lrs = group_values(d.schedules[0], d.t, self._bases, d.table).unbind()
        amp = dict(grad_scale=d.grad_scale, found_inf=d.found_inf)
        for b in self._buckets:
            grads = [d.grads[i] for i in b.index]
            if b.grad_buffers:
                torch._foreach_copy_(b.grad_buffers, grads)
                grads = b.grad_buffers
            lr = lrs[b.group]
            if d.algorithm == ADAM:
                b.counts.add_(1)
                self._kernel[d.rows[b.group][L.G_DECOUPLED] != 0](
                    b.weights, grads, *b.states, b.steps, lr=lr, **b.kwargs, **amp)
            else:
                self._sgd(b, grads, lr, amp)
            if d.found_inf is not None:
                b.counts.sub_(d.found_inf)
            if b.params16:
                torch._foreach_copy_(b.params16, b.weights)
        d.advance_counters(None if d.found_inf is None else d.found_inf != 0)

    def _sgd(self, b: _Bucket, grads, lr, amp) -> None:
        parts = [(list(range(len(b.steps))), False)]
        if not b.warm:
            first = b.counts.eq(0).tolist()                 # CPU tensors: no device sync
            b.warm = not any(first)
            if any(first):
                parts = [([j for j, f in enumerate(first) if f == want], want)
                         for want in (True, False)]
        b.counts.add_(1)
        for index, is_first in parts:
            if not index:
                continue
            pick = ((lambda xs, index=index: [xs[j] for j in index]) if len(parts) > 1
                    else (lambda xs: xs))
            torch._fused_sgd_(pick(b.weights), pick(grads), *(pick(s) for s in b.states),
                              lr=lr, is_first_step=is_first, **b.kwargs, **amp)
