"""The benchmark scenarios: real models' parameter shapes and the recipe each trains with.

A scenario is a list of parameter shapes (the tensors an optimizer step walks) and a recipe (the
optimizer, its hyperparameters and its schedule). Shapes come from the models themselves:

  S1  launch-bound     nanoGPT's character-level GPT: 6 layers, 384 wide, vocab 65, context 256
                       (76 tensors, 10.8M parameters), fp32 AdamW, warmup-cosine;
  S2  bandwidth-bound  GPT-2 small (148 tensors, 124M) and, on GPU, a LLaMA-shaped 1.36B list;
  S3  CNN              torchvision's ResNet-50 (161 tensors, 25.6M), SGD with momentum, weight
                       decay and multistep;
  S4  mixed precision  GPT-2 small in bf16 with fp32 master weights and states, AdamW.

``--quick`` on a CPU keeps each scenario's structure (its tensor count, or its per-block shapes)
at a size a 2-core machine steps in milliseconds: see ``scenarios(quick=True, cpu=True)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

from fused_lrs.algorithms import ALGORITHMS, CONVNET, DEFAULT, optimizer_class

GROUPS = ("S1", "S2", "S3", "S4")


def bytes_per_param(states: int, master_weights: bool = False) -> int:
    """Bytes one step must move per parameter (DESIGN.md) for an optimizer keeping ``states``
    state tensors: fp32 reads p, g and the states and writes p and the states (Adam, 2 states:
    28; SGD with momentum, 1: 20). bf16 parameters with fp32 masters read p, g (2 + 2) and the
    master and states (4 each), and write p (2), the master and the states (Adam: 30)."""
    if master_weights:
        return 6 + 8 * (1 + states)
    return 4 * (3 + 2 * states)


@dataclass(frozen=True)
class Recipe:
    """An optimizer and its schedule, given once for fused_lrs and for torch's schedulers.

    The schedule boundaries are early on purpose: the warm-up steps before any timing cross them,
    so a compiled baseline that recompiles at a milestone does so outside the timed loops."""

    optimizer: str                    # a registry name (fused_lrs.algorithms.ALGORITHMS)
    lr: float
    weight_decay: float
    momentum: float = 0.0
    warmup: int = 0                   # linear warmup steps, then cosine over t_max
    start_factor: float = 0.01        # torch's LinearLR needs a start factor > 0
    t_max: int = 0
    milestones: tuple[int, ...] = ()  # or: multistep
    gamma: float = 0.1
    master_weights: bool = False      # bf16 parameters, fp32 master copies and states

    @property
    def last_boundary(self) -> int:
        return max(self.warmup, *self.milestones, 0)

    def options(self, cls) -> dict:
        """The hyperparameters besides the lr that ``cls`` (fused or peer) takes."""
        accepted = inspect.signature(cls).parameters
        return {k: v for k, v in (("weight_decay", self.weight_decay),
                                  ("momentum", self.momentum)) if k in accepted}

    @property
    def fused_class(self) -> type:
        return optimizer_class(self.optimizer)

    @property
    def peer(self) -> str:
        """The class fused_lrs's optimizer is compared with (its record's peer)."""
        return self.fused_class.algorithm.peer

    @property
    def label(self) -> str:
        """The peer's class name, as the scenario titles say it ("AdamW")."""
        return self.peer.rpartition(".")[2]

    @property
    def states(self) -> int:
        """The state tensors a parameter keeps (the record's slots present for this recipe)."""
        cls = self.fused_class
        group = {k: p.default for k, p in inspect.signature(cls).parameters.items()
                 if p.default is not inspect.Parameter.empty}
        group.update(self.options(cls))
        return sum(slot.present(group) for slot in cls.algorithm.slots)


#: The GPT scenarios' recipe: the registry's default algorithm, warmup-cosine.
TRANSFORMER = Recipe(DEFAULT, lr=3e-4, weight_decay=0.1, warmup=10, t_max=10_000)
#: The ResNet-50 scenario's: the registry's convnet algorithm with momentum, multistep.
CNN = Recipe(CONVNET, lr=0.1, weight_decay=1e-4, momentum=0.9, milestones=(5, 10))
#: The mixed-precision scenario's: the transformer recipe on bf16 parameters with fp32 masters.
TRANSFORMER_MASTER = dataclasses.replace(TRANSFORMER, master_weights=True)


@dataclass(frozen=True)
class Scenario:
    name: str                         # unique, e.g. "S2-llama"
    group: str                        # what --scenarios selects: S1 .. S4
    title: str
    shapes: tuple[tuple[int, ...], ...]
    recipe: Recipe
    reduced: str = ""                 # how a --quick CPU variant differs from the real one
    gpu_only: bool = False

    @property
    def tensors(self) -> int:
        return len(self.shapes)

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.recipe.master_weights else "float32"

    @property
    def bytes_per_param(self) -> int:
        return bytes_per_param(self.recipe.states, self.recipe.master_weights)

    @property
    def bytes_per_step(self) -> int:
        return self.bytes_per_param * self.params


