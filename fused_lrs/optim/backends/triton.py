"""The Triton backend: the thin launcher between a step description and ``kernels/optim.py``.

It owns the device tables the kernel reads, rebuilds them only when a tensor's identity or
storage, or a group's hyperparameter, changes, and makes one launch per ``step()``. The check
that decides "unchanged" reads only host-side facts (addresses, Python numbers), so it never
synchronises:
  * the same description object as last time (eager steps: the optimizer rebuilds it only when
    tensors, state or hyperparameters change): only the gradients' addresses are compared;
  * a new description (the custom op rebuilds one per call): every address is compared.

Under CUDA-graph capture a rebuild copies from pinned host memory, which a graph may capture;
those host buffers are kept for the backend's lifetime, since each replay copies them again.

Triton itself is imported when the first backend object is made, never at package import.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from fused_lrs.kernels import layout as L
from fused_lrs.optim.step import ADAM, KERNEL_DTYPES, StepDescription

# Elements per inner iteration: 4 warps x 32 threads x 8 fp32 = two 128-bit accesses per thread
# per tensor, the usual shape for a memory-bound elementwise body (Liger, Apex use the same).
# Not yet tuned on a GPU.
BLOCK = 1024
NUM_WARPS = 4
# Programs per SM the chunking aims at, and the most blocks one program walks. A launch of
# 1B parameters then has 1B / (64 * 1024) ~ 15k programs rather than 1M, which keeps the
# per-program ticket atomics (one each) negligible.
PROGRAMS_PER_SM = 8
MAX_BLOCKS_PER_PROGRAM = 64


def check_tensors(name: str, p: torch.Tensor, tensors: list[torch.Tensor],
                  states: list[torch.Tensor], master: torch.Tensor | None) -> None:
    """What the kernel needs of a parameter, its gradient (in ``tensors``) and its states
    (fp32 when it has a master copy)."""
    if p.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name}: impl='triton' updates float32, bfloat16 and float16 "
                        f"parameters, got {p.dtype}; use impl='reference'")
    state_dtype = p.dtype if master is None else torch.float32
    if not all(x.is_contiguous() for x in (*tensors, *states)):
        raise ValueError(f"{name}: impl='triton' needs contiguous parameters, gradients and "
                         "states; use impl='reference'")
    if any(x.dtype != p.dtype for x in tensors) or any(x.dtype != state_dtype for x in states):
        raise TypeError(f"{name}: a gradient's or state tensor's dtype differs from its "
                        f"parameter's ({p.dtype}); was the model cast after the optimizer was "
                        "built?")


class TritonBackend:
    name = "triton"

    def __init__(self, device: torch.device) -> None:
        from fused_lrs.kernels import optim as kernel

        self.kernel = kernel
        self.device = torch.device(device)
        self.key = None
        self._desc, self._grad_key = None, None
        self.ticket = torch.zeros((), dtype=torch.int32, device=self.device)
        self.pinned: list[torch.Tensor] = []

    @staticmethod
    def unsupported(device, algorithm, dtypes, scheduled_hyperparameters) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device is not None and device.type != "cuda" \
                and os.environ.get("TRITON_INTERPRET") != "1":
            return (f"it needs CUDA tensors, these are on {device} (or TRITON_INTERPRET=1, set "
                    "before fused_lrs is imported, to interpret the kernel on CPU)")
        if not set(dtypes) <= set(KERNEL_DTYPES):
            return (f"the kernel updates {[str(d) for d in KERNEL_DTYPES]} parameters, got "
                    f"{sorted(map(str, set(dtypes) - set(KERNEL_DTYPES)))}")
        return None

    def check(self, name, p, grad, state) -> None:
        check_tensors(name, p, [p, grad], [v for k, v in state.items()
                                           if k != "step" and v is not None],
                      state.get("master"))

    # ---------------------------------------------------------------- the step

    def step(self, d: StepDescription) -> None:
        """One launch for ``d``; the tables are rebuilt only if an address or number changed."""
        grad_key = tuple(g.data_ptr() for g in d.grads)
        if d is not self._desc or grad_key != self._grad_key:
            # New gradients may come with a recast model (p.data = p.data.half()): compare every
            # address, and check the tensors before a rebuild.
            tensors = (*d.params, *d.grads, *d.steps, d.table,
                       *(x for col in (*d.states, d.masters) for x in col if x is not None))
            key = (tuple(x.data_ptr() for x in tensors), tuple(map(tuple, d.rows)), d.kinds,
                   tuple(d.group_of), d.algorithm,
                   tuple(x is not None for col in (*d.states, d.masters) for x in col),
                   tuple(p.dtype for p in d.params))
            if key != self.key:
                for i, p in enumerate(d.params):
                    states = [col[i] for col in d.states if col[i] is not None]
                    master = d.masters[i]
                    check_tensors("fused_lrs::step", p, [p, d.grads[i]],
                                  states + ([master] if master is not None else []), master)
                self._rebuild(d)
                self.key = key
            self._desc, self._grad_key = d, grad_key
        self._launch(d)

    # ---------------------------------------------------------------- tables and launch

    def _rebuild(self, d: StepDescription) -> None:
        K = self.kernel
        tensor_rows, addresses, dtypes = [], [], set()
        for i, p in enumerate(d.params):
            code = L.DTYPE_CODES[str(p.dtype).removeprefix("torch.")]
            master = d.masters[i]
            if master is not None:
                code += L.MASTER_CODE_OFFSET
            row = [p.data_ptr(), d.grads[i].data_ptr(),
                   *(col[i].data_ptr() if col[i] is not None else 0 for col in d.states),
                   d.steps[i].data_ptr(), p.numel(), d.group_of[i] * L.META_GROUP + code,
                   master.data_ptr() if master is not None else 0]
            tensor_rows.append(row)
            addresses += [a for a in (*row[:5], row[L.COL_MASTER]) if a]
            dtypes.add(code)
        sizes = [p.numel() for p in d.params]
        total = sum(sizes)
        sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
               if self.device.type == "cuda" else 1)
        blocks = math.ceil(total / (BLOCK * PROGRAMS_PER_SM * sms)) if total else 1
        self.blocks_per_program = min(max(blocks, 1), MAX_BLOCKS_PER_PROGRAM)
        chunk = BLOCK * self.blocks_per_program
        pairs = [(r, c) for r, n in enumerate(sizes) for c in range(math.ceil(n / chunk))]
        pairs = pairs or [(-1, 0)]        # one program still advances the counters
        self.tensors = self._to_device(torch.tensor(tensor_rows or [[0] * L.TENSOR_COLS],
                                                    dtype=torch.int64))
        self.work = self._to_device(torch.tensor(pairs, dtype=torch.int32))
        self.groups = self._to_device(torch.tensor(d.rows, dtype=torch.float64))
        self.kinds = d.kinds
        self.algorithm = K.ADAM if d.algorithm == ADAM else K.SGD
        self.n_tensors, self.n_programs = len(tensor_rows), len(pairs)
        self.dtypes = tuple(sorted(dtypes)) or (0,)
        self.has_option = any(d.option(g) for g in range(len(d.rows)))
        self.aligned = all(a % 16 == 0 for a in addresses)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return host.to(self.device)
        # Pinned and asynchronous: no sync, and legal inside a CUDA-graph capture.
        host = host.pin_memory()
        if torch.cuda.is_current_stream_capturing():
            self.pinned.append(host)     # every replay of the graph reads it again
        return host.to(self.device, non_blocking=True)

    def _launch(self, d: StepDescription) -> None:
        # Absent GradScaler tensors are compiled out (UNSCALE, CHECK_INF); `skipped` stands in
        # for their pointers, never read.
        grad_scale, found_inf, skipped = d.grad_scale, d.found_inf, d.skipped
        self.kernel.fused_step_kernel[(self.n_programs,)](
            self.tensors, self.work, self.groups, d.table, d.t, self.ticket,
            skipped if grad_scale is None else grad_scale,
            skipped if found_inf is None else found_inf, skipped,
            self.n_tensors, self.n_programs, self.blocks_per_program, int(d.hold_on_skip),
            ALGO=self.algorithm, KINDS=self.kinds[0], KINDS_M=self.kinds[1],
            KINDS_WD=self.kinds[2], DTYPES=self.dtypes,
            HAS_OPTION=self.has_option, ALIGNED=self.aligned, BLOCK=BLOCK,
            UNSCALE=grad_scale is not None, CHECK_INF=found_inf is not None,
            num_warps=NUM_WARPS)
