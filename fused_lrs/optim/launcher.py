"""The thin launcher between an optimizer and ``kernels/optim.py``.

It owns the device tables the kernel reads, rebuilds them only when a tensor's identity or
storage, or a group's hyperparameter, changes, and makes one launch per ``step()``. The check
that decides "unchanged" reads only host-side facts (addresses, Python numbers, tensors'
version counters), so it never synchronises.

The key holds the addresses of every parameter and gradient. State tensors change address
only through ``load_state_dict`` and ``set_schedule``, which drop the launcher, or through
new parameters getting gradients, which changes the key.
"""

from __future__ import annotations

import math

import torch

from fused_lrs.kernels import optim as K

# Elements per inner iteration: 4 warps x 32 threads x 8 fp32 = two 128-bit accesses per thread
# per tensor, the usual shape for a memory-bound elementwise body (Liger, Apex use the same).
BLOCK = 1024
NUM_WARPS = 4
# Programs per SM the chunking aims at, and the most blocks one program walks. A launch of
# 1B parameters then has 1B / (64 * 1024) ~ 15k programs rather than 1M, which keeps the
# per-program ticket atomics (one each) negligible.
PROGRAMS_PER_SM = 8
MAX_BLOCKS_PER_PROGRAM = 64


def _scalar_key(value):
    """A host-side identity for a hyperparameter: the number, or a tensor's id and version
    (in-place writes bump ``_version``), so checking it never reads the device."""
    if isinstance(value, torch.Tensor):
        return (id(value), value._version)
    if isinstance(value, (tuple, list)):
        return tuple(_scalar_key(v) for v in value)
    return value


def _float(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class Launcher:
    def __init__(self, opt) -> None:
        self.opt = opt
        self.device = opt._device
        self.key = None
        self.ticket = torch.zeros((), dtype=torch.int32, device=self.device)

    def step(self, work: list[list[torch.Tensor]]) -> None:
        opt = self.opt
        keys = self._group_keys()
        key = (tuple(tuple(_scalar_key(g[k]) for k in keys) for g in opt.param_groups),
               tuple((p.data_ptr(), p.grad.data_ptr()) for params in work for p in params))
        if key != self.key:
            # New tensors or hyperparameters: check and prepare them (before touching any
            # state), then rebuild the tables. The steady state skips all of it.
            opt.check_gradients(work, kernel=True)
            opt.prepare_state(work)
            self._build(work)
            self.key = key
        K.fused_step_kernel[(self.n_programs,)](
            self.tensors, self.work, self.groups, self.table, opt._t, self.ticket,
            self.n_tensors, self.n_programs, self.chunk // BLOCK,
            ALGO=K.ADAM if opt.algorithm == "adam" else K.SGD, KINDS=self.kinds,
            DTYPES=self.dtypes, HAS_OPTION=self.has_option, ALIGNED=self.aligned, BLOCK=BLOCK,
            num_warps=NUM_WARPS)

    def _group_keys(self) -> tuple[str, ...]:
        if self.opt.algorithm == "adam":
            return ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                    "decoupled_weight_decay")
        return ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def _group_row(self, g) -> list[float]:
        if self.opt.algorithm == "adam":
            beta1, beta2 = g["betas"]
            a, b, flag, decoupled = beta1, beta2, g["amsgrad"], g["decoupled_weight_decay"]
        else:
            a, b, flag, decoupled = g["momentum"], g["dampening"], g["nesterov"], False
        return [_float(g["lr"]), _float(a), _float(b), _float(g.get("eps", 0.0)),
                _float(g["weight_decay"]), float(flag), float(g["maximize"]), float(decoupled)]

    def _build(self, work) -> None:
        opt = self.opt
        state_keys = (("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if opt.algorithm == "adam"
                      else ("momentum_buffer",))
        rows, addresses, dtypes, sizes = [], [], set(), []
        for gi, params in enumerate(work):
            for p in params:
                state = opt.state[p]
                states = [state[k].data_ptr() if state.get(k) is not None else 0
                          for k in state_keys]
                states += [0] * (3 - len(states))
                code = K.DTYPE_CODES[str(p.dtype).removeprefix("torch.")]
                row = [p.data_ptr(), p.grad.data_ptr(), *states, state["step"].data_ptr(),
                       p.numel(), gi * 4 + code]
                rows.append(row)
                addresses += [a for a in row[:5] if a]
                dtypes.add(code)
                sizes.append(p.numel())
        total = sum(sizes)
        sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
               if self.device.type == "cuda" else 1)
        blocks = math.ceil(total / (BLOCK * PROGRAMS_PER_SM * sms)) if total else 1
        self.chunk = BLOCK * min(max(blocks, 1), MAX_BLOCKS_PER_PROGRAM)
        pairs = [(r, c) for r, n in enumerate(sizes) for c in range(math.ceil(n / self.chunk))]
        pairs = pairs or [(-1, 0)]        # one program still advances the counters
        to_device = dict(device=self.device, non_blocking=True)
        self.tensors = torch.tensor(rows or [[0] * 8], dtype=torch.int64).to(**to_device)
        self.work = torch.tensor(pairs, dtype=torch.int32).to(**to_device)
        self.groups = torch.tensor([self._group_row(g) for g in opt.param_groups],
                                   dtype=torch.float64).to(**to_device)
        self.table = opt.schedule.table().to(**to_device)
        self.kinds = opt.schedule.kinds
        self.n_tensors, self.n_programs = len(rows), len(pairs)
        self.dtypes = tuple(sorted(dtypes)) or (0,)
        flag = "amsgrad" if opt.algorithm == "adam" else "momentum"
        self.has_option = any(bool(g[flag]) for g in opt.param_groups)
        self.aligned = all(a % 16 == 0 for a in addresses)
