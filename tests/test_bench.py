"""``fused-lrs bench``: the scenarios are the real models' shapes, the providers step the same
recipe, and the command writes its table, JSON and chart. (The timings themselves are
benchmarks: ``pytest benchmarks --benchmark-only``.)"""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
import torch
from conftest import assert_close

import fused_lrs.bench as bench
from fused_lrs.bench import estimate, report
from fused_lrs.bench import providers as P
from fused_lrs.bench.scenarios import (
    CNN,
    TRANSFORMER,
    TRANSFORMER_MASTER,
    Recipe,
    scenarios,
    select,
    with_optimizer,
)
from fused_lrs.cli import main


@pytest.mark.parametrize("name, tensors, params", [
    ("S1", 76, 10_770_816),            # nanoGPT shakespeare-char: 10.65M + 98K position table
    ("S2", 148, 124_439_808),          # GPT-2 small, lm_head tied
    ("S2-llama", 219, 1_364_297_728),
    ("S3", 161, 25_557_032),           # torchvision resnet50
    ("S4", 148, 124_439_808),          # GPT-2 small again, in bf16
])
def test_scenarios_are_the_models_shapes(name, tensors, params):
    sc = next(s for s in scenarios() if s.name == name)
    assert (sc.tensors, sc.params, sc.reduced) == (tensors, params, "")


def test_quick_cpu_variants_are_reduced_and_say_how():
    full = {s.name: s for s in scenarios()}
    for sc in scenarios(quick=True, cpu=True):
        if sc.gpu_only:
            continue
        assert sc.reduced and sc.params < full[sc.name].params / 10
        if sc.name in ("S1", "S3"):        # launch-bound cases keep their tensor count
            assert sc.tensors == full[sc.name].tensors
    assert scenarios(quick=True, cpu=False) == scenarios()   # a GPU runs the real shapes


def test_select_scenarios():
    assert [s.name for s in select("s2, S4")] == ["S2", "S2-llama", "S4"]
    for bad in ("S9", "", "S1;S2"):
        with pytest.raises(ValueError, match="--scenarios"):
            select(bad)


@pytest.mark.parametrize("recipe", [TRANSFORMER, CNN, TRANSFORMER_MASTER],
                         ids=["transformer", "cnn", "master"])
def test_eager_providers_step_the_same_recipe(recipe: Recipe):
    # fused_lrs's schedule spec and the torch scheduler are the same curve, across the warmup
    # and milestone boundaries, and the baselines' master weights are fused_lrs's: every
    # provider ends at the same parameters (bf16: the same rounding of the same fp32 master,
    # give or take one bf16 ulp, 2^-8 relative, where the masters differ in their last bits).
    # The compiled provider takes ~20 s to compile on CPU; the benchmarks run it.
    shapes = [(33, 7), (7,), (5, 3, 3, 3)]
    device = torch.device("cpu")
    dtype = torch.bfloat16 if recipe.master_weights else torch.float32
    rtol = 2**-8 if recipe.master_weights else 1e-5
    results = {}
    for provider in P.EAGER:
        if provider.compiled:
            continue
        params = P.make_params(shapes, device, dtype)
        step = provider.build(params, recipe, device)
        for _ in range(recipe.last_boundary + 4):
            step()
        results[provider.name] = params
    expected = results.pop("torch_foreach")
    for name, params in results.items():
        for i, (p, q) in enumerate(zip(params, expected)):
            assert p.dtype == dtype
            assert_close(p, q, rtol=rtol, atol=1e-7, what=f"{name} vs torch_foreach, param {i}")


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "adagrad", "lion"])
def test_any_registry_optimizer_steps_the_recipe_as_its_peer_does(name):
    # --optimizer NAME: fused_lrs's class and its peer (foreach=True, fused=True where it takes
    # them; lion_pytorch's own step) on the same warmup-cosine recipe end at the same
    # parameters (fp32 rtol 1e-5).
    recipe = dataclasses.replace(TRANSFORMER, optimizer=name, momentum=0.9)
    shapes, device = [(33, 7), (7,), (5, 3, 3, 3)], torch.device("cpu")
    results = {}
    for provider in P.EAGER:
        if provider.compiled:
            continue
        params = P.make_params(shapes, device)
        try:
            step = provider.build(params, recipe, device)
        except P.NotApplicable:
            assert provider.name == "torch_fused" and name in ("rmsprop", "lion")
            continue
        for _ in range(recipe.last_boundary + 4):
            step()
        results[provider.name] = params
    expected = results.pop("torch_foreach")
    for provider, params in results.items():
        for i, (p, q) in enumerate(zip(params, expected)):
            assert_close(p, q, rtol=1e-5, atol=1e-7, what=f"{name} {provider} param {i}")


