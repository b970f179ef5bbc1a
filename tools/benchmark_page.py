"""The measured figures of the benchmarks page, rendered from ``benchmarks/results/**/*.json``.

Every figure on the page comes from a committed result file, so the page cannot drift from the
files, and every section opens with where the figures were measured: device, torch, triton and
Python versions, date and commit, as far as the file records them.

The files have different shapes, one per script that writes them. ``KINDS`` recognises each by
its keys and renders it; a file that no renderer recognises still appears, as a flat table of
its numbers (``generic``), so a new result file never breaks the build or goes missing.

    python tools/benchmark_page.py [benchmarks/results]     # print the markdown

No mkdocs import here: ``tests/test_docs.py`` renders the committed files without it.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _f(x, fmt: str = ".3g") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, fmt)
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def provenance(env: dict) -> str:
    """Where and when: the one line every section starts with."""
    device = env.get("device")
    if not device:
        cpu = env.get("cpu") or env.get("machine") or env.get("processor") or "unknown"
        cores = env.get("cores") or env.get("cpus")
        device = f"CPU ({cpu}" + (f", {cores} cores" if cores else "") + ")"
    threads = f", {env['threads']} threads" if env.get("threads") else ""
    versions = ", ".join(f"{name} {env[key]}" for name, key in
                         (("torch", "torch"), ("triton", "triton"), ("Python", "python"))
                         if env.get(key))
    commit = f", commit `{str(env['commit'])[:7]}`" if env.get("commit") else ""
    return (f"*Measured on {device}{threads}; {versions or 'versions not recorded'}; "
            f"{env.get('date', 'date not recorded')}{commit}.*")


def _rounds(d: dict) -> str:
    """How the side-by-side CPU benchmarks timed: rounds, steps, clock, threads, load."""
    cfg, env = d.get("config", {}), d.get("environment", {})
    load = env.get("load_average_before")
    return (f"{cfg.get('rounds', '?')} rounds of {cfg.get('steps', '?')} steps, "
            f"{cfg.get('clock', 'wall')} clock"
            + (f", {cfg['threads']} thread(s)" if cfg.get("threads") else "")
            + (f"; load average {load[0]:.2f} when the run began" if load else "") + ".")


# One renderer per kind of file: (name, recognises(data), render(data) -> list of lines).

def _is_cpu_vs_torch(d):
    rows = d.get("results")
    return isinstance(rows, dict) and rows and all(
        isinstance(r, dict) and "fused_lrs_ms" in r and "ratio" in r for r in rows.values())


def cpu_vs_torch(d: dict) -> list[str]:
    rows = d["results"]
    target = next(iter(rows.values())).get("target")
    lines = [
        "`python benchmarks/bench_cpu.py` steps fused_lrs (`impl=\"auto\"`, on CPU "
        "`torch_fused`) and `torch.optim.AdamW(fused=True)` / `SGD(fused=True)` with their "
        "torch schedulers side by side, in rotating rounds, after checking that 25 steps of "
        "both give the same parameters and states. The ratio is the median over rounds of "
        "fused_lrs's time over torch's (below 1: fused_lrs is faster), the range its "
        "interquartile range" + (f"; the target is at most {target}x." if target else "."),
        "", _rounds(d), ""]
    body = []
    for name, r in rows.items():
        q = r.get("ratio_quartiles") or [None, None, None]
        body.append([name, r.get("dtype", ""), r.get("tensors"), _f(r.get("params") / 1e6, ".2f")
                     + "M" if r.get("params") else "n/a", _f(r["fused_lrs_ms"], ".3f"),
                     _f(r.get("torch_fused_ms"), ".3f"), _f(r["ratio"], ".3f"),
                     f"{_f(q[0], '.3f')}-{_f(q[2], '.3f')}",
                     _f(r.get("state_error_of_tolerance"), ".2f")])
    return lines + _table(["case", "dtype", "tensors", "parameters", "fused_lrs ms",
                           "torch fused ms", "fused_lrs / torch", "range",
                           "worst state error / tolerance"], body)


def _is_cpu_algorithms(d):
    rows = d.get("results")
    return isinstance(rows, dict) and rows and all(
        isinstance(r, dict) and "baselines_ms" in r and "ratio" in r for r in rows.values())


def cpu_algorithms(d: dict) -> list[str]:
    rows = d["results"]
    target = next(iter(rows.values())).get("target")
    lines = [
        "`python benchmarks/bench_cpu_algorithms.py` steps every optimizer of the registry with "
        "`impl=\"auto\"` (on CPU `torch_fused`) and each implementation its peer has "
        "(`foreach=True`, `fused=True`, lion_pytorch's loop and its foreach class), each with "
        "the warmup-cosine schedule (torch's `SequentialLR(LinearLR, CosineAnnealingLR)`), in "
        "rotating rounds, after checking that 25 steps of fused_lrs and the peer give the same "
        "parameters and states. The ratio is the median over rounds of fused_lrs's time over "
        "the faster peer implementation's in the same round (below 1: fused_lrs is faster), "
        "the range its interquartile range"
        + (f"; the target is at most {target}x." if target else "."), "",
        _rounds(d), ""]
    body = []
    for name, r in rows.items():
        q = r.get("ratio_quartiles") or [None, None, None]
        peers = ", ".join(f"{k} {_f(v, '.3f')}" for k, v in r["baselines_ms"].items())
        body.append([name, f"`{r.get('peer', '')}`", r.get("tensors"),
                     _f(r.get("params", 0) / 1e6, ".2f") + "M", _f(r.get("ours_ms"), ".3f"),
                     peers, _f(r["ratio"], ".3f"), f"{_f(q[0], '.3f')}-{_f(q[-1], '.3f')}",
                     _f(r.get("state_error_of_tolerance"), ".2f")])
    return lines + _table(["case", "peer", "tensors", "parameters", "fused_lrs ms",
                           "peer ms", "fused_lrs / faster peer", "range",
                           "worst state error / tolerance"], body)


def _is_host(d):
    rows = d.get("results")
    return isinstance(rows, dict) and rows and all(
        isinstance(r, dict) and "fused_lrs_us" in r for r in rows.values())


def host(d: dict) -> list[str]:
    tensors = d.get("environment", {}).get("tensors", "the")
    rows, body = d["results"], []
    for pattern, r in rows.items():
        body.append([{"same": "the same gradients", "new": "new gradients"}.get(pattern, pattern),
                     _f(r["fused_lrs_us"], ".1f"), _f(r.get("torch_fused_us"), ".1f"),
                     _f(r.get("torch_over_fused_lrs"), ".1f") + "x",
                     _f(r.get("calibration_148_grad_reads_us"), ".1f")])
    return [
        f"`python benchmarks/bench_host.py` times the host work of one eager step at {tensors} "
        "tensors (GPT-2 small), with the kernel launch stubbed, against "
        "`AdamW(fused=True)` plus a torch scheduler with its kernels stubbed the same way, in "
        "interleaved rounds. \"The same gradients\" keeps the gradient tensors between steps; "
        "\"new gradients\" gives every step new ones, as `zero_grad(set_to_none=True)` does. "
        "The last column is what reading the gradients' `.grad` attributes alone costs on the "
        "same machine: the floor of any step that looks at them.", ""] + _table(
        ["gradients", "fused_lrs µs", "torch µs", "torch / fused_lrs", ".grad reads µs"], body)


def _is_fsdp(d):
    return isinstance(d.get("ranks"), list)


def fsdp(d: dict) -> list[str]:
    cfg = d.get("config", {})
    body = []
    for i, r in enumerate(d["ranks"]):
        q = r.get("speedup_quartiles") or [None, None, None]
        body.append([i, r.get("tensors"), _f(r.get("fused_lrs_ms"), ".3f"),
                     _f(r.get("torch_fused_ms"), ".3f"), _f(r.get("torch_foreach_ms"), ".3f"),
                     _f(r.get("speedup_vs_best_torch"), ".1f") + "x",
                     f"{_f(q[0], '.1f')}-{_f(q[2], '.1f')}"])
    return [
        "`python benchmarks/bench_fsdp.py` times the optimizer step of a "
        f"{cfg.get('layers', '?')}-layer model of width {cfg.get('width', '?')} under FSDP2 "
        f"({len(d['ranks'])} gloo ranks, one thread each), where host work dominates as it does "
        "on a GPU. fused_lrs steps every rank's local shards; torch's optimizers dispatch "
        f"through DTensor. Medians of {cfg.get('rounds', '?')} rounds of "
        f"{cfg.get('steps', '?')} steps; the speedup is over the better of torch's two, with "
        "its interquartile range.", ""] + _table(
        ["rank", "tensors", "fused_lrs ms", "torch fused ms", "torch foreach ms", "speedup",
         "range"], body)


def _is_suite(d):
    return isinstance(d.get("scenarios"), list) and "copy_gbps" in d


def suite(d: dict) -> list[str]:
    cfg = d.get("config", {})
    lines = [f"`fused-lrs bench`: {cfg.get('repeats', '?')} loops of {cfg.get('steps', '?')} "
             "steps" + (" (--quick)" if cfg.get("quick") else "")
             + f"; device-to-device copy {_f(d['copy_gbps'], '.1f')} GB/s.", ""]
    lines += [f"- {n}" for n in cfg.get("notes", [])]
    for sc in d["scenarios"]:
        lines += ["", f"**{sc['name']}**: {sc.get('title', '')}; {sc.get('tensors')} tensors, "
                  f"{sc.get('params', 0) / 1e6:.1f}M {sc.get('dtype', '')} parameters"
                  + (f" (reduced: {sc['reduced']})" if sc.get("reduced") else "")
                  + (f"; {sc['fused_class']} against {sc['peer']}" if sc.get("peer") else ""),
                  ""]
        body = []
        for r in sc.get("results", []):
            if r.get("status") != "ok":
                body.append([r.get("provider"), r.get("status")] + [""] * 5)
                continue
            speed = r.get("speedup_vs") or {}
            body.append([r["provider"], _f(r.get("wall_ms"), ".4g"), _f(r.get("gpu_ms"), ".4g"),
                         _f(r.get("gbps"), ".1f"), _f(r.get("pct_copy"), ".1f"),
                         _f(r.get("kernels_per_step"), ".1f"),
                         ", ".join(f"{v:.2f}x vs {k}" for k, v in speed.items())])
        lines += _table(["provider", "wall ms", "gpu ms", "GB/s", "% copy", "kernels",
                         "speedup (wall)"], body)
    return lines


def _is_kernel(d):
    rows = d.get("results")
    return isinstance(rows, dict) and rows and all(
        isinstance(r, dict) and "step_us" in r for r in rows.values())


def kernel(d: dict) -> list[str]:
    body = [[name, r.get("tensors"), _f(r.get("params", 0) / 1e6, ".1f") + "M",
             _f(r["step_us"], ".1f"), _f(r.get("step_gbps"), ".0f"), _f(r.get("copy_gbps"), ".0f"),
             _f(r.get("pct_of_copy"), ".1f")] for name, r in d["results"].items()]
    return ["`python benchmarks/bench_kernel.py`: the kernel alone, one step captured in a CUDA "
            "graph and replayed, against a copy of the same bytes in the same run.", ""] + _table(
        ["case", "tensors", "parameters", "step µs", "GB/s", "copy GB/s", "% of copy"], body)


def _is_compile(d):
    return isinstance(d.get("setups"), dict)


def compile_cost(d: dict) -> list[str]:
    body = [[name, _f(r.get("compile_s"), ".2f"), _f(r.get("first_call_s"), ".2f"),
             _f((r.get("steady_call_s") or 0) * 1e3, ".2f")] for name, r in d["setups"].items()]
    ratio = d.get("torch_adamw_over_fused_lrs")
    return [f"`python benchmarks/bench_compile.py`: the compile time of one step at "
            f"{d.get('tensors', '?')} tensors." + (f" Compiled torch AdamW takes {ratio:.0f}x the "
                                                   "compile time of fused_lrs." if ratio else ""),
            ""] + _table(["setup", "compile s", "first call s", "then ms"], body)


def _is_step(d):
    return isinstance(d.get("cases"), list) and "copy_gbps" in d


def step(d: dict) -> list[str]:
    body = [[r.get("case"), r.get("provider"), _f(r.get("params", 0) / 1e6, ".1f") + "M",
             _f(r.get("gpu_ms"), ".4g"), _f(r.get("wall_ms"), ".4g"), _f(r.get("host_us"), ".1f"),
             _f(r.get("gbps"), ".0f"), _f(r.get("pct_copy"), ".1f")] for r in d["cases"]]
    return ["`python benchmarks/bench_step.py`: one fp32 AdamW step with warmup-cosine, single "
            "tensors and the GPT-2-small list.", ""] + _table(
        ["case", "provider", "parameters", "gpu ms", "wall ms", "host µs", "GB/s", "% copy"], body)


def _is_lr_find_cost(d):
    rows = d.get("results")
    return isinstance(rows, dict) and rows and all(
        isinstance(r, dict) and "lr_find_ratio" in r for r in rows.values())


def lr_find_cost(d: dict) -> list[str]:
    cfg, rows = d.get("config", {}), d["results"]
    body = [[name, _f(r.get("params"), "d"), _f(r["plain_ms_per_step"], ".3f"),
             _f(r["lr_find_ms_per_step"], ".3f"), _f(r["lr_find_ratio"], ".3f"),
             "-".join(_f(q, ".3f") for q in (r.get("lr_find_ratio_quartiles") or [])[::2])]
            for name, r in rows.items()]
    return [f"`python benchmarks/bench_lr_find.py`: the range test's sweep against a plain "
            f"training loop of the same {cfg.get('steps', '?')} steps, model and fused "
            f"optimizer, in {cfg.get('rounds', '?')} interleaved rounds; the ratio is the median "
            f"over rounds (target at most {d.get('target', '?')}x), the range its interquartile "
            "range.", ""] + _table(
        ["case", "parameters", "plain ms/step", "lr_find ms/step", "lr_find / plain", "range"],
        body)


def _is_lr_find_suggestion(d):
    return isinstance(d.get("summary"), dict) and "runs" in d


def lr_find_suggestion(d: dict) -> list[str]:
    summary = d["summary"]
    body = [[name, _f(s.get("ours_decades_fmean"), ".2f"), _f(s.get("ours_decades_max"), ".2f"),
             _f(s.get("theirs_decades_fmean"), ".2f"), _f(s.get("theirs_decades_max"), ".2f")]
            for name, s in summary.items() if "ours_decades_fmean" in s]
    overall = summary.get("all", {})
    return [f"`python benchmarks/bench_lr_suggestion.py`: on three small problems and seeds "
            f"{d.get('config', {}).get('seeds', '?')}, the distance in decades between the "
            "suggested lr and the best constant lr of a grid of trainings from the same "
            "initialisation, for `fused_lrs.lr_find` and torch-lr-finder. Mean over all runs: "
            f"{_f(overall.get('ours_decades_mean'), '.2f')} (fused_lrs) against "
            f"{_f(overall.get('theirs_decades_mean'), '.2f')} (torch-lr-finder).", ""] + _table(
        ["problem", "fused_lrs mean", "fused_lrs max", "torch-lr-finder mean",
         "torch-lr-finder max"], body)


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, value


def generic(d: dict) -> list[str]:
    """Any other file: its numbers, by their path in the file (at most 60)."""
    rows = [(k, v) for k, v in _leaves({k: v for k, v in d.items() if k != "environment"})]
    shown = [[f"`{k}`", _f(v, ".4g")] for k, v in rows[:60]]
    more = ["", f"... and {len(rows) - 60} more numbers in the file."] if len(rows) > 60 else []
    return (["No renderer knows this file's shape yet; its numbers as they are:", ""]
            + _table(["entry", "value"], shown) + more)


KINDS = (
    ("The CPU backend against torch's fused CPU optimizers", _is_cpu_vs_torch, cpu_vs_torch),
    ("Every optimizer on CPU against its peer", _is_cpu_algorithms, cpu_algorithms),


    ("Host time per eager step", _is_host, host),
    ("FSDP2: the optimizer step on sharded parameters", _is_fsdp, fsdp),
    ("fused-lrs bench: scenarios S1-S4", _is_suite, suite),
    ("Kernel-only time against a copy", _is_kernel, kernel),
    ("Compile time", _is_compile, compile_cost),
    ("One optimizer step, single tensors", _is_step, step),
    ("lr_find: the cost of the sweep", _is_lr_find_cost, lr_find_cost),
    ("lr_find: the suggestion against ground truth", _is_lr_find_suggestion,
     lr_find_suggestion),
)


def render_file(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    """One section: a heading, the provenance line, the renderer's figures, the file's path."""
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"### `{rel}`\n\nThis file could not be read: {type(e).__name__}: {e}\n"
    if not isinstance(data, dict):
        data = {"values": data}
    title, render = next(((t, r) for t, is_kind, r in KINDS if is_kind(data)),
                         (f"`{path.name}`", generic))
    env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
    body = render(data)
    return "\n".join([f"### {title}", "", provenance(env), "", *body, "",
                      f"Source: `{rel}`.", ""])


def files(results: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    return sorted(results.rglob("*.json"))


def _on_gpu(path: pathlib.Path) -> bool:
    try:
        env = json.loads(path.read_text()).get("environment") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return env.get("device_type") == "cuda" or not str(env.get("device", "CPU")).startswith("CPU")


def render(results: pathlib.Path = RESULTS, root: pathlib.Path = ROOT) -> str:
    """Every result file's section, in path order, after a line on whether any is from a GPU."""
    found = files(results)
    if not found:
        return f"No result files are committed under `{results.relative_to(root)}` yet.\n"
    gpu = [p for p in found if _on_gpu(p)]
    status = (f"{len(gpu)} of these {len(found)} files were measured on a GPU."
              if gpu else "None of these files was measured on a GPU: the GPU targets above "
              "are unmeasured.")
    return "\n".join([status, "", *(render_file(p, root) for p in found)])


if __name__ == "__main__":
    print(render(pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else RESULTS))
