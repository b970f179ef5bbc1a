"""The examples run and say what they claim: examples/train_gpt.py at a tiny size."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    path = os.path.join(ROOT, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_gpt():
    return load("train_gpt")


def test_train_gpt_curves_agree_and_the_chart_is_written(train_gpt, tmp_path, capsys,
                                                           one_thread):
    argv = ["--steps", "24", "--warmup", "4", "--batch", "4", "--ctx", "16", "--d", "32",
            "--layers", "1", "--heads", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert train_gpt.main(argv) == 0
    out = capsys.readouterr().out
    assert "the curves agree" in out and "tokens/s" in out
    result = json.loads((tmp_path / "train_gpt.json").read_text())
    assert result["agree"] and result["max_rel_dloss"] <= result["tol"] == 1e-4
    fused, torch_run = result["runs"].values()
    assert len(fused["loss"]) == len(torch_run["loss"]) == 24
    assert fused["loss"][-1] < fused["loss"][0]              # it trains
    # The two schedules are the same curve: warmup over 4 steps from 0.01 * lr, then cosine.
    assert result["max_rel_dlr"] < 1e-12
    assert fused["lr"][0] == pytest.approx(1e-5) and fused["lr"][4] == pytest.approx(1e-3)
    assert (tmp_path / "train_gpt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_gpt_catches_an_off_by_one_schedule(train_gpt, tmp_path, capsys, monkeypatch,
                                                   one_thread):
    # The tolerance is not vacuous: a fused run that uses lr(k) at step k, instead of
    # lr(k - 1), fails the comparison (exit 1).
    make = train_gpt.make_optimizer

    def shifted(kind, model, args):
        opt, sched = make(kind, model, args)
        if sched is None:
            opt.set_schedule(opt.schedule, t=1)
        return opt, sched

    monkeypatch.setattr(train_gpt, "make_optimizer", shifted)
    argv = ["--steps", "8", "--warmup", "4", "--batch", "4", "--ctx", "16", "--d", "32",
            "--layers", "1", "--heads", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert train_gpt.main(argv) == 1
    assert "THE CURVES DIFFER" in capsys.readouterr().out


def test_train_gpt_leaves_determinism_as_it_was(train_gpt, tmp_path, one_thread):
    import torch

    assert not torch.are_deterministic_algorithms_enabled()
    train_gpt.main(["--steps", "3", "--warmup", "1", "--batch", "2", "--ctx", "8", "--d", "16",
                    "--layers", "1", "--heads", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert not torch.are_deterministic_algorithms_enabled()


def test_lr_find_prints_the_suggestion_and_writes_the_plot(tmp_path, capsys, one_thread):
    example = load("lr_find")
    argv = ["--sweep-steps", "40", "--train-steps", "20", "--batch", "32", "--device", "cpu",
            "--out", str(tmp_path)]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    suggestion = float(out.split("suggested lr: ")[1].split()[0])
    from fused_lrs.range_test import LRFindResult
    result = LRFindResult.load(str(tmp_path / "lr_find.json"))
    assert f"{result.suggestion:.3g}" == f"{suggestion:.3g}" and 1e-6 < suggestion < 10
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--range-test" in out.splitlines()[-1]
