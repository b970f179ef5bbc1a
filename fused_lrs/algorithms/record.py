"""The algorithm record: everything the pieces of fused_lrs need to know about one optimizer.

One record per algorithm (``fused_lrs/algorithms/<name>.py``, beside its optimizer class, which
holds it as ``algorithm``), listed once, in the registry (``fused_lrs/algorithms/__init__.py``).
The optimizer class, the step description, the three backends, the custom op, ``from_torch``,
the bench and the tests read the record; none of them names an algorithm.

The group row. Every parameter group becomes one float64 row of ``layout.GROUP_COLS`` numbers,
which the backends and the kernel read (``kernels/layout.py``):

    [lr, momentum, weight_decay, maximize, *columns, 0-padding]

The first four mean the same for every algorithm: the lr is the schedule's base lr; the
*momentum* is the coefficient that ``momentum_schedule=`` scales (Adam's beta1, SGD's momentum;
0 where an algorithm has none); the weight decay is what ``weight_decay_schedule=`` scales.
``columns`` are the algorithm's own, by name; the reference update, the CPU update and the
kernel's ``prepare`` receive them under those names (a test holds the kernel's parameter names
to the record's).

State. ``slots`` are the peer's per-parameter state tensors, by the peer's keys, at most three
(the kernel's tensor table has three state columns); which ones a group keeps depends on its
options (``Slot.present``). Every parameter also has a float32 0-dim ``"step"``: the number of
updates it has received (torch's rule: a parameter without a gradient does not count).

Scalar states. ``scalars`` are the peer's per-parameter 0-dim float32 states that are not closed
forms of the step count, by the peer's keys, at most two (NAdam's ``mu_product``, a running
product of scheduled momenta; ASGD's ``eta``, which depends on the lr of the step that computed
it, and ``mu``). They live on the parameter's device beside ``"step"``, are plain tensors for
DTensor parameters (as torch's are), stay float32 with master weights, and travel in
checkpoints under the peer's keys. An update reads the old values and returns the next ones;
every backend writes them only once every reader is done (the kernel: its last program).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fused_lrs.kernels import layout

#: The names of the fixed row columns, in order (``layout.G_LR`` ... ``layout.G_MAXIMIZE``).
FIXED = ("lr", "momentum", "weight_decay", "maximize")


def number(value) -> float:
    """A hyperparameter as a Python float: torch allows 1-element tensors for lr and betas."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def check_lr(lr) -> None:
    """torch.optim's check of a learning rate, with its messages."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


@dataclass(frozen=True)
class Slot:
    """One per-parameter state tensor: the peer's key, whether a group keeps it, the value it
    starts at (the name of an optimizer default, e.g. Adagrad's ``initial_accumulator_value``:
    torch fills every group's ``sum`` with the constructor's value; None: 0), and whether a
    saved parameter of such a group must have it (torch's SGD saves a parameter's buffer only
    once an update made with momentum created it)."""

    key: str
    present: Callable[[Mapping[str, Any]], bool] = lambda group: True
    initial: str | None = None
    required: bool = True


@dataclass(frozen=True)
class Scalar:
    """One per-parameter 0-dim float32 state: the peer's key and the value it holds before the
    first update (a number, or a group entry's name, e.g. ASGD's ``eta`` starts at the lr)."""

    key: str
    initial: float | str = 0.0

    def start(self, group: Mapping[str, Any]) -> float:
        """The initial value for a parameter of ``group``."""
        return number(group[self.initial]) if isinstance(self.initial, str) else self.initial


@dataclass(frozen=True)
class CpuUpdate:
    """The CPU backend's update of one bucket (tensors of one group, one storage dtype).

    ``run(bucket, grads, lr, amp)`` advances the bucket's step counts (``bucket.counts``, one
    buffer) and updates ``bucket.weights``, ``bucket.states`` and ``bucket.scalars`` (one float32
    buffer per scalar state, whose entries the parameters' 0-dim states are views of) with torch's
    fused or foreach kernels; ``lr`` is a float64 0-dim tensor, ``amp`` GradScaler's ``grad_scale``
    and ``found_inf`` (None when absent). It may count on nothing being scheduled but the lr: a
    scheduled momentum or weight decay goes to the reference.
    ``options(hp)``: what ``run`` needs of the row, computed once per plan (``bucket.options``).
    ``unsupported(dtypes)`` says why it cannot update such storage dtypes, or None.
    ``amp``: whether ``run`` handles GradScaler's tensors itself; if not, a step that has them
    runs on the reference (which skips and unscales on the device).
    ``flat``: whether ``run`` walks each tensor's memory in storage order (torch's fused
    kernels): then a parameter, its gradient and its states must share one dense layout, and
    the backend gives ``run`` only such tensors (``backends/torch_fused.py``). Foreach ops are
    elementwise over any strides."""

    run: Callable
    options: Callable[[Mapping[str, float]], dict]
    unsupported: Callable[[set], str | None] = lambda dtypes: None
    amp: bool = True
    flat: bool = False


@dataclass(frozen=True, eq=False)
class Algorithm:
    """One optimizer algorithm, as every backend and tool sees it. See the module docstring."""

    #: The registry key; the custom op carries it through ``torch.compile``.
    name: str
    #: The class it mirrors, as an import path ("torch.optim.Adam", "lion_pytorch.Lion").
    peer: str
    #: The group entries every saved group of this optimizer holds (a checkpoint group that
    #: lacks one was saved by another kind of optimizer).
    group_keys: tuple[str, ...]
    #: The group entries the row is made of (a change of one rebuilds the row).
    row_keys: tuple[str, ...]
    #: The algorithm's own row columns, by name, and how each is read from a group (and the
    #: optimizer's defaults: Lion divides its weight decay by the constructor's lr).
    columns: tuple[tuple[str, Callable[[Mapping, Mapping], float]], ...]
    #: The per-parameter state tensors, by the peer's keys.
    slots: tuple[Slot, ...]
    #: Checks one group's hyperparameters, with the peer's messages.
    check_group: Callable[[Mapping[str, Any]], None]
    #: The reference update of one tensor (``backends/reference.py`` calls it): ``(p, g,
    #: state, k, hp) -> (new p, {key: new state})`` in the compute dtype, where ``k`` is this
    #: update's count (a 0-dim tensor) and ``hp`` the row by name, scheduled values as tensors;
    #: ``state`` holds the scalar states too, as their float32 0-dim values.
    reference: Callable
    #: The Triton module that holds this algorithm's ``prepare`` and ``update`` (``kernels/``).
    kernel: str
    #: The update in LaTeX (an ``aligned`` block), which the class docstring shows.
    math: str = ""
    #: The compiled variant of the kernel's update a group needs, from its row (bits of options
    #: that change which states exist, e.g. amsgrad); only the variants present are compiled.
    variant: Callable[[Mapping[str, float]], int] = lambda hp: 0
    #: Every value ``variant`` can take (the ahead-of-time tests compile each).
    variants: tuple[int, ...] = (0,)
    #: The name of the momentum-like coefficient (the row's ``momentum``), or None.
    momentum: str | None = None
    #: How to read that coefficient from a group (``momentum_schedule`` scales it).
    read_momentum: Callable[[Mapping[str, Any]], Any] | None = None
    #: The CPU backend's update, or None (then the reference runs on CPU).
    cpu: CpuUpdate | None = None
    #: The per-parameter 0-dim float32 states (see the module docstring), at most two.
    scalars: tuple[Scalar, ...] = ()
    #: Whether the peer saves a ``"step"`` per parameter (torch's SGD and lion_pytorch do not).
    saves_step: bool = True
    #: Whether the peer creates every parameter's state at construction (torch's Adagrad).
    eager_state: bool = False
    #: Whether the first update with a slot tells itself apart by ``step == 0``, so that a slot
    #: created late (a group's momentum turned on) restarts the count: SGD's buffer is a copy
    #: of the first gradient it sees.
    first_update_copies: bool = False
    #: The constructor arguments a peer optimizer object was made with, for ``from_torch``:
    #: its ``defaults``, and what the peer keeps elsewhere (lion_pytorch's decoupled flag).
    peer_arguments: Callable[[Any], dict] = lambda optimizer: dict(optimizer.defaults)

    def __post_init__(self) -> None:
        assert len(self.slots) <= 3, "the kernel's tensor table has three state columns"
        assert len(self.scalars) <= 2, "the kernel passes prepare at most two scalar states"
        assert len(FIXED) + len(self.columns) <= layout.GROUP_COLS, self.name

    def renamed(self, name: str, peer: str) -> Algorithm:
        """The same algorithm mirroring another class (AdamW is Adam with decoupled decay)."""
        return dataclasses.replace(self, name=name, peer=peer)

    @property
    def names(self) -> tuple[str, ...]:
        """The row's names: the fixed ones (momentum under this algorithm's own name), then
        the columns."""
        return ("lr", self.momentum or "momentum", "weight_decay", "maximize",
                *(name for name, _ in self.columns))

    def row(self, group: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[float]:
        """Group ``group``'s float64 row."""
        momentum = self.read_momentum(group) if self.read_momentum else 0.0
        values = [number(group["lr"]), number(momentum), number(group["weight_decay"]),
                  float(group["maximize"]), *(read(group, defaults) for _, read in self.columns)]
        return values + [0.0] * (layout.GROUP_COLS - len(values))

    def hyperparameters(self, row: list[float]) -> dict[str, float]:
        """A row by name."""
        return dict(zip(self.names, row))

    def keeps(self, group: Mapping[str, Any]) -> tuple[bool, bool, bool]:
        """Which of the three state columns a group keeps."""
        kept = [slot.present(group) for slot in self.slots]
        return tuple(kept + [False] * (3 - len(kept)))

    @property
    def scalar_keys(self) -> tuple[str, ...]:
        """The scalar states' keys, in the record's order."""
        return tuple(scalar.key for scalar in self.scalars)

    @property
    def counters(self) -> frozenset[str]:
        """The state keys that hold 0-dim float32 values, not tensors of the parameter's shape:
        ``"step"`` and the scalar states."""
        return frozenset(("step", *self.scalar_keys))

    def expected_state(self, group: Mapping[str, Any]) -> tuple[set[str], set[str]]:
        """(required, allowed) state keys of a saved parameter of ``group``: the peer's."""
        present = {slot.key for slot in self.slots if slot.required and slot.present(group)}
        required = present | set(self.scalar_keys) | ({"step"} if self.saves_step else set())
        return required, {"step", "master", *(slot.key for slot in self.slots),
                          *self.scalar_keys}

    def peer_class(self) -> type | None:
        """The peer class, or None when its package is not installed."""
        module, _, name = self.peer.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            return None
