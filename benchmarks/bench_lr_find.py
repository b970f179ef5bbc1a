"""What lr_find costs against a plain training loop of as many steps, same model, same optimizer.

    python benchmarks/bench_lr_find.py [--rounds 9] [--steps 100] [--json out.json]
    python benchmarks/bench_lr_find.py --device cuda --capture      # also the captured sweep

The issue's target, on CPU: the sweep costs at most 1.2x the plain loop. The sweep's extra work
is fixed per step, ~20 small tensor ops for the loss record and the divergence stop
(range_test/tracker.py), plus one copy of the parameters and optimizer state before and one
restore after, so its ratio is largest for the cheapest steps; the cases span step times:

  mlp-adamw    AdamW, a 256-512-512-10 MLP (0.4M parameters), batches of 128
  cnn-sgd      SGD with momentum, examples/lr_find.py's CNN (two conv-BatchNorm blocks), 64
  lm-adam      Adam, a 2-layer pre-norm transformer LM (d 128, context 32, 0.4M), 8

Timing: a round times ``--steps`` steps of each side back to back (the order alternates between
rounds): the plain loop (``zero_grad``, forward, ``backward``, ``step``), and one ``lr_find``
call (snapshot, sweep, the one read, restore), wall clock, with one synchronisation at the end
on CUDA. The figure is the median over rounds of the per-round ratio, so a neighbour's load that
lasts a round moves both sides. With ``--capture`` (CUDA), a third side: ``lr_find(capture=
True)``, whose time includes its 3 eager warm-up steps and the capture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled, lr_find  # noqa: E402
from fused_lrs.bench.report import environment  # noqa: E402

TARGET = 1.2


def mlp_adamw(device):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).to(device)
    data = [(torch.randn(128, 256, generator=gen).to(device),
             torch.randint(0, 10, (128,), generator=gen).to(device)) for _ in range(8)]
    return model, FusedAdamWScheduled(model.parameters(), lr=1e-3), data, _classify


def cnn_sgd(device):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10)).to(device)
    data = [(torch.randn(64, 1, 12, 12, generator=gen).to(device),
             torch.randint(0, 10, (64,), generator=gen).to(device)) for _ in range(8)]
    return model, FusedSGDScheduled(model.parameters(), lr=0.1, momentum=0.9), data, _classify


class LM(nn.Module):
    def __init__(self, vocab=96, d=128, ctx=32, layers=2):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(ctx, d))
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx),
                             persistent=False)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos
        return self.head(self.blocks(h, mask=self.mask, is_causal=True))


def lm_adam(device):
    gen = torch.Generator().manual_seed(0)
    model = LM().to(device)
    data = [(torch.randint(0, 96, (8, 32), generator=gen).to(device),
             torch.randint(0, 96, (8, 32), generator=gen).to(device)) for _ in range(8)]
    return model, FusedAdamScheduled(model.parameters(), lr=1e-3), data, _lm_loss


def _classify(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _lm_loss(model, batch):
    return F.cross_entropy(model(batch[0]).flatten(0, 1), batch[1].flatten())


CASES = {"mlp-adamw": mlp_adamw, "cnn-sgd": cnn_sgd, "lm-adam": lm_adam}


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, device, steps: int, rounds: int, capture: bool) -> dict:
    model, opt, data, loss_fn = CASES[name](device)

    def plain():
        for k in range(steps):
            opt.zero_grad()
            loss_fn(model, data[k % len(data)]).backward()
            opt.step()

    def sweep(**kw):
        return lambda: lr_find(model, opt, loss_fn, data, steps=steps, **kw)

    sides = {"plain": plain, "lr_find": sweep()}
    if capture:
        sides["lr_find_captured"] = sweep(capture=True)
    for fn in sides.values():           # warm-up: lazy state, allocator, kernels
        fn()
    times = {k: [] for k in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for k in order:
            times[k].append(timed(sides[k], device))
    out = {f"{k}_ms_per_step": 1e3 * statistics.median(v) / steps for k, v in times.items()}
    for k in sides:
        if k != "plain":
            ratios = sorted(a / b for a, b in zip(times[k], times["plain"]))
            out[f"{k}_ratio"] = statistics.median(ratios)
            out[f"{k}_ratio_quartiles"] = statistics.quantiles(ratios, n=4)
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--capture", action="store_true", help="CUDA: also lr_find(capture=True)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # lr_find warns when a random-data sweep's loss never falls; the timing is what counts here.
    warnings.filterwarnings("ignore", message="lr_find:")
    device = torch.device(args.device)
    if args.capture and device.type != "cuda":
        ap.error("--capture needs --device cuda")
    results = {}
    for name in args.cases.split(","):
        r = results[name] = measure(name, device, args.steps, args.rounds, args.capture)
        line = (f"{name:10s} {r['params']:>9,} params  plain {r['plain_ms_per_step']:.3f} "
                f"ms/step  lr_find {r['lr_find_ms_per_step']:.3f} ms/step  "
                f"ratio {r['lr_find_ratio']:.3f} (target <= {TARGET})")
        if args.capture:
            line += (f"  captured {r['lr_find_captured_ms_per_step']:.3f} ms/step "
                     f"({r['lr_find_captured_ratio']:.3f}x plain)")
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(device), "config": vars(args),
                       "target": TARGET, "results": results}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
