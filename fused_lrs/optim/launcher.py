"""The thin launcher between an optimizer and ``kernels/optim.py``.

It owns the device tables the kernel reads, rebuilds them only when a tensor's identity or
storage, or a group's hyperparameter, changes, and makes one launch per ``step()``. The check
that decides "unchanged" reads only host-side facts (addresses, Python numbers, tensors'
version counters), so it never synchronises.

Two doors share the tables and the launch:
  * ``step(opt, work)``, eager: the key is the addresses of every parameter and gradient. State
    tensors change address only through ``load_state_dict`` and ``set_schedule`` (which drop
    the launcher) or when a parameter first gets a gradient (which changes the key).
  * ``step_lists(...)``, the custom op (``op.py``): every tensor arrives in a list, and the key
    is all their addresses.

Under CUDA-graph capture a rebuild copies from pinned host memory, which a graph may capture;
those host buffers are kept for the launcher's lifetime, since each replay copies them again.
"""

from __future__ import annotations

import math

import torch

from fused_lrs.kernels import optim as K
from fused_lrs.optim.base import KERNEL_DTYPES
from fused_lrs.optim.op import extra_states, masters_of, rows_of

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


class Launcher:
    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.key = None
        self.ticket = torch.zeros((), dtype=torch.int32, device=self.device)
        self.pinned: list[torch.Tensor] = []

    # ---------------------------------------------------------------- the two doors

    def step(self, opt, work: list[list[torch.Tensor]]) -> None:
        """One launch for ``opt``; ``work`` is its parameters with a gradient, per group."""
        opt.group_rows()
        key = (opt._rows_version, opt.__dict__["_table"].data_ptr(),
               tuple((p.data_ptr(), p.grad.data_ptr()) for params in work for p in params))
        if key != self.key:
            # New tensors or hyperparameters: check, then prepare state (nothing is touched if
            # a check fails), then rebuild. The steady state skips all of it.
            name = type(opt).__name__
            opt.check_gradients(work)
            for p in (p for params in work for p in params):
                state = opt.state[p]
                check_tensors(name, p, [p, p.grad], [v for k, v in state.items()
                                                     if k != "step" and v is not None],
                              state.get("master"))
            opt.prepare_state(work)
            args = opt.op_args(work)
            self._build(args["params"], args["grads"], args["state1"], args["state2"],
                        args["state3"], args["steps"], args["table"], args["kinds"],
                        args["kind_counts"], args["group_of"], args["groups"], args["algorithm"],
                        args["masters"])
            self.key = key
        self._launch(opt.__dict__["_t"], *opt.amp_args())

    def step_lists(self, params, grads, state1, state2, state3, steps, t, table, kinds,
                   kind_counts, group_of, groups, schedule, algorithm, grad_scale, found_inf,
                   skipped, hold_on_skip, masters) -> None:
        """One launch for the custom op's arguments (see ``op.py``)."""
        tensors = (*params, *grads, *state1, *state2, *state3, *steps, *masters, table)
        key = (tuple(x.data_ptr() for x in tensors), tuple(groups), tuple(kinds),
               tuple(kind_counts), tuple(group_of), algorithm)
        if key != self.key:
            extras = extra_states(algorithm, rows_of(groups), group_of, state1, state3)
            fp32_masters = masters_of(params, masters)
            for i, p in enumerate(params):
                own = [state1[i], state2[i]] if algorithm == "adam" else []
                states = [*own, *([extras[i]] if extras[i] is not None else []),
                          *([fp32_masters[i]] if fp32_masters[i] is not None else [])]
                check_tensors("fused_lrs::step", p, [p, grads[i]], states, fp32_masters[i])
            self._build(params, grads, state1, state2, state3, steps, table, kinds, kind_counts,
                        group_of, groups, algorithm, masters)
            self.key = key
        self._launch(t, grad_scale, found_inf, skipped, hold_on_skip)

    # ---------------------------------------------------------------- tables and launch

    def _build(self, params, grads, state1, state2, state3, steps, table, kinds, kind_counts,
               group_of, groups, algorithm, masters) -> None:
        rows = rows_of(groups)
        extras = extra_states(algorithm, rows, group_of, state1, state3)
        fp32_masters = masters_of(params, masters)
        tensor_rows, addresses, dtypes = [], [], set()
        for i, p in enumerate(params):
            if algorithm == "adam":
                states = [state1[i], state2[i], extras[i]]
            else:
                states = [extras[i], None, None]
            code = K.DTYPE_CODES[str(p.dtype).removeprefix("torch.")]
            master = fp32_masters[i]
            if master is not None:
                code += K.MASTER_CODE_OFFSET
            row = [p.data_ptr(), grads[i].data_ptr(),
                   *(s.data_ptr() if s is not None else 0 for s in states),
                   steps[i].data_ptr(), p.numel(), group_of[i] * K.META_GROUP.value + code,
                   master.data_ptr() if master is not None else 0]
            tensor_rows.append(row)
            addresses += [a for a in (*row[:5], row[8]) if a]
            dtypes.add(code)
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
               if self.device.type == "cuda" else 1)
        blocks = math.ceil(total / (BLOCK * PROGRAMS_PER_SM * sms)) if total else 1
        self.blocks_per_program = min(max(blocks, 1), MAX_BLOCKS_PER_PROGRAM)
        chunk = BLOCK * self.blocks_per_program
        pairs = [(r, c) for r, n in enumerate(sizes) for c in range(math.ceil(n / chunk))]
        pairs = pairs or [(-1, 0)]        # one program still advances the counters
        self.tensors = self._to_device(torch.tensor(tensor_rows or [[0] * K.TENSOR_COLS.value],
                                                    dtype=torch.int64))
        self.work = self._to_device(torch.tensor(pairs, dtype=torch.int32))
        self.groups = self._to_device(torch.tensor(rows, dtype=torch.float64))
        self.table = table
        n_lr, n_m = kind_counts[0], kind_counts[1]
        self.kinds = (tuple(kinds[:n_lr]), tuple(kinds[n_lr:n_lr + n_m]),
                      tuple(kinds[n_lr + n_m:]))
        self.algorithm = K.ADAM if algorithm == "adam" else K.SGD
        self.n_tensors, self.n_programs = len(tensor_rows), len(pairs)
        self.dtypes = tuple(sorted(dtypes)) or (0,)
        self.has_option = any(e is not None for e in extras)
        self.aligned = all(a % 16 == 0 for a in addresses)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return host.to(self.device)
        # Pinned and asynchronous: no sync, and legal inside a CUDA-graph capture.
        host = host.pin_memory()
        if torch.cuda.is_current_stream_capturing():
            self.pinned.append(host)     # every replay of the graph reads it again
        return host.to(self.device, non_blocking=True)

    def _launch(self, t, grad_scale, found_inf, skipped, hold_on_skip) -> None:
        # Absent GradScaler tensors are compiled out (UNSCALE, CHECK_INF); `skipped` stands in
        # for their pointers, never read.
        K.fused_step_kernel[(self.n_programs,)](
            self.tensors, self.work, self.groups, self.table, t, self.ticket,
            skipped if grad_scale is None else grad_scale,
            skipped if found_inf is None else found_inf, skipped,
            self.n_tensors, self.n_programs, self.blocks_per_program, int(hold_on_skip),
            ALGO=self.algorithm, KINDS=self.kinds[0], KINDS_M=self.kinds[1],
            KINDS_WD=self.kinds[2], DTYPES=self.dtypes,
            HAS_OPTION=self.has_option, ALIGNED=self.aligned, BLOCK=BLOCK,
            UNSCALE=grad_scale is not None, CHECK_INF=found_inf is not None,
            num_warps=NUM_WARPS)