def test_bytes_per_param_count_the_records_state_tensors():
    assert [sc.bytes_per_param for sc in select("S1,S3,S4")] == [28, 20, 30]
    assert [sc.recipe.states for sc in select("S1,S3,S4")] == [2, 1, 2]
    for name, states in (("adam", 2), ("sgd", 0), ("rmsprop", 1), ("adagrad", 1), ("lion", 1)):
        (sc,) = with_optimizer(select("S1"), name)
        assert (sc.recipe.optimizer, sc.recipe.states) == (name, states)
        assert sc.bytes_per_param == 4 * (3 + 2 * states)


def test_bench_optimizer_compares_any_registry_name_with_its_peer(tmp_path, capsys, one_thread):
    out = tmp_path / "results"
    assert main(["bench", "--quick", "--device", "cpu", "--scenarios", "S1", "--steps", "1",
                 "--optimizer", "rmsprop", "--providers", "torch_foreach,torch_fused",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fused_lrs FusedRMSpropScheduled against its peer torch.optim.RMSprop" in printed
    assert "torch_fused n/a: torch.optim.RMSprop takes no fused=" in printed
    (sc,) = json.loads((out / "bench.json").read_text())["scenarios"]
    assert (sc["optimizer"], sc["fused_class"], sc["peer"]) == (
        "rmsprop", "FusedRMSpropScheduled", "torch.optim.RMSprop")
    rows = {r["provider"]: r for r in sc["results"]}
    assert rows["fused_lrs"]["status"] == rows["torch_foreach"]["status"] == "ok"
    assert rows["torch_fused"]["wall_ms"] is None
    assert set(rows["fused_lrs"]["speedup_vs"]) == {"torch_foreach"}


def _eager_only(device, quick=False):
    return [p for p in P.EAGER if not p.compiled]


def test_bench_command_writes_table_json_and_chart(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(P, "for_device", _eager_only)
    out = tmp_path / "results"
    code = main(["bench", "--quick", "--device", "cpu", "--scenarios", "S1,S3,S4",
                 "--steps", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "impl='torch_fused'" in printed.out and "needs a GPU" in printed.out
    assert "bfloat16 parameters, 30 B/param" in printed.out
    assert "fused_lrs speedup (wall):" in printed.out
    assert "S3 torch_fused" in printed.err                     # the progress bar
    assert " left S3 torch_fused" in printed.err              # with the time left
    result = json.loads((out / "bench.json").read_text())
    env = result["environment"]
    assert {"device", "torch", "triton", "python", "commit", "date"} <= set(env)
    assert result["config"]["steps"] == 2 and result["config"]["quick"] is True
    assert result["copy_gbps"] > 0
    by_name = {sc["name"]: sc for sc in result["scenarios"]}
    assert list(by_name) == ["S1", "S3", "S4"]
    assert by_name["S4"]["dtype"] == "bfloat16" and by_name["S4"]["bytes_per_param"] == 30
    rows = by_name["S3"]["results"]
    assert [r["provider"] for r in rows] == ["fused_lrs", "torch_foreach", "torch_fused"]
    for row in rows:
        assert row["status"] == "ok" and row["wall_ms"] > 0 and row["gbps"] > 0
        assert row["gpu_ms"] is row["kernels_per_step"] is row["syncs_per_step"] is None
    assert set(rows[0]["speedup_vs"]) == {"torch_foreach", "torch_fused"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_provider_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys,
                                                           one_thread):
    def broken(params, recipe, device):
        raise RuntimeError("cannot capture\nthis")

    monkeypatch.setattr(P, "for_device", lambda d, q=False: [P.Provider("broken", broken),
                                                        P.EAGER[1]])
    assert main(["bench", "--quick", "--device", "cpu", "--scenarios", "S1", "--steps", "1",
                 "--out", str(tmp_path)]) == 0
    assert "broken failed: RuntimeError: cannot capture this" in capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())["scenarios"][0]["results"]
    assert rows[0]["wall_ms"] is None and rows[1]["status"] == "ok"


def test_quick_on_cpu_leaves_out_the_compiled_baseline_and_providers_chooses():
    cpu = torch.device("cpu")
    assert [p.name for p in P.for_device(cpu, quick=True)] == [
        "fused_lrs", "torch_foreach", "torch_fused"]
    assert "torch_compiled" in [p.name for p in P.for_device(cpu)]
    assert [p.name for p in P.named("torch_compiled, torch_fused", cpu)] == [
        "fused_lrs", "torch_fused", "torch_compiled"]


@pytest.mark.parametrize("argv, message", [
    (["--providers", "torch_fast"], "--providers: unknown torch_fast"),
    (["--providers", "torch_fused+graph", "--device", "cpu"], "+graph providers need CUDA"),
    (["--scenarios", "S9"], "--scenarios takes"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--device", "meta"], "--device must be cpu or cuda"),
    (["--device", "nonsense"], "not a device"),
    (["--optimizer", "nonsense"], "--optimizer: unknown 'nonsense'; known: adam, adamw, sgd"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_bench_bad_arguments_are_one_line(argv, message, tmp_path, capsys):
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_optimizer_whose_peer_is_missing_says_what_to_install(tmp_path, capsys,
                                                                monkeypatch):
    # A peer outside torch (a package of the test extra) that is not installed: the error
    # names the peer and the pip command, in one line.
    from fused_lrs.algorithms import ALGORITHMS
    record = next(r for r in ALGORITHMS.values() if not r.peer.startswith("torch."))
    monkeypatch.setattr(type(record), "peer_class", lambda self: None)
    assert main(["bench", "--optimizer", record.name, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    package = record.peer.partition(".")[0].replace("_", "-")
    assert f"its peer {record.peer} is not installed (pip install {package}," in err
    assert err.count("\n") == 1


def test_no_chart_without_figures(tmp_path):
    result = {"scenarios": [{"name": "S1", "results": [{"status": "failed: OOM"}]}]}
    assert "no scenario" in report.write_chart(result, str(tmp_path / "x.png"))


# The time left (estimate.py): on the progress line, and up front for a full CPU run.

def test_eta_learns_each_providers_rate():
    eta = estimate.Eta([("a", 1.0), ("b", 1.0), ("a", 2.0), ("b", 2.0)])
    assert eta.left() is None                        # nothing to go on yet
    eta.done(0, 1.0)                                 # a: 1 s a unit; b takes the mean, 1
    assert eta.left() == pytest.approx(1.0 + 2.0 + 2.0)
    eta.done(1, 3.0)                                 # b: 3 s a unit
    assert eta.left() == pytest.approx(2 * 1.0 + 2 * 3.0)
    eta.done(2, 5.0)                                 # a: (1 + 5) / (1 + 2) = 2
    assert eta.left() == pytest.approx(2 * 3.0)
    eta.done(3, 6.0)
    assert eta.left() == 0


def test_eta_starts_from_a_prior_that_measurements_replace():
    eta = estimate.Eta([("a", 10.0), ("b", 10.0)], prior={"a": 0.5})
    assert eta.left() == pytest.approx(20 * 0.5)     # b falls back to a's rate
    eta.done(0, 20.0)                                # a measured at 2.0 a unit
    assert eta.left() == pytest.approx(10 * 2.0)


def test_an_items_work_counts_every_step_it_takes():
    s1 = next(s for s in scenarios() if s.name == "S1")
    eager, compiled = P.EAGER[0], P.EAGER[3]
    build = estimate.BUILD_STEPS
    assert estimate.work(s1, eager, 200, 3) == s1.bytes_per_step * (2 + 600 + build)
    assert estimate.work(s1, compiled, 200, 3) == s1.bytes_per_step * (
        s1.recipe.last_boundary + 2 + 600 + build)          # warm-up past every boundary
    assert estimate.work(s1, eager, 200, 3, cuda=True) == s1.bytes_per_step * (
        2 + 600 + 200 + estimate.CUDA_EXTRA_STEPS + build)


def test_the_up_front_estimate_is_the_probed_rate_times_the_bytes_moved():
    full = [s for s in scenarios() if s.name in ("S2", "S4")]
    plan = P.for_device(torch.device("cpu"))
    items = [(p.name, estimate.work(sc, p, 200, 3)) for sc in full for p in plan]
    eta = estimate.Eta(items, prior={p.name: 2e-11 for p in plan if not p.compiled})
    expected = 2e-11 * sum(w for _, w in items)      # torch_compiled: the others' mean rate
    assert eta.left() == pytest.approx(expected)
    note = bench._full_cpu_estimate(full, plan, eta)
    assert f"about {estimate.duration(expected)}," in note
    assert "S2 124.4M, S4 124.4M parameters" in note and "--quick" in note
    assert "torch_compiled's compilation, tens of seconds a scenario on a CPU, comes on top" in note


def test_the_probe_rates_each_eager_provider(one_thread):
    rates = estimate.probe(P.EAGER, torch.device("cpu"), shapes=((64, 32), (32,)), steps=1)
    assert set(rates) == {"fused_lrs", "torch_foreach", "torch_fused"}   # no compiling
    assert all(r > 0 for r in rates.values())


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (45, "45s"), (185, "3m05s"),
                                           (4320, "1h12m")])
def test_durations_read_as_minutes_and_hours(seconds, text):
    assert estimate.duration(seconds) == text


def test_the_progress_line_shows_the_time_left():
    out = io.StringIO()
    progress = report.Progress(3, stream=out)
    progress.show("S1 fused_lrs")
    progress.advance("S1 fused_lrs", left=125.4)
    first, second = out.getvalue().splitlines()
    assert "left" not in first
    assert "1/3" in second and "~2m05s left S1 fused_lrs" in second


def test_a_full_cpu_run_says_up_front_how_long_and_that_quick_exists(tmp_path, monkeypatch,
                                                                     capsys, one_thread):
    # Tiny stand-ins for the GPU sizes and the probe: this checks what the run says and when.
    tiny = [dataclasses.replace(s, shapes=((8, 4), (4,))) for s in scenarios()
            if s.name in ("S1", "S3")]
    monkeypatch.setattr(bench, "select", lambda names, quick=False, cpu=False: tiny)
    monkeypatch.setattr(P, "for_device", _eager_only)
    monkeypatch.setattr(estimate, "PROBE_SHAPES", ((16, 8),))
    before_first_scenario = []
    measure_one = bench._measure

    def measure_and_look(*args, **kwargs):
        if not before_first_scenario:
            before_first_scenario.append(capsys.readouterr().out)
        return measure_one(*args, **kwargs)

    monkeypatch.setattr(bench, "_measure", measure_and_look)
    assert main(["bench", "--device", "cpu", "--scenarios", "S1,S3", "--steps", "1",
                 "--out", str(tmp_path)]) == 0
    said = [line for line in before_first_scenario[0].splitlines()
            if "CPU without --quick" in line]
    assert len(said) == 1
    assert re.search(r"Estimated time: about \d+s, from the median of \d+ probe steps", said[0])
    assert "--quick runs reduced sizes" in said[0]
    notes = json.loads((tmp_path / "bench.json").read_text())["config"]["notes"]
    assert said[0].removeprefix("note: ") in notes
    assert " left " in capsys.readouterr().err        # the progress line, once items finish

    # --quick says nothing of the kind.
    assert main(["bench", "--quick", "--device", "cpu", "--scenarios", "S1", "--steps", "1",
                 "--out", str(tmp_path)]) == 0
    assert "CPU without --quick" not in capsys.readouterr().out
