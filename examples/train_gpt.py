"""Train a tiny character-level GPT twice from one seed: fused_lrs against torch, same curves.

    python examples/train_gpt.py                      # CPU: well under 3 minutes; GPU if present
    python examples/train_gpt.py --steps 600 --out runs/    # default --out: bench-results/

Run 1 uses ``FusedAdamWScheduled(schedule=warmup(cosine(...), steps=...))``; run 2 uses
``torch.optim.AdamW`` with ``SequentialLR([LinearLR, CosineAnnealingLR])``, torch's loop of
``opt.step(); sched.step()``. Both start from the same initial weights and see the same batches,
so the only difference is the optimizer's floating-point rounding, and the loss curves must
agree to within ``--tol`` (relative, at every step). Deterministic algorithms are switched on so
that, on a GPU too, a run repeats itself exactly and any difference is the optimizer's.

Why the tolerance is 1e-4: both runs compute AdamW in float32, in a different order, so each
step's parameters differ in their last bits (~1e-7 relative). Measured on CPU with the defaults,
max |dloss|/loss over 300 steps is 2.2e-7: a 450x margin. A real bug is far louder: the lr of the
neighbouring step (an off-by-one in the step convention) moves the loss by 8e-3 at step 2 and by
4e-2 at most, 80x the tolerance or more. The comparison needs stable training: at lr 3e-3 this
model's loss spikes after warmup, and the spike amplifies the last-bit differences to 2e-3 by
step 150 and 1.5e-2 by step 300, whichever optimizer is right; hence the default lr of 1e-3.

Writes ``train_gpt.png`` (both loss curves, their relative difference, both lr curves) and
``train_gpt.json`` to ``--out``. Exit status 1 when the curves differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "lighthouse.txt")


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (y.transpose(1, 2) for y in
                   self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2))
        # Attention written out (not F.scaled_dot_product_attention): its fused GPU kernels may
        # be non-deterministic in backward, and the comparison needs runs that repeat exactly.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, ctx: int, d: int, layers: int, heads: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for m in self.modules():                      # GPT-2's init: small, so that the tied
            if isinstance(m, (nn.Linear, nn.Embedding)):   # head starts near uniform
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T            # lm_head tied to the embedding


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DATA, help="a text file (default: examples/data/)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30, help="linear warmup steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--d", type=int, default=96)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4, help="max |dloss| / loss at any step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench-results",
                   help="directory for train_gpt.png and .json (default bench-results/)")
    args = p.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        p.error("need 0 < --warmup < --steps")
    return args


def make_optimizer(kind: str, model, args):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    from fused_lrs import FusedAdamWScheduled
    from fused_lrs.schedules import cosine, warmup

    common = dict(lr=args.lr, betas=(0.9, 0.99), weight_decay=0.1)
    start = 0.01                                  # torch's LinearLR needs a start factor > 0
    if kind == "fused_lrs":
        schedule = warmup(cosine(T_max=args.steps - args.warmup), steps=args.warmup,
                          start_factor=start)
        return FusedAdamWScheduled(model.parameters(), schedule=schedule, **common), None
    opt = torch.optim.AdamW(model.parameters(), **common)
    sched = SequentialLR(opt, [LinearLR(opt, start, 1.0, args.warmup),
                               CosineAnnealingLR(opt, args.steps - args.warmup)], [args.warmup])
    return opt, sched


def train(kind: str, data: torch.Tensor, vocab: int, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)                  # the same initial weights for both runs
    model = GPT(vocab, args.ctx, args.d, args.layers, args.heads).to(device)
    opt, sched = make_optimizer(kind, model, args)
    batches = torch.Generator().manual_seed(args.seed + 1)   # and the same batches
    losses, lrs = [], []
    warm = min(5, args.steps - 1)                 # timing starts after compile and state init
    for i in range(args.steps):
        if i == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        starts = torch.randint(len(data) - args.ctx - 1, (args.batch,), generator=batches)
        chunk = torch.stack([data[s:s + args.ctx + 1] for s in starts.tolist()]).to(device)
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), chunk[:, 1:].reshape(-1))
        loss.backward()
        if sched is None:
            opt.step()
            lrs.append(opt.last_lr[0])            # the lr this step used, still on the device
        else:
            lrs.append(opt.param_groups[0]["lr"])  # the lr opt.step() is about to use
            opt.step()
            sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"loss": torch.stack(losses).double().cpu().tolist(),
            "lr": [float(x) for x in lrs],
            "tokens_per_s": (args.steps - warm) * args.batch * args.ctx / seconds}


def draw(path: str, runs: dict, rel: list[float], tol: float, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_rel, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=(2, 1, 1))
    steps = range(1, len(rel) + 1)
    for (name, run), style in zip(runs.items(), ("-", "--")):
        ax_loss.plot(steps, run["loss"], style, lw=1.2, label=name)
        ax_lr.plot(steps, run["lr"], style, lw=1.2, label=name)
    # An exact 0 has no place on a log axis: drawn at the bottom of the scale instead.
    ax_rel.semilogy(steps, [max(r, 1e-12) for r in rel], lw=1, label="|dloss| / loss")
    ax_rel.axhline(tol, color="red", ls=":", label=f"tolerance {tol:g}")
    ax_loss.set_ylabel("training loss (nats/char)")
    ax_loss.set_title(title, fontsize=9)
    ax_rel.set_ylabel("relative difference")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_rel, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def relative(a, b) -> list[float]:
    """|a - b| / |b| elementwise; a NaN (a diverged run) counts as an infinite difference."""
    rel = (abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))
    return [r if math.isfinite(r) else math.inf for r in rel]


def main(argv=None) -> int:
    args = parse_args(argv)
    # Each run must repeat itself exactly (GPU reductions included), so that the only thing
    # that differs between the two is the optimizer.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    # warn_only: an op without a deterministic kernel on some device warns instead of failing;
    # the tolerance then judges the result.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _compare(args)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def _compare(args) -> int:
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    n_params = sum(p.numel() for p in GPT(len(chars), args.ctx, args.d, args.layers,
                                          args.heads).parameters())
    print(f"data: {args.data} ({len(text):,} chars, vocab {len(chars)}); model: {args.layers} "
          f"layers, d={args.d}, {args.heads} heads, ctx {args.ctx}, {n_params:,} params; "
          f"{args.steps} steps of {args.batch}x{args.ctx} tokens on {args.device}")
    runs = {}
    for kind, label in (("fused_lrs", "FusedAdamWScheduled + warmup(cosine)"),
                        ("torch", "torch AdamW + SequentialLR(LinearLR, CosineAnnealingLR)")):
        runs[label] = train(kind, data, len(chars), args)
        r = runs[label]
        print(f"{label:>58}: loss {r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}, "
              f"{r['tokens_per_s']:,.0f} tokens/s")
    fused, ref = runs.values()
    rel_loss, rel_lr = relative(fused["loss"], ref["loss"]), relative(fused["lr"], ref["lr"])
    dloss, dlr = max(rel_loss), max(rel_lr)
    at, at_lr = rel_loss.index(dloss), rel_lr.index(dlr)
    agree = dloss <= args.tol
    print(f"max |dloss|/loss = {dloss:.2e} at step {at + 1} (tolerance {args.tol:g}): "
          f"{'the curves agree' if agree else 'THE CURVES DIFFER'}")
    print(f"max |dlr|/lr = {dlr:.2e} at step {at_lr + 1}")
    os.makedirs(args.out, exist_ok=True)
    png, js = (os.path.join(args.out, f"train_gpt.{ext}") for ext in ("png", "json"))
    draw(png, runs, rel_loss, args.tol, f"char-GPT, {n_params:,} params, {args.device}: "
         f"max |dloss|/loss {dloss:.1e} (tol {args.tol:g})")
    with open(js, "w") as f:
        json.dump({"args": vars(args), "params": n_params, "max_rel_dloss": dloss,
                   "max_rel_dlr": dlr, "tol": args.tol, "agree": agree, "runs": runs}, f)
    print(f"wrote {png} and {js}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
