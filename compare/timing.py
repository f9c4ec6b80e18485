"""Timing: warm-up, calibrated repeats interleaved across modes, median and interquartile range.

Modes of one workload are timed round-robin (repeat 1 of every mode, then repeat 2, ...), so a burst of load
on a shared machine slows all of them alike and the ratios between modes, which are what we report and gate,
stay steady. On the CPU a repeat is timed with ``time.perf_counter``; with ``clock="cuda"`` CUDA events
bracket it and the device is synchronised before the stop event is read.

    >>> import numpy as np
    >>> samples = measure({"a": lambda: sum(range(100))}, repeats=5, target_s=1e-4)
    >>> len(samples["a"]), summarize(samples["a"])["median"] > 0
    (5, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np


def _cuda_timer():
    import cupy

    def timed(call, number):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(number):
            call()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3
    return timed


def _host_timer(call: Callable[[], object], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        call()
    return time.perf_counter() - t0


def calibrate(call: Callable[[], object], target_s: float, max_number: int = 10_000) -> int:
    """How many calls make one repeat last about ``target_s`` (at least 1)."""
    t = _host_timer(call, 1)
    if t >= target_s:
        return 1
    number = max(1, min(max_number, math.ceil(target_s / max(t, 1e-7))))
    t = _host_timer(call, number)  # the first estimate is noisy for microsecond calls; refine once
    return max(1, min(max_number, math.ceil(number * target_s / max(t, 1e-9))))


def measure(calls: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1, target_s: float = 0.01,
            clocks: dict[str, str] | None = None, progress: Callable[[], None] | None = None
            ) -> dict[str, list[float]]:
    """Seconds per call for each repeat of each call, timed round-robin. Warm-up calls are not timed."""
    numbers = {}
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        numbers[name] = calibrate(call, target_s)
    timers = {name: (_cuda_timer() if (clocks or {}).get(name) == "cuda" else _host_timer) for name in calls}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            samples[name].append(timers[name](call, numbers[name]) / numbers[name])
        if progress:
            progress()
    return samples


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, interquartile range and min of per-call times."""
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "min": float(a.min())}


def break_even(setup_s: float, t_mode: float, t_eager: float) -> float:
    """Calls after which paying ``setup_s`` once (trace + compile) beats eager; ``inf`` if it never does."""
    saved = t_eager - t_mode
    return math.ceil(setup_s / saved) if saved > 0 else math.inf
