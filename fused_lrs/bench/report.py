"""What a benchmark run shows: a progress bar on stderr, a table, the JSON file and the chart."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time

import torch

from fused_lrs.bench.estimate import duration


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, one line per item
    otherwise (a log file then reads as a list of what ran when). ``left``: the estimated
    seconds left (``estimate.Eta``), shown once there is one."""

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()

    def show(self, what: str, left: float | None = None) -> None:
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        eta = f" ~{duration(left)} left" if left is not None else ""
        line = (f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:5.0f}s{eta} "
                f"{what}")
        if self.tty:
            self.stream.write("\r" + line[:100].ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self, what: str, left: float | None = None) -> None:
        self.done += 1
        self.show(what, left)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def environment(device: torch.device) -> dict:
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, cwd=os.path.dirname(os.path.abspath(__file__))
                                ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU: {platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} threads")
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


COLUMNS = (("provider", 21, None), ("wall ms", 9, ".4f"), ("gpu ms", 9, ".4f"),
           ("host us", 8, ".0f"), ("GB/s", 7, ".1f"), ("%copy", 6, ".1f"),
           ("kernels", 7, ".1f"), ("syncs", 5, ".1f"), ("peak MB", 8, ".0f"))
KEYS = ("provider", "wall_ms", "gpu_ms", "host_us", "gbps", "pct_copy", "kernels_per_step",
        "syncs_per_step", "peak_mb")


def table(result: dict) -> str:
    lines = []
    for sc in result["scenarios"]:
        lines += ["", f"{sc['name']}  {sc['title']}",
                  f"  {sc['tensors']} tensors, {sc['params']:,} {sc['dtype']} parameters, "
                  f"{sc['bytes_per_param']} B/param"
                  + (f"; reduced for --quick on CPU: {sc['reduced']}" if sc["reduced"] else "")]
        if sc.get("peer"):
            lines.append(f"  fused_lrs {sc['fused_class']} against its peer {sc['peer']}")
        lines.append("  " + " ".join(f"{name:>{w}}" for name, w, _ in COLUMNS))
        for row in sc["results"]:
            if row["status"] != "ok":
                lines.append(f"  {row['provider']:>21} {row['status']}")
                continue
            cells = [f"{row['provider']:>21}"] + [
                f"{_num(row[k], fmt):>{w}}" for k, (_, w, fmt) in zip(KEYS[1:], COLUMNS[1:])]
            lines.append("  " + " ".join(cells))
        for row in sc["results"]:
            speedups = row.get("speedup_vs") or {}
            # eager against eager, graphed against graphed (the targets on the benchmarks page);
            # every speedup is in the JSON
            same = {k: v for k, v in speedups.items() if k.endswith("+graph") == row["graphed"]}
            if same:
                lines.append(f"  {row['provider']} speedup (wall): " + ", ".join(
                    f"{v:.2f}x vs {k}" for k, v in same.items()))
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def write_chart(result: dict, path: str) -> str | None:
    """Grouped bars of wall-clock ms per step, per scenario and provider, on a log scale.
    Returns why no chart was drawn, or None."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "no chart: matplotlib is not installed (pip install 'fused-lrs[plot]')"
    scenarios = [sc for sc in result["scenarios"]
                 if any(r["status"] == "ok" for r in sc["results"])]
    if not scenarios:
        return "no chart: no scenario produced a figure"
    providers = list(dict.fromkeys(r["provider"] for sc in scenarios for r in sc["results"]))
    # 2 inches a scenario (its "76 tensors, 0.7M" label), 1.5 more for the legend beside.
    fig = Figure(figsize=(1.5 + max(6.0, 2.0 * len(scenarios) * max(1, len(providers) / 4)), 4.8),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(providers)
    for j, name in enumerate(providers):
        xs, ys = [], []
        for i, sc in enumerate(scenarios):
            row = next((r for r in sc["results"] if r["provider"] == name), None)
            if row and row["status"] == "ok" and row["wall_ms"] and math.isfinite(row["wall_ms"]):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(row["wall_ms"])
        ax.bar(xs, ys, width, label=name, hatch="//" if name.endswith("+graph") else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(scenarios)), [f"{sc['name']}\n{sc['tensors']} tensors, "
                                          f"{sc['params'] / 1e6:.1f}M" for sc in scenarios])
    ax.set_ylabel("wall-clock ms per step (log)")
    env, cfg = result["environment"], result["config"]
    ax.set_title(f"optimizer step, {env['device']}; {cfg['steps']} steps x {cfg['repeats']}"
                 + (" (--quick)" if cfg["quick"] else "")
                 + ("\nCPU: fused_lrs runs torch's fused CPU kernels (impl='torch_fused');"
                    "\nthe Triton kernel's speed needs a GPU"
                    if env["device_type"] == "cpu" else ""), fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    # Beside the axes, not over them: the tallest bars reach the top.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)
    return None
