"""lr_find's suggestion against ground truth, and against torch-lr-finder's, on three problems
that differ in kind (range_test_problems.py: an MLP regression with AdamW, a BatchNorm CNN with
SGD and momentum, a transformer LM with Adam).

Ground truth, per problem: constant-lr trainings of ``STEPS`` steps from the same
initialisation and the same batches, on a grid of lrs half a decade apart; the final loss is
the held-out loss; the best lr is the vertex of the parabola through the grid's lowest final
loss and its two neighbours (in log10 lr), so distances are not rounded to the grid.

  * The suggestion must land where training is close to the best: a run at the suggested lr
    itself must end within ``CLOSE`` of the best final loss, measured as a fraction of what the
    best run gained over the untrained model (a quarter: it keeps three quarters of the best
    improvement; measured, the grid lrs that do span 1 decade around the CNN's best and 2 to
    2.5 around the others', and the CNN's lrs a decade off its best lose 35% and 78%).
  * On average over the problems, its distance to the best lr, in decades, must be no larger
    than that of torch-lr-finder's suggestion (``LRFinder.range_test`` with its defaults, and
    ``plot(suggest_lr=True)``'s steepest-gradient point) on a torch optimizer of the same kind,
    with the same initialisation and batches. Both distances are printed.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from range_test_problems import PROBLEMS

from fused_lrs import lr_find

torch_lr_finder = pytest.importorskip("torch_lr_finder")

STEPS = 100        # the sweep's length, and each ground-truth training's
GRID = [10 ** (e / 2) for e in range(-8, 2)]       # 1e-4 .. 3.16, half a decade apart
CLOSE = 0.25


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
    model = problem.make()
    finder = torch_lr_finder.LRFinder(model, problem.torch(model.parameters(), 1e-7),
                                      problem.criterion, device="cpu")
    loader = torch.utils.data.DataLoader(problem.train, batch_size=None)
    from matplotlib.figure import Figure
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        finder.range_test(loader, start_lr=1e-7, end_lr=10, num_iter=STEPS)
        _, suggestion = finder.plot(ax=Figure().add_subplot(), suggest_lr=True)
    return float(suggestion)


@pytest.fixture(scope="module")
def measured():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # see conftest.one_thread; a module fixture cannot use it
    try:
        out = {}
        for name, build in PROBLEMS.items():
            problem = build(0)
            finals = [train_at(problem, lr) for lr in GRID]
            model = problem.make()
            ours = lr_find(model, problem.ours(model.parameters(), 1e-3), problem.loss_fn,
                           problem.train, steps=STEPS).suggestion
            theirs = torch_lr_finder_suggestion(problem)
            best = best_lr(finals)
            out[name] = dict(
                finals=finals, best=best, best_final=min(finals),
                untrained=held_out_loss(problem.make(), problem),
                ours=ours, ours_final=train_at(problem, ours),
                theirs=theirs, theirs_final=train_at(problem, theirs),
                ours_decades=abs(math.log10(ours / best)),
                theirs_decades=abs(math.log10(theirs / best)))
        return out
    finally:
        torch.set_num_threads(threads)


def gained(r, final: float) -> float:
    """How far ``final`` is from the best final loss, as a fraction of the best run's gain
    over the untrained model (0: as good as the best; 1: no better than untrained)."""
    return (final - r["best_final"]) / (r["untrained"] - r["best_final"])


@pytest.mark.parametrize("name", PROBLEMS)
def test_the_suggestion_trains_close_to_the_best(measured, name):
    r = measured[name]
    print(f"\n{name}: best lr {r['best']:.3g} (final {r['best_final']:.4g}, untrained "
          f"{r['untrained']:.4g}); lr_find {r['ours']:.3g}, {r['ours_decades']:.2f} decades, "
          f"final {r['ours_final']:.4g} ({gained(r, r['ours_final']):.3f} of the gain lost); "
          f"torch-lr-finder {r['theirs']:.3g}, {r['theirs_decades']:.2f} decades, final "
          f"{r['theirs_final']:.4g} ({gained(r, r['theirs_final']):.3f})")
    assert gained(r, r["ours_final"]) <= CLOSE, r


def test_the_suggestion_is_on_average_no_farther_from_the_best_than_torch_lr_finders(measured):
    ours = sum(r["ours_decades"] for r in measured.values()) / len(measured)
    theirs = sum(r["theirs_decades"] for r in measured.values()) / len(measured)
    print(f"\nmean distance to the best lr: lr_find {ours:.2f} decades, torch-lr-finder "
          f"{theirs:.2f} decades")
    assert ours <= theirs, measured
