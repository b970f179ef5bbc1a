"""lr_find's suggestion against ground truth and torch-lr-finder's, over several seeds.

    python benchmarks/bench_lr_suggestion.py [--seeds 0-7] [--json out.json]

tests/test_lr_find_suggestion.py checks one seed of each of the three problems of
tests/range_test_problems.py (an MLP regression with AdamW, a BatchNorm CNN with SGD and
momentum, a transformer LM with Adam); this runs each for every seed (new data, new batches,
new initialisation), with the same ground truth (``range_test_problems.measure``: 100-step
constant-lr trainings on a grid half a decade apart, the best lr refined by a parabola), and
reports per problem the mean and largest distance to the best lr in decades, and the share of
the best run's improvement that a training at the suggestion loses, for both suggestions.
About 10 s a seed on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from range_test_problems import PROBLEMS, measure  # noqa: E402

from fused_lrs.bench.report import environment  # noqa: E402


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-7", help="a seed or a range, e.g. 0-7")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="lr_find:")
    runs = {name: [] for name in PROBLEMS}
    for seed in seeds(args.seeds):
        for name, build in PROBLEMS.items():
            r = measure(build(seed))
            runs[name].append({"seed": seed, **{k: r[k] for k in (
                "best", "ours", "theirs", "ours_decades", "theirs_decades", "ours_lost",
                "theirs_lost")}})
            print(f"seed {seed} {name:10s} best {r['best']:.3g}  lr_find {r['ours']:.3g} "
                  f"({r['ours_decades']:.2f} dec, lost {r['ours_lost']:.3f})  torch-lr-finder "
                  f"{r['theirs']:.3g} ({r['theirs_decades']:.2f} dec, lost "
                  f"{r['theirs_lost']:.3f})", flush=True)
    summary = {}
    for name, rows in runs.items():
        summary[name] = {f"{who}_{what}_{f.__name__}": f(r[f"{who}_{what}"] for r in rows)
                         for who in ("ours", "theirs") for what in ("decades", "lost")
                         for f in (statistics.fmean, max)}
    every = [r for rows in runs.values() for r in rows]
    summary["all"] = {f"{who}_decades_mean": statistics.fmean(r[f"{who}_decades"]
                                                              for r in every)
                      for who in ("ours", "theirs")}
    for name, s in summary.items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(torch.device("cpu")), "config": vars(args),
                       "summary": summary, "runs": runs}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
