"""The Triton backend: the thin launcher between a step description and ``kernels/optim.py``.

It owns the device tables the kernel reads (``kernels/layout.py``) and makes one launch per
``step()``. Host work per step is what changed and no more, judged from host-side facts only
(addresses, Python numbers), so it never synchronises:
  * the same description object as last time (eager steps: the optimizer rebuilds it only when
    the set of tensors, the state or a hyperparameter changes): one bulk read of the gradients'
    addresses. Unchanged: nothing else. Changed (``zero_grad(set_to_none=True)`` gives new
    gradients every step): one bulk read of the parameters' addresses (a model recast with
    ``p.data = p.data.half()`` moves them: then the full check below), and one upload of the
    gradient-address array, asynchronous, from pinned memory;
  * a new description (the custom op builds one per call): every address and number is
    compared, and the tables are rebuilt if one differs.
Gradients are trusted to have their parameter's layout between rebuilds, as autograd makes them
(a hand-assigned gradient with other strides is caught only when the tensors change).

CUDA graphs. A captured launch holds raw pointers to these tables, the ticket and the pinned
buffers its uploads copy from. Once a launch is captured, its tables are never written again
and never freed: an eager step that needs other addresses writes a new generation, and the
captured ones go to ``HELD_BY_GRAPHS``, which lives as long as the process (a graph may outlive
this backend: the optimizer drops it on ``set_schedule``, ``add_param_group`` and
``load_state_dict``). They are small: 8 bytes per tensor per generation. The optimizer's state
tensors and step counts a graph updates are held too (``load_state_dict`` replaces them).

Triton itself is imported when the first backend object is made, never at package import.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import math
import os
import struct
from operator import attrgetter

import torch

from fused_lrs.kernels import layout as L
from fused_lrs.optim import validate
from fused_lrs.optim.backends.flat import dense
from fused_lrs.optim.step import KERNEL_DTYPES, StepDescription

# Elements per inner iteration: 4 warps x 32 threads x 8 fp32 = two 128-bit accesses per thread
# per tensor, the usual shape for a memory-bound elementwise body (Liger, Apex use the same).
BLOCK = 1024
NUM_WARPS = 4
# The most blocks one program walks. A launch of 1B parameters then has at least
# 1B / (64 * 1024) ~ 15k programs rather than 1M, which keeps the per-program ticket atomics
# (one each) negligible.
MAX_BLOCKS_PER_PROGRAM = 64
# Programs per SM assumed before the kernel is compiled (under the interpreter, always): what
# 72 to 80 registers allow at 4 warps (programs_per_sm below).
DEFAULT_PROGRAMS_PER_SM = 6

# Every table a captured launch may read, for the life of the process (see the module doc).
HELD_BY_GRAPHS: dict[int, torch.Tensor] = {}


def hold(*tensors: torch.Tensor) -> None:
    """Keep ``tensors`` alive for the life of the process: a captured graph reads them."""
    for x in tensors:
        HELD_BY_GRAPHS[id(x)] = x

_DATA_PTR = torch.Tensor.data_ptr
_DTYPE = attrgetter("dtype")
_STRIDE = torch.Tensor.stride


def _layout(grads: list[torch.Tensor]) -> tuple[list, list]:
    """What the tables assume of each gradient besides its address: dtype and strides (C-level
    maps, paid only when addresses move)."""
    return list(map(_DTYPE, grads)), list(map(_STRIDE, grads))


def programs_per_sm(n_regs: int, num_warps: int, shared: int = 0, regs_per_sm: int = 65536,
                    threads_per_sm: int = 2048, shared_per_sm: int = 233472,
                    max_blocks: int = 32) -> int:
    """Resident programs per SM for a kernel using ``n_regs`` registers per thread: registers
    are granted per warp in units of 256 (sm_70 to sm_90), so a warp at 146 registers takes
    19 * 256 = 4864 of an SM's 65536, 13 warps fit and 3 programs of 4 warps."""
    per_warp = math.ceil(max(n_regs, 1) * 32 / 256) * 256
    by_regs = (regs_per_sm // per_warp) // num_warps
    by_threads = threads_per_sm // (num_warps * 32)
    by_shared = shared_per_sm // (shared + 1024) if shared else max_blocks
    return max(1, min(by_regs, by_threads, by_shared, max_blocks))


def _strides(x: torch.Tensor) -> tuple:
    # Strides of dimensions of size 1 say nothing about where elements are.
    return tuple(s for n, s in zip(x.shape, x.stride()) if n != 1)


def requirements(p: torch.Tensor, grad: torch.Tensor, states: list[torch.Tensor]) -> None:
    """What the kernel needs of a parameter, its gradient and its states (``optim/validate.py``
    has checked the dtypes agree): a dtype it updates, and one dense layout for all, since the
    update walks every tensor in storage order."""
    if p.dtype not in KERNEL_DTYPES:
        raise TypeError(f"impl='triton' updates float32, bfloat16 and float16 parameters, got "
                        f"{p.dtype}; use impl='reference'")
    if not dense(p):
        raise ValueError(f"impl='triton' needs dense, non-overlapping parameters (any memory "
                         f"format), got strides {p.stride()} for shape {tuple(p.shape)}; use "
                         "impl='reference'")
    strides = _strides(p)
    for x in (grad, *states):
        if _strides(x) != strides:
            raise ValueError(f"impl='triton' needs the gradient and states in the parameter's "
                             f"layout (strides {p.stride()}), got {x.stride()}; use "
                             "impl='reference'")


class TritonBackend:
    name = "triton"

    def __init__(self, device: torch.device) -> None:
        from fused_lrs.kernels import optim as kernel

        self.kernel = kernel
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.key = None
        self._desc = None
        self._grad_addrs: list[int] | None = None
        self._param_addrs: list[int] | None = None
        self._grad_layout: tuple | None = None   # gradient dtypes and strides, as checked
        self._launched = False         # an eager launch has run: tables and ticket are real
        self._packer = struct.Struct("0q")    # packs the gradient addresses, one int64 each
        self.ticket = torch.zeros((), dtype=torch.int32, device=self.device)
        self.captured = False          # the current tables are held by a captured graph
        self._stream = None            # the stream of the last eager launch (CUDA)
        self.max_blocks_per_program = MAX_BLOCKS_PER_PROGRAM
        self.programs_per_sm = DEFAULT_PROGRAMS_PER_SM
        self._sized_for = None         # the table key the grid was sized for
        self._recorded_uploads = False  # a capture recorded (did not run) an upload

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

    requirements = staticmethod(requirements)

    # ---------------------------------------------------------------- the step

    def step(self, d: StepDescription) -> None:
        """One launch for ``d``, on the parameters' device; only what changed is uploaded."""
        if self.cuda and torch.cuda.current_device() != self.device.index:
            # Triton launches on the current device: with parameters on cuda:1 and the
            # current device 0 it would run on GPU 0 with GPU 1's pointers.
            with torch.cuda.device(self.device):
                return self.step(d)
        capturing = self._capturing()
        if capturing and not self._launched:
            # A new backend (after set_schedule, load_state_dict, add_param_group) allocates
            # its ticket and tables with kernels that a capture only records: the graph would
            # start from uninitialised memory. One eager step first builds and sizes them.
            raise RuntimeError("fused_lrs: the first step after set_schedule, load_state_dict "
                               "or add_param_group is being captured; take one eager step "
                               "(on a side stream, as for warm-up) before capturing")
        if self.cuda and not capturing:
            # Before any upload: an upload on this stream must not overtake the last launch's
            # reads of the same tables on another stream.
            self._order_after_last_launch()
        if d is self._desc:
            addrs = list(map(_DATA_PTR, d.grads))
            if addrs != self._grad_addrs:
                if (list(map(_DATA_PTR, d.params)) == self._param_addrs
                        and _layout(d.grads) == self._grad_layout):
                    self._upload_grads(addrs)
                else:
                    # A parameter moved (a recast), or a gradient of another dtype or strides
                    # (p.grad_dtype, a hand-made transpose) that the kernel would read past its
                    # end or in the wrong order: check everything, refuse what cannot run.
                    self._desc = None
        if d is not self._desc:
            self._full_check(d)
        if capturing:
            self._launch(d)
            # From now on these tables belong to the graph too: never written again, and kept
            # alive after they are replaced. An upload during capture is only recorded, not
            # run: then the next eager step rebuilds rather than trust the device copies.
            self.captured = True
            hold(self.ticket, self.tensors, self.steps, self.grads, self.groups, self.work,
                 self.scalar_addrs, self.scratch, d.table, d.t, d.skipped)
            # The optimizer's own tensors too: load_state_dict replaces the states and step
            # counts, and the graph's pointers must not dangle (its replays go on updating the
            # old ones: re-capture after loading).
            hold(*d.steps, *(x for col in (*d.states, d.masters, *d.scalars) for x in col
                             if x is not None))
            self._stream = None
            if self._recorded_uploads:
                self.key, self._desc, self._grad_addrs = None, None, None
                self._recorded_uploads = False
            return
        self._launch(d)
        self._launched = True

    def _capturing(self) -> bool:
        return self.cuda and torch.cuda.is_current_stream_capturing()

    def _full_check(self, d: StepDescription) -> None:
        """Compare every address and number with the tables' and, if one differs, check the
        tensors and rebuild the tables."""
        tensors = (*d.params, *d.steps, d.table,
                   *(x for col in (*d.states, d.masters, *d.scalars) for x in col
                     if x is not None))
        key = (tuple(map(_DATA_PTR, tensors)), tuple(map(tuple, d.rows)), d.kinds,
               tuple(d.group_of), d.algorithm.name,
               tuple(x is not None for col in (*d.states, d.masters) for x in col),
               tuple(p.dtype for p in d.params))
        grad_layout = _layout(d.grads)
        if key != self.key or grad_layout != self._grad_layout:
            for i, p in enumerate(d.params):
                master = d.masters[i]
                states = [x for x in (*(col[i] for col in d.states), master) if x is not None]
                validate.tensor("fused_lrs::step", self, p, d.grads[i], states,
                                master is not None)
        if key != self.key:
            self._rebuild(d)
            self.key = key
        addrs = list(map(_DATA_PTR, d.grads))
        if addrs != self._grad_addrs:
            self._upload_grads(addrs)
        self._desc, self._param_addrs = d, list(map(_DATA_PTR, d.params))
        self._grad_layout = grad_layout

    def _order_after_last_launch(self) -> None:
        # The ticket and the step counts belong to this optimizer: two of its launches must not
        # overlap (they would race on the parameters too). An eager step on another stream
        # than the last one waits for that stream first (no host sync). Under capture, waiting
        # on an uncaptured stream is illegal: ordering graph replays is the caller's part.
        stream = torch.cuda.current_stream(self.device)
        if self._stream is not None and stream != self._stream:
            stream.wait_stream(self._stream)
        self._stream = stream

    # ---------------------------------------------------------------- tables and launch

    def _rebuild(self, d: StepDescription) -> None:
        tensor_rows, step_addrs, combos = [], [], set()
        variants = [d.variant(g) for g in range(len(d.rows))]
        for i, p in enumerate(d.params):
            code = L.DTYPE_CODES[str(p.dtype).removeprefix("torch.")]
            master = d.masters[i]
            if master is not None:
                code += L.MASTER_CODE_OFFSET
            row = [0] * L.TENSOR_COLS
            row[L.COL_PARAM] = p.data_ptr()
            for col, column in zip((L.COL_STATE1, L.COL_STATE2, L.COL_STATE3), d.states):
                row[col] = column[i].data_ptr() if column[i] is not None else 0
            row[L.COL_MASTER] = master.data_ptr() if master is not None else 0
            row[L.COL_NUMEL] = p.numel()
            combo = code * L.VARIANTS + variants[d.group_of[i]]
            row[L.COL_META] = d.group_of[i] * L.META_GROUP + combo
            tensor_rows.append(row)
            step_addrs.append(d.steps[i].data_ptr())
            combos.add(combo)
        self._retire()
        n = len(tensor_rows)
        self.tensors = self._to_device(torch.tensor(tensor_rows or [[0] * L.TENSOR_COLS],
                                                    dtype=torch.int64))
        self.steps = self._to_device(torch.tensor(step_addrs or [0], dtype=torch.int64))
        self.grads = torch.zeros(max(n, 1), dtype=torch.int64, device=self.device)
        self._grad_addrs = None
        self.groups = self._to_device(torch.tensor(d.rows, dtype=torch.float64))
        # The scalar states' addresses, [n_tensors, SCALARS], and the scratch rows the chunk-0
        # programs write their next values to (kernels/optim.py); absent, stand-ins never read.
        self.n_scalars = len(d.scalars)
        if self.n_scalars:
            self.scalar_addrs = self._to_device(torch.tensor(
                [column[i].data_ptr() for i in range(n) for column in d.scalars] or [0],
                dtype=torch.int64))
            self.scratch = torch.zeros(max(n, 1) * self.n_scalars, dtype=torch.float32,
                                       device=self.device)
        else:
            self.scalar_addrs, self.scratch = self.steps, torch.empty(1, device=self.device)
        self.sizes = [p.numel() for p in d.params]
        self.kinds = d.kinds
        algorithm = importlib.import_module(d.algorithm.kernel)
        self.update_fns = (algorithm.prepare, algorithm.update)
        self.n_tensors = n
        self.combos = tuple(sorted(combos)) or (0,)
        self._constexprs = {}          # per GradScaler presence: the kernel's compile key
        self._chunk()

    def _chunk(self) -> None:
        """The work table: (tensor, chunk) pairs, chunks sized so that one launch is about one
        wave of resident programs (``programs_per_sm`` of the compiled kernel)."""
        total = sum(self.sizes)
        sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
               if self.cuda else 1)
        blocks = math.ceil(total / (BLOCK * self.programs_per_sm * sms)) if total else 1
        self.blocks_per_program = min(max(blocks, 1), self.max_blocks_per_program)
        chunk = BLOCK * self.blocks_per_program
        # A tensor without elements gets a chunk-0 program when it has scalar states to advance.
        least = 1 if self.n_scalars else 0
        pairs = [(r, c) for r, n in enumerate(self.sizes)
                 for c in range(max(math.ceil(n / chunk), least))]
        pairs = pairs or [(-1, 0)]        # one program still advances the counters
        self.work = self._to_device(torch.tensor(pairs, dtype=torch.int32))
        self.n_programs = len(pairs)

    def _retire(self) -> None:
        """Before the tables are replaced: captured ones are already held (see ``step``)."""
        self.captured = False

    def _upload_grads(self, addrs: list[int]) -> None:
        """Write the gradient addresses into the device array: one bulk pack, one copy."""
        if self.captured:
            # A captured graph reads this array (and may re-upload into it on replay): a new
            # one for the eager steps; the graph's stays as it is, held.
            self.grads = torch.empty_like(self.grads)
            self.captured = False
        n = len(addrs)
        if n != self._packer.size // 8:
            self._packer = struct.Struct(f"{n}q")
        if not self.cuda:
            self._packer.pack_into((ctypes.c_char * (8 * n)).from_address(self.grads.data_ptr()),
                                   0, *addrs)
        elif addrs:
            # Pinned and asynchronous: no sync, and legal inside a CUDA-graph capture. A fresh
            # buffer from torch's caching host allocator, which reuses it only once this copy
            # has run, so a later step cannot overwrite addresses still in flight.
            staging = torch.empty(n, dtype=torch.int64, pin_memory=True)
            self._packer.pack_into((ctypes.c_char * (8 * n)).from_address(staging.data_ptr()),
                                   0, *addrs)
            self.grads[:n].copy_(staging, non_blocking=True)
            if self._capturing():
                hold(staging)                      # every replay copies from it again
                self._recorded_uploads = True
        self._grad_addrs = addrs

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return host.to(self.device)
        # Pinned and asynchronous: no sync, and legal inside a CUDA-graph capture.
        host = host.pin_memory()
        if self._capturing():
            hold(host)                      # every replay of the graph reads it again
            self._recorded_uploads = True
        return host.to(self.device, non_blocking=True)

    def _launch(self, d: StepDescription) -> None:
        # Absent GradScaler tensors are compiled out (UNSCALE, CHECK_INF); `skipped` stands in
        # for their pointers, never read. Then the scalar states' addresses and scratch rows.
        grad_scale, found_inf, skipped = d.grad_scale, d.found_inf, d.skipped
        amp = (grad_scale is not None, found_inf is not None)
        constexprs = self._constexprs.get(amp)
        if constexprs is None:
            constexprs = self._constexprs[amp] = dict(
                PREPARE=self.update_fns[0], UPDATE=self.update_fns[1], KINDS=self.kinds[0],
                KINDS_M=self.kinds[1], KINDS_WD=self.kinds[2], COMBOS=self.combos,
                BLOCK=BLOCK, UNSCALE=amp[0], CHECK_INF=amp[1], SCALARS=self.n_scalars,
                num_warps=NUM_WARPS)
        pointers = (skipped if grad_scale is None else grad_scale,
                    skipped if found_inf is None else found_inf, skipped, self.scalar_addrs,
                    self.scratch)
        if self.cuda and self._sized_for != self.key:
            self._size_grid(d, pointers, constexprs)
        self.kernel.fused_step_kernel[(self.n_programs,)](
            self.tensors, self.grads, self.steps, self.work, self.groups, d.table, d.t,
            self.ticket, *pointers, self.n_tensors, self.n_programs, self.blocks_per_program,
            int(d.hold_on_skip), **constexprs)

    def _size_grid(self, d: StepDescription, pointers, constexprs) -> None:
        """Compile (without launching) and size the work table from the kernel's occupancy:
        registers decide how many programs an SM holds (3 to 7 at 146 to 72 registers)."""
        self._sized_for = self.key
        compiled = self.kernel.fused_step_kernel.warmup(
            self.tensors, self.grads, self.steps, self.work, self.groups, d.table, d.t,
            self.ticket, *pointers, self.n_tensors, self.n_programs, self.blocks_per_program,
            int(d.hold_on_skip), grid=(self.n_programs,), **constexprs)
        compiled._init_handles()
        self.compiled = compiled          # (its n_regs, n_spills: tests and benchmarks read them)
        props = torch.cuda.get_device_properties(self.device)
        pps = programs_per_sm(
            compiled.n_regs, compiled.metadata.num_warps, compiled.metadata.shared,
            regs_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
            threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048),
            shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", 233472))
        if pps != self.programs_per_sm:
            self.programs_per_sm = pps
            self._chunk()                  # a new work table (a captured one stays held)
