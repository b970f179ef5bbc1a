"""``fused-lrs plot EXPR --range-test result.json``: where a schedule's peak lr sits on a range
test (a table), or the schedule drawn over the range test's curve (-o)."""

from __future__ import annotations

import math

import pytest
import torch

from fused_lrs.cli import main
from fused_lrs.range_test import LRFindResult, overlay
from fused_lrs.schedules import parse

# One CPU thread: these steps are tiny, and where other jobs share the cores a preempted OpenMP
# worker stalls each of them (conftest.one_thread): a restore test takes 0.07 s on one thread,
# 0.6-4 s on two.
pytestmark = pytest.mark.usefixtures("one_thread")

EXPR = "warmup(cosine(T_max=90), steps=10)"


@pytest.fixture
def range_test(tmp_path):
    """A made-up range test: 41 lrs from 1e-6 to 1e-2, a loss lowest at 1e-3."""
    lrs = [10 ** (-6 + k / 10) for k in range(41)]
    losses = [1.0 + (math.log10(lr) + 3) ** 2 for lr in lrs]
    result = LRFindResult(lrs=lrs, losses=losses, raw_losses=losses,
                          suggestion=1e-3 * 10 ** -0.5, diverged_at=40, start_lr=1e-6,
                          end_lr=1.0, steps=100)
    path = tmp_path / "range.json"
    result.save(str(path))
    return result, str(path)


def test_the_table_places_the_peak_on_the_range_test(range_test, capsys):
    result, path = range_test
    assert main(["plot", EXPR, "--steps", "100", "--base-lr", "1e-4", "--range-test",
                 path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3] == (f"range test {path}: 41 steps, lr 1e-06 .. 0.01, diverged at step 40")
    ratio = 1e-4 / result.suggestion                     # the peak is the base lr
    assert lines[-2] == (f"schedule peak lr 0.0001 = {ratio:.3g}x the suggestion "
                         f"{result.suggestion:.4g} ({math.log10(ratio):+.2f} decades)")
    # 1e-4 is a grid lr: the loss there is 1 + (-4 + 3)^2 = 2, the lowest 1 at 1e-3.
    assert lines[-1] == "range-test loss (smoothed) at the peak: 2; lowest 1 at lr 0.001"


def test_a_peak_beyond_the_range_test_is_said(range_test, capsys):
    _, path = range_test
    assert main(["plot", EXPR, "--steps", "100", "--base-lr", "0.5", "--range-test", path]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "the peak lies outside the range test's lrs (1e-06 .. 0.01)")


def test_the_schedule_is_drawn_over_the_curve(range_test, tmp_path, capsys):
    result, path = range_test
    out = tmp_path / "overlay.png"
    assert main(["plot", EXPR, "--steps", "100", "--base-lr", "1e-4", "--range-test", path,
                 "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {out}"
    t = torch.arange(100)
    lr = parse(EXPR).lr(t, 1e-4)
    fig = overlay.draw_overlay(str(tmp_path / "again.png"), result, EXPR, t, lr, 1e-4)
    curve, schedule = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    # The schedule is step t against the lr it uses, on the range test's lr axis (lr 0 at
    # t = 0 has no place on a log axis).
    drawn = lines["schedule (base_lr 0.0001)"]
    assert list(drawn.get_xdata()) == lr[1:].tolist() and list(drawn.get_ydata()) == \
        list(range(1, 100))
    assert list(lines["schedule peak 0.0001"].get_xdata()) == [1e-4, 1e-4]
    assert list(lines["loss (smoothed)"].get_xdata()) == result.lrs
    assert curve.get_xscale() == "log"


@pytest.mark.parametrize("content", ["{", '{"lrs": [1.0]}', "[1, 2]"])
def test_a_bad_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["plot", EXPR, "--steps", "10", "--range-test", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fused-lrs: error: --range-test") and err.count("\n") == 1
    assert main(["plot", EXPR, "--steps", "10", "--range-test", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("fused-lrs: error: [Errno 2]")
