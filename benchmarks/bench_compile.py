"""Compile cost of the optimizer step, for a model with GPT-2-small shapes (148 tensors).

Three setups, each timed from a cold start (dynamo reset, inductor caches off):
  * model        the forward and backward of the model, compiled, no optimizer step;
  * fused_lrs    ``torch.compile(fullgraph=True)`` of ``opt.step()`` for FusedAdamWScheduled:
                 one custom op, nothing to generate;
  * torch_adamw  ``torch.optim.AdamW`` with a tensor lr and a torch scheduler, compiled as the
                 PyTorch tutorial recommends: ``@torch.compile(fullgraph=False)`` around
                 ``opt.step(); sched.step()``.
The compile time of a setup is its first call minus the median of later (compiled) calls.

    python benchmarks/bench_compile.py --out benchmarks/results/bench_compile.json
    python benchmarks/bench_compile.py --device cpu --layers 1      # quick look, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")   # every compile is cold

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import environment  # noqa: E402


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(b, t, 3, 12, d // 12).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    """GPT-2 small's parameter list: 2 + 12 * layers + 2 tensors (148 at 12 layers), lm_head
    tied to the token embedding."""

    def __init__(self, layers=12, d=768, vocab=50257, ctx=1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def first_and_steady(fn, device, repeats=5):
    def timed():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    first = timed()
    steady = statistics.median(timed() for _ in range(repeats))
    return first, steady


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    model = GPT(args.layers).to(device)
    idx = torch.randint(0, 50257, (2, 64), device=device)
    n_tensors = len(list(model.parameters()))

    def backward():
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()

    results = {"environment": environment(device), "tensors": n_tensors,
               "parameters": sum(p.numel() for p in model.parameters()), "setups": {}}
    setups = {}

    torch._dynamo.reset()
    compiled_model = torch.compile(model)

    def model_step():
        model.zero_grad(set_to_none=False)
        F.cross_entropy(compiled_model(idx).flatten(0, 1), idx.flatten()).backward()
    setups["model"] = model_step

    backward()                                     # gradients for the optimizer setups
    from fused_lrs import FusedAdamWScheduled
    from fused_lrs.schedules import cosine, warmup

    ours = FusedAdamWScheduled(model.parameters(), lr=3e-4,
                               schedule=warmup(cosine(900), steps=100))
    ours.init_state()
    setups["fused_lrs"] = torch.compile(ours.step, fullgraph=True)

    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    theirs = torch.optim.AdamW(model.parameters(), lr=torch.tensor(3e-4, device=device))
    sched = SequentialLR(theirs, [LinearLR(theirs, 0.01, 1.0, 100),
                                  CosineAnnealingLR(theirs, 900)], [100])

    @torch.compile(fullgraph=False)
    def torch_step():
        theirs.step()
        sched.step()
    setups["torch_adamw"] = torch_step

    for name, fn in setups.items():
        torch._dynamo.reset()
        first, steady = first_and_steady(fn, device)
        results["setups"][name] = {"first_call_s": first, "steady_call_s": steady,
                                   "compile_s": first - steady}
        print(f"{name:>12}: compile {first - steady:8.2f} s (first call {first:.2f} s, "
              f"then {steady * 1e3:.2f} ms)", flush=True)
    ratio = (results["setups"]["torch_adamw"]["compile_s"]
             / max(results["setups"]["fused_lrs"]["compile_s"], 1e-9))
    results["torch_adamw_over_fused_lrs"] = ratio
    print(f"{n_tensors} tensors on {results['environment']['device']}: compiled torch AdamW "
          f"takes {ratio:.0f}x the compile time of fused_lrs (target: >= 20x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
