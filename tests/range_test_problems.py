"""Three small problems that differ in kind, and their ground truth, for judging lr_find's
suggestion (test_lr_find_suggestion.py, benchmarks/bench_lr_suggestion.py). Each has a model
builder (the same initialisation for every run), a loss_fn, training batches (cycled), held-out
batches, and an optimizer pair of one kind, ours and torch's.

  * mlp-adamw: regression, a 16-64-64-1 GELU MLP fitting a random tanh teacher plus noise,
    AdamW (weight decay 0.01), batches of 64;
  * cnn-sgd: 10-class images, two conv-BatchNorm-ReLU-pool blocks, SGD with momentum 0.9,
    on 12x12 noisy, shifted copies of 10 random templates, batches of 32;
  * lm-adam: a one-layer pre-norm transformer character LM (d 32, 2 heads, context 16) on
    examples/data/lighthouse.txt, Adam, batches of 16.
Each takes 1-3 ms a step on one CPU thread.

Ground truth (``measure``): constant-lr trainings of ``STEPS`` steps from the same
initialisation and batches, on ``GRID``; the final loss is the held-out loss; the best lr is
the vertex of the parabola through the grid's lowest final loss and its two neighbours (in
log10 lr), so distances are not rounded to the grid.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled, lr_find

TEXT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                    "data", "lighthouse.txt")


@dataclass
class Problem:
    make: Callable[[], nn.Module]             # the model, always from the same seed
    loss_fn: Callable                         # loss_fn(model, batch) -> 0-dim loss
    criterion: Callable                       # criterion(model(inputs), labels), for peers
    train: list                               # (inputs, labels) batches
    held_out: list
    ours: Callable                            # ours(params, lr) -> a fused optimizer
    torch: Callable                           # torch(params, lr) -> its torch peer


def _with(criterion, *, inputs=lambda b: b[0]):
    return lambda model, batch: criterion(model(inputs(batch)), batch[1])


def mlp_adamw(seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(16, 32, generator=gen) / 4
    w2 = torch.randn(32, 1, generator=gen) / math.sqrt(32)
    x = torch.randn(2048, 16, generator=gen)
    y = torch.tanh(x @ w1) @ w2 + 0.05 * torch.randn(2048, 1, generator=gen)

    def make():
        torch.manual_seed(seed + 1)
        return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(),
                             nn.Linear(64, 1))
    return Problem(make, _with(F.mse_loss), F.mse_loss,
                   [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1536, 64)],
                   [(x[1536:], y[1536:])],
                   lambda ps, lr: FusedAdamWScheduled(ps, lr=lr),
                   lambda ps, lr: torch.optim.AdamW(ps, lr=lr))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 3 * 3, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc(x.flatten(1))


def cnn_sgd(seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 12, 12, generator=gen)
    labels = torch.randint(0, 10, (2048,), generator=gen)
    shifts = torch.randint(-1, 2, (2048, 2), generator=gen).tolist()
    x = torch.stack([torch.roll(templates[c], tuple(s), (1, 2))
                     for c, s in zip(labels.tolist(), shifts)])
    x = x + 1.5 * torch.randn(x.shape, generator=gen)

    def make():
        torch.manual_seed(seed + 1)
        return SmallCNN()
    return Problem(make, _with(F.cross_entropy), F.cross_entropy,
                   [(x[i:i + 32], labels[i:i + 32]) for i in range(0, 1536, 32)],
                   [(x[1536:], labels[1536:])],
                   lambda ps, lr: FusedSGDScheduled(ps, lr=lr, momentum=0.9),
                   lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int = 32, ctx: int = 16, heads: int = 2):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(ctx, d))
        self.block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                                norm_first=True)
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx),
                             persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        h = self.emb(tokens) + self.pos[:t]
        h = self.block(h, src_mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.ln(h))


def lm_adam(seed: int = 0, ctx: int = 16) -> Problem:
    with open(TEXT) as f:
        text = f.read()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    gen = torch.Generator().manual_seed(seed)

    def batch(n):
        starts = torch.randint(0, len(data) - ctx - 1, (n,), generator=gen).tolist()
        return (torch.stack([data[i:i + ctx] for i in starts]),
                torch.stack([data[i + 1:i + ctx + 1] for i in starts]))

    def criterion(logits, targets):
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def make():
        torch.manual_seed(seed + 1)
        return TinyLM(len(chars), ctx=ctx)
    return Problem(make, _with(criterion), criterion, [batch(16) for _ in range(48)],
                   [batch(256)],
                   lambda ps, lr: FusedAdamScheduled(ps, lr=lr),
                   lambda ps, lr: torch.optim.Adam(ps, lr=lr))


PROBLEMS = {"mlp-adamw": mlp_adamw, "cnn-sgd": cnn_sgd, "lm-adam": lm_adam}


# ---------------------------------------------------------------- ground truth

STEPS = 100        # the sweep's length, and each ground-truth training's
GRID = [10 ** (e / 2) for e in range(-8, 2)]       # 1e-4 .. 3.16, half a decade apart


def held_out_loss(model, problem) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        value = sum(float(problem.loss_fn(model, b)) for b in problem.held_out)
    model.train(was)
    value /= len(problem.held_out)
    return value if math.isfinite(value) else math.inf


def train_at(problem, lr: float) -> float:
    """The held-out loss after STEPS steps of our optimizer at a constant ``lr``."""
    model = problem.make()
    opt = problem.ours(model.parameters(), lr)
    for k in range(STEPS):
        opt.zero_grad()
        problem.loss_fn(model, problem.train[k % len(problem.train)]).backward()
        opt.step()
    return held_out_loss(model, problem)


def best_lr(finals: list[float]) -> float:
    """The vertex of the parabola through the lowest grid point and its neighbours."""
    b = min(range(len(finals)), key=finals.__getitem__)
    x = math.log10(GRID[b])
    if 0 < b < len(GRID) - 1 and all(math.isfinite(v) for v in finals[b - 1:b + 2]):
        left, mid, right = finals[b - 1:b + 2]
        curvature = left - 2 * mid + right
        if curvature > 0:
            x += 0.5 * (left - right) / curvature * 0.5      # grid spacing: half a decade
    return 10 ** x


def torch_lr_finder_suggestion(problem) -> float:
    """torch-lr-finder's range test with its defaults, and its suggestion (the steepest
    gradient of its smoothed curve, ``plot(suggest_lr=True)``), on the torch peer."""
    import torch_lr_finder
    from matplotlib.figure import Figure
    model = problem.make()
    finder = torch_lr_finder.LRFinder(model, problem.torch(model.parameters(), 1e-7),
                                      problem.criterion, device="cpu")
    loader = torch.utils.data.DataLoader(problem.train, batch_size=None)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        finder.range_test(loader, start_lr=1e-7, end_lr=10, num_iter=STEPS)
        _, suggestion = finder.plot(ax=Figure().add_subplot(), suggest_lr=True)
    return float(suggestion)


def measure(problem) -> dict:
    """Ground truth on GRID, lr_find's and torch-lr-finder's suggestions, their distances to
    the best lr in decades, and the held-out loss of a training at each."""
    finals = [train_at(problem, lr) for lr in GRID]
    model = problem.make()
    ours = lr_find(model, problem.ours(model.parameters(), 1e-3), problem.loss_fn,
                   problem.train, steps=STEPS).suggestion
    theirs = torch_lr_finder_suggestion(problem)
    best = best_lr(finals)
    r = dict(finals=finals, best=best, best_final=min(finals),
             untrained=held_out_loss(problem.make(), problem),
             ours=ours, ours_final=train_at(problem, ours),
             theirs=theirs, theirs_final=train_at(problem, theirs),
             ours_decades=abs(math.log10(ours / best)),
             theirs_decades=abs(math.log10(theirs / best)))
    r["ours_lost"], r["theirs_lost"] = lost(r, r["ours_final"]), lost(r, r["theirs_final"])
    return r


def lost(r, final: float) -> float:
    """How far ``final`` is from the best final loss, as a fraction of the best run's gain
    over the untrained model (0: as good as the best; 1: no better than untrained)."""
    return (final - r["best_final"]) / (r["untrained"] - r["best_final"])

