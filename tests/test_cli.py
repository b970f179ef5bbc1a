"""The fused-lrs command and the expression parser behind it.

The expression is user input, so the parser is tested as a boundary: anything but factory
calls and literals is refused with a one-line error, and the command never shows a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fused_lrs.cli import main
from fused_lrs.schedules import (
    FACTORIES,
    chained,
    constant,
    cosine,
    cosine_restarts,
    cyclic,
    every,
    exponential,
    inverse_sqrt,
    linear,
    multistep,
    one_cycle,
    one_cycle_momentum,
    parse,
    plateau,
    polynomial,
    sequential,
    step,
    warmup,
    wsd,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One spec per factory (two for the factories with two forms); nesting included.
SPECS = [
    constant(), constant(0.5, 10), step(30, 0.5), multistep([30, 10, 30], 0.2),
    exponential(0.99), exponential(rate=1e-3, decay_steps=10, staircase=True),
    cosine(100, 1e-5), cosine(1000, num_cycles=1.5, min_lr_rate=0.1),
    cosine_restarts(10, 2, 0.001), cosine_restarts(1000, num_cycles=3.0),
    cyclic(1e-4, 1e-2, 200, 100, "exp_range", 0.999), one_cycle(0.1, 1000, three_phase=True),
    linear(0.0, 1.0, 50), polynomial(1000, 2.0, 1e-6), inverse_sqrt(100), inverse_sqrt(0, 500),
    wsd(100, 200, 1000, decay_type="1-sqrt", min_lr_ratio=0.1),
    warmup(cosine(T_max=900), steps=100),
    sequential([linear(0.1, 1.0, 5), cosine(20)], [5]),
    chained([step(3), warmup(constant(0.5, 4), 2, 0.1)]),
    every(sequential([constant(0.25, 2), exponential(0.9)], [3]), 4),
    one_cycle_momentum(500, three_phase=True),
    plateau("max", 0.5, 3, 0.01, "abs", 2, [1e-5, 1e-6], 1e-9),
    cyclic([1e-4, 1e-3], [1e-2, 1e-1], 20),  # one value per group: tuples round-trip too
]


def test_specs_cover_every_factory():
    # cyclic_momentum builds a cyclic spec (its peaks swapped), so it has no spec of its own.
    assert {s.factory for s in SPECS} == set(FACTORIES) - {"cyclic_momentum"}


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_parse_round_trips_repr(spec):
    again = parse(repr(spec))
    assert again == spec and type(again) is type(spec)


def test_parse_accepts_lists_and_positional_arguments():
    assert parse("multistep([30, 10], 0.5)") == multistep((10, 30), 0.5)
    assert (parse(" sequential([linear(0.1, 1.0, 5), cosine(20)], (5,)) ")
            == sequential((linear(0.1, 1.0, 5), cosine(20)), (5,)))
    assert parse("cosine(T_max=+10, eta_min=-0.0)") == cosine(10)


HOSTILE = [
    "__import__('os').system('true')",
    "os.system",
    "cosine(T_max=__import__('os'))",
    "[x for x in ()]",
    "unknown(3)",
    "cosine(T_max=-1)",
    "cosine(T_max=x)",
    "cosine.__class__",
    "cosine(T_max=(lambda: 1)())",
    "cosine(*[10])",
    "cosine(**{'T_max': 10})",
    "cosine(T_max=[10][0])",
    "cosine(T_max=5 + 5)",
    "cosine(T_max=-True)",
    "cosine(T_max=b'10')",
    "cosine()",
    "warmup(3, steps=2)",
    "cosine(T_max=10",
    "cosine",
    "10",
    "",
    "cosine(T_max=1" + "0" * 10_000 + ")",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_parse_refuses(expr):
    with pytest.raises(ValueError) as e:
        parse(expr)
    assert "\n" not in str(e.value)


def test_parse_messages():
    with pytest.raises(ValueError, match="unknown factory '__import__'"):
        parse("cosine(T_max=__import__('os'))")
    with pytest.raises(ValueError, match="attribute access"):
        parse("cosine(T_max=os.sep)")
    with pytest.raises(ValueError, match="cosine: T_max must be an integer >= 1, got -1"):
        parse("cosine(T_max=-1)")
    with pytest.raises(ValueError, match="missing 1 required positional argument"):  # TypeError
        parse("cosine()")
    with pytest.raises(ValueError, match="too long"):
        parse("cosine(T_max=10)" + " " * 10_000)


@pytest.mark.parametrize("expr", HOSTILE[:6])
def test_cli_errors_are_one_line(expr, capsys):
    assert main(["plot", expr, "--steps", "10"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("fused-lrs: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [
    [], ["plot"], ["plot", "cosine(10)"], ["plot", "cosine(10)", "--steps", "ten"],
    ["plot", "cosine(10)", "--steps", "0"], ["plot", "cosine(10)", "--steps", "5",
                                             "--base-lr", "nan"], ["bnech"],
])
def test_cli_usage_errors_are_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fused-lrs: error: ") and err.count("\n") == 1


def test_cli_table(capsys):
    assert main(["plot", "warmup(cosine(T_max=900), steps=100)", "--steps", "1000",
                 "--base-lr", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "warmup(cosine(T_max=900), steps=100)"
    assert "t = optimizer steps completed" in lines[1]
    rows = [line.split() for line in lines[3:]]
    steps = [int(r[0]) for r in rows[:-2]]
    assert steps[0] == 0 and steps[-1] == 999 and len(steps) == 20
    assert rows[1] == ["53", "0.265"]  # 0.5 * 53 / 100, in the warmup
    assert rows[-2] == ["min", "0", "at", "t=0"] and rows[-1] == ["max", "0.5", "at", "t=100"]


def test_cli_short_table(capsys):
    assert main(["plot", "step(2)", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[3:]] == ["0", "1", "2", "min", "max"]


def test_cli_triton(capsys):
    assert main(["plot", "every(one_cycle(0.1, 50), 2)", "--steps", "120", "--triton"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "vs float64 reference: max relative difference" in last
    assert float(last.split("difference ")[1].split()[0]) < 1e-9


def test_cli_png(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert main(["plot", "sequential([linear(0.1, 1.0, 5), cosine(20)], [5])", "--steps", "40",
                 "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == f"wrote {out}"


def test_cli_unwritable_output(tmp_path, capsys):
    assert main(["plot", "cosine(10)", "--steps", "5", "-o", str(tmp_path / "no" / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("fused-lrs: error: ")


def test_cli_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    assert main(["plot", "cosine(10)", "--steps", "5", "-o", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == ("fused-lrs: error: -o needs matplotlib: "
                                       "pip install 'fused-lrs[plot]'\n")


def test_cli_help(capsys):
    assert main(["plot", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out


def test_module_entry_point():
    run = subprocess.run([sys.executable, "-m", "fused_lrs", "plot", "cosine(T_max=10)",
                          "--steps", "11"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].split() == ["max", "1", "at", "t=0"]
