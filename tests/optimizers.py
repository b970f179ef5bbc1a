"""The table of optimizers that every suite reads (torch's ``common_optimizers.py`` is the model).

One row per fused optimizer class of the registry (``fused_lrs.algorithms.OPTIMIZERS``; a test
holds the two equal). A row gives what the suites need to drive the class and its peer alike:
  * ``options``: an option grid that covers every option of the class (each a dict of keyword
    arguments, with an id), which the equivalence suites run in full;
  * ``representative``: one configuration with every option that changes the update on, for
    suites that run one configuration per class (schedules, groups, lifecycle, devices);
  * ``sample`` (default: none): a few more configurations (ids and options) for the suites that
    cannot afford the grid (the interpreted kernel, the CPU backend against the reference,
    checkpoints): with the representative they take every value each option takes in the grid
    and every compiled variant of the kernel (``test_optimizer_table.py`` holds both); give the
    hyperparameters the grid leaves at their defaults (betas, eps) other values there, so that
    a value passed to the wrong place shows;
  * ``changes``: hyperparameter changes made to every group between steps;
  * ``invalid``: hyperparameter values ours refuses (with the peer's checks and messages where
    the peer has them: torch does not check every one), and the message it refuses them with;
  * ``peer_unchecked`` (default: none): the ``(key, value)`` pairs of ``invalid`` that the peer
    does not refuse with a ValueError (it takes them, or fails later with another error); the
    peer refuses every other one with our message, word for word;
  * ``extra_state``: state keys ours keeps that the peer does not (torch's SGD keeps no
    ``step``; our SGD counts its updates to tell the first, which copies the gradient);
  * ``fused_peer``: the peer has a fused CPU kernel (``fused=True``): the CPU backend, which
    runs that kernel, is compared with it;
  * ``peer_maximize``: the peer takes ``maximize=``. Where it does not (lion_pytorch), ``peer``
    given ``maximize=True`` builds it through ``_maximizing``, which takes ``maximize=`` (also
    per group) and negates those groups' gradients around each step, so every suite drives both
    optimizers with the same options; without ``maximize`` it is the peer itself (what
    ``from_torch`` converts: the suites that convert the peer leave out ``maximize=True``);
  * ``fused_peer_on_dtensor`` (default False): that fused kernel also takes FSDP2's DTensor
    shards (torch 2.13's fused Adam does, its fused SGD has no sharding rule); where it does
    not, the distributed suite compares with the peer's foreach path;
  * ``sixteen_bit`` (default: the representative): the configuration the interpreted kernel's
    16-bit storage comparison runs, which must round as the reference does: the reference
    rounds torch's ``add(alpha=)`` once (a fused multiply-add, e.g. SGD's ``g + wd p``), the
    interpreter every operation, and with bf16 storage a float32 difference of one ulp can flip
    a rounding, which that comparison (1e-6) reports (SGD's representative, weight decay 0.1:
    3 bf16 ulps in one of 1025 momentum_buffer entries after 20 steps);
  * ``bitwise_peer`` (default: none): the backends (``"reference"``, ``"torch_fused"``) whose
    run at a constant lr equals the peer's bit for bit in fp32, every state, over the whole
    grid: each operation is the peer's, in its order (the CPU backend runs the peer's own fused
    kernel where it has one); elsewhere the comparisons keep their tolerances;
  * ``sweep`` (default False): the costly suites whose subject every algorithm shares (every
    schedule family through the interpreted kernel, torch.compile, CUDA graphs, the 2-rank
    distributed runs beyond one FSDP2 comparison per row) run this row; one or two rows carry
    them, so that a new row costs those suites nothing. ``ANY`` is the first such row, for
    tests that need one optimizer for something every algorithm shares (the launcher's
    tables, hooks, the choice of backend).
The peer is the record's (``Algorithm.peer``); ``peer_options`` are passed to it besides the
row's options.

What a row costs, by tier (the suites choose the tier, so a new row needs no suite edited):
  * the grid (``every_option``): the reference and the CPU backend against the peer
    (test_optim_vs_torch), from_torch mid-run (test_migrate): cheap steps on tiny tensors;
  * the few (``few_options``: representative and sample): the CPU backend against the
    reference, the interpreted kernel's options, checkpoints;
  * the representative (``representatives``): every other suite that concerns an algorithm
    (groups, GradScaler, masters, schedules on the reference, errors, lifecycle, FSDP2, GPU);
  * the sweep rows (``swept``) and ``ANY``: what every algorithm shares, once or twice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from itertools import product

import pytest
import torch

from fused_lrs import (
    FusedAdadeltaScheduled,
    FusedAdagradScheduled,
    FusedAdamaxScheduled,
    FusedAdamScheduled,
    FusedAdamWScheduled,
    FusedASGDScheduled,
    FusedLionScheduled,
    FusedNAdamScheduled,
    FusedRAdamScheduled,
    FusedRMSpropScheduled,
    FusedSGDScheduled,
)

NAN = math.nan


@dataclass(frozen=True)
class OptimizerInfo:
    cls: type
    options: tuple[tuple[str, dict], ...]
    representative: dict
    changes: dict[int, dict] = field(default_factory=dict)
    invalid: tuple[tuple[str, object, str], ...] = ()
    extra_state: frozenset = frozenset()
    fused_peer: bool = False
    peer_options: dict = field(default_factory=dict)
    sample: tuple[tuple[str, dict], ...] = ()
    fused_peer_on_dtensor: bool = False
    sixteen_bit: dict | None = None
    sweep: bool = False
    peer_maximize: bool = True
    bitwise_peer: frozenset = frozenset()
    peer_unchecked: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def record(self):
        return self.cls.algorithm

    def peer(self, params, fused: bool = False, **options):
        """The peer optimizer on ``params`` (tensors or groups) with ``options``; ``fused``:
        its fused CPU kernel (where it has one)."""
        peer_class = self.record.peer_class()
        if peer_class is None:
            pytest.skip(f"{self.record.peer} is not installed")
        extra = {"fused": True} if fused and self.fused_peer else {}
        if not self.peer_maximize and options.pop("maximize", False):
            peer_class, options = _maximizing(peer_class), dict(options, maximize=True)
        return peer_class(params, **self.peer_options, **options, **extra)

    def grid(self):
        """``options`` as pytest params, ids ``Class-option-id``."""
        return [pytest.param(self, options, id=f"{self.name}-{name}")
                for name, options in self.options]

    @property
    def few(self) -> tuple[tuple[str, dict], ...]:
        """The representative, then the sample: ``(id, options)`` pairs."""
        return (("representative", self.representative), *self.sample)


@functools.cache
def _maximizing(peer_class: type) -> type:
    """``peer_class`` with ``maximize=`` (a default, and a group entry like any other): a step
    negates the gradients of the groups that maximize, steps, and restores them (negation is
    exact, so the peer sees exactly -g and the caller gets g back)."""
    class Maximizing(peer_class):
        def __init__(self, params, *args, maximize: bool = False, **kwargs):
            super().__init__(params, *args, **kwargs)
            self.defaults["maximize"] = maximize       # groups added later take it too
            for group in self.param_groups:
                group.setdefault("maximize", maximize)

        def step(self, closure=None):
            grads = [p.grad for group in self.param_groups if group["maximize"]
                     for p in group["params"] if p.grad is not None]
            for g in grads:
                g.neg_()
            try:
                return super().step(closure)
            finally:
                for g in grads:
                    g.neg_()

    Maximizing.__name__ = Maximizing.__qualname__ = f"Maximizing{peer_class.__name__}"
    return Maximizing


def _flags(**choices) -> tuple[tuple[str, dict], ...]:
    """Every combination of ``choices`` (name -> values), with readable ids."""
    names = list(choices)
    out = []
    for values in product(*(choices[n] for n in names)):
        options = {n: v for n, v in zip(names, values) if v is not None}
        ident = "-".join(f"{n}={v}" for n, v in options.items()) or "defaults"
        out.append((ident, options))
    return tuple(out)


_SGD_MOMENTA = {"plain": {}, "momentum": dict(momentum=0.9),
                "dampening": dict(momentum=0.9, dampening=0.3),
                "nesterov": dict(momentum=0.9, nesterov=True)}
_ADAM_INVALID = (("lr", -1e-3, "learning rate"), ("lr", NAN, "learning rate"),
                 ("lr", torch.tensor([1e-3, 1e-3]), "lr"), ("eps", -1e-8, "epsilon"),
                 ("eps", NAN, "epsilon"), ("weight_decay", -0.1, "weight_decay"),
                 ("weight_decay", NAN, "weight_decay"), ("betas", (-0.1, 0.999), "beta"),
                 ("betas", (0.9, 1.0), "beta"), ("betas", (1.0, 0.9), "beta"),
                 ("betas", (NAN, 0.999), "beta"), ("betas", (0.9, NAN), "beta"),
                 ("betas", (0.9,), "beta"))

# torch's Adam indexes betas[1] before it checks the pair: an IndexError.
_ADAM_UNCHECKED = (("betas", (0.9,)),)
# What torch's Adamax, NAdam and RAdam refuse (Adam's list but betas=(0.9,), an IndexError there).
_BETAS_INVALID = _ADAM_INVALID[:-1]
_LR_WD_INVALID = (("lr", -1e-3, "learning rate"), ("lr", NAN, "learning rate"),
                  ("lr", torch.tensor([1e-3, 1e-3]), "lr"), ("weight_decay", -0.1, "weight_decay"),
                  ("weight_decay", NAN, "weight_decay"))

_FUSED = frozenset({"torch_fused"})
_BOTH = frozenset({"reference", "torch_fused"})

OPTIMIZER_INFOS = [
    OptimizerInfo(
        cls=FusedAdamScheduled,          # Adam, and AdamW by its decoupled flag
        options=_flags(decoupled_weight_decay=(None, True), amsgrad=(False, True),
                       maximize=(False, True), weight_decay=(0.0, 0.1)),
        representative=dict(amsgrad=True, weight_decay=0.1),
        changes={10: dict(weight_decay=0.2), 20: dict(betas=(0.8, 0.99)), 30: dict(eps=1e-3),
                 40: dict(maximize=True)},
        invalid=_ADAM_INVALID, fused_peer=True, fused_peer_on_dtensor=True,
        peer_unchecked=_ADAM_UNCHECKED,
        sample=(("maximize-betas-eps", dict(maximize=True, betas=(0.8, 0.99), eps=1e-6)),
                ("decoupled-maximize", dict(decoupled_weight_decay=True, weight_decay=0.1,
                                            maximize=True))),
        bitwise_peer=_FUSED),
    OptimizerInfo(
        cls=FusedAdamWScheduled,
        options=_flags(amsgrad=(False, True), maximize=(False, True), weight_decay=(0.0, 0.1)),
        representative=dict(weight_decay=0.1),
        changes={10: dict(weight_decay=0.3), 25: dict(betas=(0.5, 0.9))},
        invalid=_ADAM_INVALID, fused_peer=True, fused_peer_on_dtensor=True, sweep=True,
        peer_unchecked=_ADAM_UNCHECKED,
        sample=(("amsgrad-maximize-betas-eps", dict(amsgrad=True, maximize=True,
                                                    weight_decay=0.0, betas=(0.8, 0.99),
                                                    eps=1e-6)),),
        bitwise_peer=_FUSED),
    OptimizerInfo(
        cls=FusedSGDScheduled,
        options=tuple((f"{m}-maximize={x}-weight_decay={wd}",
                       dict(momenta, maximize=x, weight_decay=wd))
                      for (m, momenta), x, wd in product(_SGD_MOMENTA.items(), (False, True),
                                                         (0.0, 0.1))),
        representative=dict(momentum=0.9, nesterov=True, weight_decay=0.1),
        changes={10: dict(momentum=0.9), 20: dict(dampening=0.5),
                 30: dict(dampening=0.0, nesterov=True), 40: dict(weight_decay=0.1,
                                                                  maximize=True)},
        invalid=(("lr", -0.1, "learning rate"), ("lr", NAN, "learning rate"),
                 ("momentum", -0.9, "momentum"), ("momentum", NAN, "momentum"),
                 ("dampening", -0.1, "dampening"), ("dampening", NAN, "dampening"),
                 ("dampening", 1.5, "dampening"), ("weight_decay", -0.1, "weight_decay"),
                 ("weight_decay", NAN, "weight_decay")),
        # torch's SGD checks lr, momentum and weight decay with `< 0.0` (NaN passes), and not
        # the dampening.
        peer_unchecked=(("lr", NAN), ("momentum", NAN), ("dampening", -0.1),
                        ("dampening", NAN), ("dampening", 1.5), ("weight_decay", NAN)),
        extra_state=frozenset({"step"}), fused_peer=True, sweep=True,
        sixteen_bit=dict(momentum=0.9),
        sample=(("plain-maximize", dict(maximize=True)),
                ("dampening", dict(momentum=0.5, dampening=0.3, weight_decay=0.02))),
        bitwise_peer=_FUSED),
    # The five torch fuses none of: the CPU backend's foreach updates are compared with torch's
    # default CPU path, the single-tensor one.
    OptimizerInfo(
        cls=FusedAdamaxScheduled,
        options=(*_flags(maximize=(False, True), weight_decay=(0.0, 0.1)),
                 ("betas-eps", dict(betas=(0.4, 0.9), eps=1e-3))),
        representative=dict(weight_decay=0.1),
        sample=(("maximize-betas-eps", dict(maximize=True, betas=(0.4, 0.9), eps=1e-3)),),
        changes={10: dict(weight_decay=0.2), 20: dict(betas=(0.8, 0.99)), 30: dict(eps=1e-3),
                 40: dict(maximize=True)},
        invalid=_BETAS_INVALID, bitwise_peer=_BOTH),
    OptimizerInfo(
        cls=FusedNAdamScheduled,
        options=(("defaults", {}), ("weight_decay", dict(weight_decay=0.1)),
                 ("decoupled", dict(weight_decay=0.1, decoupled_weight_decay=True)),
                 ("maximize-decoupled", dict(weight_decay=0.1, decoupled_weight_decay=True,
                                             maximize=True)),
                 ("momentum_decay-betas-eps", dict(momentum_decay=0.05, betas=(0.4, 0.9),
                                                   eps=1e-3))),
        representative=dict(weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01),
        sample=(("defaults", {}),
                ("maximize-momentum_decay-betas-eps", dict(maximize=True, momentum_decay=0.05,
                                                           betas=(0.4, 0.9), eps=1e-3))),
        changes={10: dict(weight_decay=0.2), 20: dict(betas=(0.8, 0.99)),
                 30: dict(momentum_decay=0.02, decoupled_weight_decay=True),
                 40: dict(maximize=True, eps=1e-3)},
        invalid=(*_BETAS_INVALID, ("momentum_decay", -1e-3, "momentum_decay"),
                 ("momentum_decay", NAN, "momentum_decay"))),
    OptimizerInfo(
        cls=FusedRAdamScheduled,
        # beta2 0.9: rho_k passes 5 at step 6 (the rectified update); the default's at 7.
        options=(("defaults", {}), ("weight_decay", dict(weight_decay=0.1)),
                 ("decoupled", dict(weight_decay=0.1, decoupled_weight_decay=True)),
                 ("maximize-weight_decay", dict(weight_decay=0.1, maximize=True)),
                 ("betas-eps", dict(betas=(0.4, 0.9), eps=1e-3))),
        representative=dict(weight_decay=0.1, decoupled_weight_decay=True),
        sample=(("maximize-betas-eps", dict(maximize=True, betas=(0.4, 0.9), eps=1e-3)),),
        changes={10: dict(weight_decay=0.2), 20: dict(betas=(0.8, 0.99)),
                 30: dict(decoupled_weight_decay=True, eps=1e-3), 40: dict(maximize=True)},
        invalid=_BETAS_INVALID),
    OptimizerInfo(
        cls=FusedAdadeltaScheduled,
        options=(*_flags(maximize=(False, True), weight_decay=(0.0, 0.1)),
                 ("rho-eps", dict(rho=0.5, eps=1e-3))),
        representative=dict(weight_decay=0.1),
        sample=(("maximize-rho-eps", dict(maximize=True, rho=0.5, eps=1e-3)),),
        changes={10: dict(weight_decay=0.2), 20: dict(rho=0.5), 30: dict(eps=1e-3),
                 40: dict(maximize=True)},
        invalid=(*_LR_WD_INVALID[:3], ("rho", -0.1, "rho"), ("rho", 1.5, "rho"),
                 ("rho", NAN, "rho"), ("eps", -1e-6, "epsilon"), ("eps", NAN, "epsilon"),
                 *_LR_WD_INVALID[3:])),
    OptimizerInfo(
        cls=FusedASGDScheduled,
        # t0 = 5: parameters are averaged from their 6th update (before, ax copies them).
        options=(("defaults", {}), ("weight_decay", dict(weight_decay=0.1)),
                 ("maximize-weight_decay", dict(weight_decay=0.1, maximize=True)),
                 ("lambd-alpha-t0", dict(lambd=0.01, alpha=0.5, t0=5))),
        representative=dict(weight_decay=0.1, lambd=0.01, t0=5),
        sample=(("maximize-alpha", dict(maximize=True, alpha=0.5)),),
        changes={10: dict(weight_decay=0.2), 20: dict(lambd=0.05), 30: dict(alpha=0.6, t0=3),
                 40: dict(maximize=True)},
        invalid=_LR_WD_INVALID),
    OptimizerInfo(
        cls=FusedRMSpropScheduled,
        options=_flags(momentum=(0.0, 0.9), centered=(False, True), maximize=(False, True),
                       weight_decay=(0.0, 0.1)),
        representative=dict(momentum=0.9, centered=True, weight_decay=0.1),
        # (torch makes momentum_buffer and grad_avg with a parameter's first state only, and
        # fails on a later step that needs one: momentum and centered stay as they are)
        changes={10: dict(weight_decay=0.1), 20: dict(alpha=0.9), 30: dict(eps=1e-3),
                 40: dict(maximize=True)},
        invalid=(("lr", -1e-2, "learning rate"), ("lr", NAN, "learning rate"),
                 ("lr", torch.tensor([1e-2, 1e-2]), "lr"), ("eps", -1e-8, "epsilon"),
                 ("eps", NAN, "epsilon"), ("momentum", -0.9, "momentum"),
                 ("momentum", NAN, "momentum"), ("weight_decay", -0.1, "weight_decay"),
                 ("weight_decay", NAN, "weight_decay"), ("alpha", -0.1, "alpha"),
                 ("alpha", NAN, "alpha")),
        sample=(("plain-maximize-alpha-eps", dict(maximize=True, alpha=0.9, eps=1e-6)),),
        # The representative rounds one fp16 momentum_buffer entry of 1023 one ulp apart from
        # the reference after 20 steps (the kernel's fused multiply-adds follow torch's); with
        # alpha 0 and no momentum, centering or decay every operation rounds alike.
        sixteen_bit=dict(alpha=0.0, maximize=True), bitwise_peer=_BOTH),
    OptimizerInfo(
        cls=FusedAdagradScheduled,
        options=_flags(lr_decay=(0.0, 0.05), weight_decay=(0.0, 0.1), maximize=(False, True))
        + (("initial_accumulator_value=0.1", dict(initial_accumulator_value=0.1)),
           ("initial_accumulator_value=0.5-eps=1e-3-lr_decay=0.1",
            dict(initial_accumulator_value=0.5, eps=1e-3, lr_decay=0.1))),
        representative=dict(lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.1),
        changes={10: dict(lr_decay=0.1), 20: dict(weight_decay=0.05), 30: dict(eps=1e-3),
                 40: dict(maximize=True)},
        invalid=(("lr", -1e-2, "learning rate"), ("lr", NAN, "learning rate"),
                 ("lr", torch.tensor([1e-2, 1e-2]), "lr"), ("lr_decay", -0.1, "lr_decay"),
                 ("lr_decay", NAN, "lr_decay"), ("weight_decay", -0.1, "weight_decay"),
                 ("weight_decay", NAN, "weight_decay"),
                 ("initial_accumulator_value", -0.1, "initial_accumulator_value"),
                 ("initial_accumulator_value", NAN, "initial_accumulator_value"),
                 ("eps", -1e-10, "epsilon"), ("eps", NAN, "epsilon")),
        fused_peer=True,
        sample=(("plain", {}), ("maximize-eps", dict(maximize=True, eps=1e-3, lr_decay=0.1,
                                                     initial_accumulator_value=0.5))),
        bitwise_peer=_BOTH),
    OptimizerInfo(
        cls=FusedLionScheduled,
        # Decoupled decay divides by the constructor's lr (1e-4 by default): 1e-5 is 0.1.
        options=tuple((f"{decay}-maximize={x}", dict(options, maximize=x))
                      for (decay, options), x in product(
                          {"no-decay": {}, "weight_decay=0.1": dict(weight_decay=0.1),
                           "decoupled": dict(weight_decay=1e-5, decoupled_weight_decay=True),
                           "betas=(0.5,0.9)-weight_decay=0.1":
                               dict(betas=(0.5, 0.9), weight_decay=0.1)}.items(),
                          (False, True))),
        # Not decoupled: lion_pytorch keeps the constructor's lr object as its divisor, and a
        # torch scheduler driving a tensor lr rewrites that very tensor in place (the
        # divisor then follows the schedule); the grid covers decoupled decay.
        representative=dict(weight_decay=0.1, betas=(0.8, 0.95)),
        changes={10: dict(weight_decay=0.2), 20: dict(betas=(0.5, 0.9))},
        # lion_pytorch asserts these (AssertionError, no message; the 2-element lr fails in its
        # comparison): the messages are ours, torch's wording.
        invalid=(("lr", -1e-3, "learning rate"), ("lr", NAN, "learning rate"),
                 ("lr", torch.tensor([1e-3, 1e-3]), "lr"), ("betas", (-0.1, 0.99), "beta"),
                 ("betas", (0.9, 1.5), "beta"), ("betas", (NAN, 0.99), "beta"),
                 ("betas", (0.9, NAN), "beta")),
        extra_state=frozenset({"step"}), peer_maximize=False,
        sample=(("decoupled-maximize", dict(weight_decay=1e-5, decoupled_weight_decay=True,
                                            maximize=True)),
                ("plain-betas", dict(betas=(0.5, 0.9)))),
        bitwise_peer=_BOTH),
]
INFO = {info.cls: info for info in OPTIMIZER_INFOS}


def infos(**filters):
    """The rows as pytest params (id: the class name), optionally only those whose attributes
    equal ``filters`` (e.g. ``fused_peer=True``)."""
    return [pytest.param(info, id=info.name) for info in OPTIMIZER_INFOS
            if all(getattr(info, k) == v for k, v in filters.items())]


def every_option():
    """Every row's whole option grid, as pytest params ``(info, options)``."""
    return [param for info in OPTIMIZER_INFOS for param in info.grid()]


def representatives(**filters):
    """Each row's representative configuration, as pytest params ``(info, options)``
    (``filters`` as for ``infos``)."""
    return [pytest.param(info, info.representative, id=info.name) for info in OPTIMIZER_INFOS
            if all(getattr(info, k) == v for k, v in filters.items())]


def few_options():
    """Each row's representative and sample, as pytest params ``(info, options)``, ids
    ``Class-id``: for the suites that cannot afford every row's whole grid."""
    return [pytest.param(info, options, id=f"{info.name}-{name}")
            for info in OPTIMIZER_INFOS for name, options in info.few]


def swept():
    """The rows that carry the costly suites (``sweep``), as pytest params ``(info, options)``
    with their representative."""
    return representatives(sweep=True)


#: The row for tests that need one optimizer and check what every algorithm shares.
ANY = next(info for info in OPTIMIZER_INFOS if info.sweep)
