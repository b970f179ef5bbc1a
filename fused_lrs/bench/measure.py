"""How a step is measured (DESIGN.md, Benchmarks).

  wall_ms   wall clock per step over a loop of ``steps`` steps with one synchronisation at the
            end, so host overhead counts; the median of ``repeats`` such loops;
  host_us   (CUDA) the median time the host spends issuing one step, without waiting;
  gpu_ms    (CUDA) the median CUDA-event time of one step. Each step is preceded by a GPU sleep
            longer than its issue time, so the whole step is queued before the GPU reaches it
            and the events time the GPU's work, not gaps while the host launches. A step that
            synchronises inside still shows its stall;
  kernels   (CUDA) GPU operations per step (kernels, memcpy, memset) seen by torch.profiler;
            under a CUDA graph they are one host launch, counted here one by one;
  syncs     (CUDA) host-device synchronisations per step, as torch's sync debug mode warns;
  peak_mb   (CUDA) torch.cuda.max_memory_allocated over building and stepping: parameters,
            gradients, state and temporaries.
On CPU only the wall clock exists; the others are None ("n/a").
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(step, device: torch.device, steps: int, repeats: int) -> tuple[float, float | None]:
    """(median over ``repeats`` loops of the wall-clock ms per step, median host us per step)."""
    loops, host = [], []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            h = time.perf_counter()
            step()
            host.append(time.perf_counter() - h)
        sync(device)
        loops.append((time.perf_counter() - t0) * 1e3 / steps)
    return statistics.median(loops), (statistics.median(host) * 1e6
                                      if device.type == "cuda" else None)


_CYCLES_PER_US: float | None = None


def _sleep_cycles(us: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` needs to last ``us`` microseconds."""
    global _CYCLES_PER_US
    if _CYCLES_PER_US is None:
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        torch.cuda._sleep(1_000)                           # load the kernel outside the timing
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        end.synchronize()
        _CYCLES_PER_US = 10_000_000 / (start.elapsed_time(end) * 1e3)
    return int(us * _CYCLES_PER_US)


def gpu_ms(step, device: torch.device, steps: int, host_us: float) -> float | None:
    if device.type != "cuda":
        return None
    cycles = _sleep_cycles(2 * host_us + 50)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(steps)]
    sync(device)
    for start, end in events:
        torch.cuda._sleep(cycles)
        start.record()
        step()
        end.record()
    sync(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def kernels_per_step(step, device: torch.device, steps: int = 5) -> float | None:
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(ops) / steps


def syncs_per_step(step, device: torch.device, steps: int = 5) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")              # count every sync, not one per call site
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def copy_gbps(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth (read + write), the yardstick for the achieved GB/s."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 2):                      # two warm-up copies
        sync(device)
        if device.type == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) * 1e-3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            seconds = time.perf_counter() - t0
        if i >= 2:
            times.append(seconds)
    return 2 * nbytes / statistics.median(times) / 1e9


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
