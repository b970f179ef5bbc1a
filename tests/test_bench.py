"""``fused-lrs bench``: the scenarios are the real models' shapes, the providers step the same
recipe, and the command writes its table, JSON and chart. (The timings themselves are
benchmarks: ``pytest benchmarks --benchmark-only``.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close

from fused_lrs.bench import providers as P
from fused_lrs.bench import report
from fused_lrs.bench.scenarios import ADAMW, ADAMW_MASTER, SGD, Recipe, scenarios, select
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


@pytest.mark.parametrize("recipe", [ADAMW, SGD, ADAMW_MASTER], ids=["adamw", "sgd", "master"])
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
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_bench_bad_arguments_are_one_line(argv, message, tmp_path, capsys):
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_no_chart_without_figures(tmp_path):
    result = {"scenarios": [{"name": "S1", "results": [{"status": "failed: OOM"}]}]}
    assert "no scenario" in report.write_chart(result, str(tmp_path / "x.png"))