def gpt_shapes(layers: int, d: int, vocab: int, ctx: int, embeddings: bool = True):
    """nanoGPT's parameters (biases on, lm_head tied to wte): per block ln_1, c_attn, c_proj,
    ln_2, c_fc, c_proj, each weight and bias; then ln_f."""
    shapes = [(vocab, d), (ctx, d)] if embeddings else []
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d),
                   (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)] if embeddings else shapes


def gpt2_small_shapes():
    """GPT-2 small: 148 tensors, 124,439,808 parameters."""
    return gpt_shapes(12, 768, 50257, 1024)


def llama_shapes(layers: int = 24, d: int = 2048, ffn: int = 5632, vocab: int = 32000):
    """A LLaMA-shaped decoder (RMSNorm, SwiGLU, untied head; TinyLlama's widths with full
    attention and 24 layers): 219 tensors, 1.36B parameters."""
    shapes = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d,), (d, d), (d, d), (d, d), (d, d), (d,), (ffn, d), (ffn, d), (d, ffn)]
    return shapes + [(d,), (vocab, d)]


def resnet50_shapes(width_div: int = 1, classes: int = 1000):
    """torchvision's resnet50 parameters (161 tensors, 25,557,032 at full width); ``width_div``
    divides every channel count and keeps the tensor count."""
    def w(c):
        return c // width_div

    shapes = [(w(64), 3, 7, 7), (w(64),), (w(64),)]
    inplanes = w(64)
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        p = w(planes)
        for b in range(blocks):
            shapes += [(p, inplanes, 1, 1), (p,), (p,), (p, p, 3, 3), (p,), (p,),
                       (4 * p, p, 1, 1), (4 * p,), (4 * p,)]
            if b == 0:                                   # the downsample branch
                shapes += [(4 * p, inplanes, 1, 1), (4 * p,), (4 * p,)]
            inplanes = 4 * p
    return shapes + [(classes, inplanes), (classes,)]


def scenarios(quick: bool = False, cpu: bool = False) -> list[Scenario]:
    """Every scenario, in report order. ``quick and cpu`` gives the reduced variants."""
    small = quick and cpu
    s1 = (gpt_shapes(6, 96, 65, 256) if small else gpt_shapes(6, 384, 65, 256))
    s2 = (gpt_shapes(1, 768, 0, 0, embeddings=False) if small else gpt2_small_shapes())
    s3 = resnet50_shapes(4, 250) if small else resnet50_shapes()
    return [
        Scenario("S1", "S1", f"launch-bound: 6-layer 384-wide GPT, fp32 {TRANSFORMER.label}, "
                 "warmup-cosine", tuple(s1), TRANSFORMER,
                 reduced="width 96 instead of 384 (same 76 tensors)" if small else ""),
        Scenario("S2", "S2", f"bandwidth-bound: GPT-2 small, fp32 {TRANSFORMER.label}, "
                 "warmup-cosine", tuple(s2), TRANSFORMER,
                 reduced="one GPT-2-small block (12 tensors, 7.1M) instead of 148 tensors, 124M"
                 if small else ""),
        Scenario("S2-llama", "S2", f"bandwidth-bound: LLaMA-shaped 1.36B, fp32 "
                 f"{TRANSFORMER.label}, warmup-cosine", tuple(llama_shapes()), TRANSFORMER,
                 gpu_only=True),
        Scenario("S3", "S3", f"CNN: ResNet-50, {CNN.label} momentum + weight decay, multistep",
                 tuple(s3), CNN,
                 reduced="channels / 4, 250 classes (same 161 tensors)" if small else ""),
        Scenario("S4", "S4", "mixed precision: GPT-2 small in bf16, fp32 master weights, "
                 f"{TRANSFORMER_MASTER.label}, warmup-cosine", tuple(s2), TRANSFORMER_MASTER,
                 reduced="one GPT-2-small block (12 tensors, 7.1M) instead of 148 tensors, 124M"
                 if small else ""),
    ]


def select(names: str, quick: bool = False, cpu: bool = False) -> list[Scenario]:
    """The scenarios of the comma-separated groups in ``names`` ("S1,S3")."""
    wanted = [n.strip().upper() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(GROUPS))
    if unknown or not wanted:
        raise ValueError(f"--scenarios takes a comma-separated list of {', '.join(GROUPS)}; "
                         f"got {names!r}")
    return [s for s in scenarios(quick, cpu) if s.group in wanted]


def with_optimizer(chosen: list[Scenario], optimizer: str | None) -> list[Scenario]:
    """``chosen`` stepping ``optimizer`` (a registry name; None: their own recipes), each with
    its recipe's lr, schedule and options."""
    if optimizer is None:
        return chosen
    if optimizer not in ALGORITHMS:
        raise ValueError(f"--optimizer: unknown {optimizer!r}; known: {', '.join(ALGORITHMS)}")
    record = ALGORITHMS[optimizer]
    if record.peer_class() is None:
        package = record.peer.partition(".")[0].replace("_", "-")
        raise ValueError(f"--optimizer {optimizer}: its peer {record.peer} is not installed "
                         f"(pip install {package}, or the test extra: "
                         f"pip install 'fused-lrs[test]')")
    return [dataclasses.replace(s, title=f"{s.title.split(',')[0]}, {optimizer}",
                                recipe=dataclasses.replace(s.recipe, optimizer=optimizer))
            for s in chosen]
