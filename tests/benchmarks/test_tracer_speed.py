"""Tracer speed: the static executor against eager, and the cost of tracing itself.

Skipped by default (``--benchmark-skip`` in the pytest config). Run with::

    python3 -m pytest tests/benchmarks/test_tracer_speed.py --benchmark-enable --benchmark-only
    python3 tests/benchmarks/test_tracer_speed.py          # a plain table: us per call and per op

Goals (issue 3): >= 2x fewer microseconds per op than eager on tiny tensors (Python overhead dominates there);
tracing the MLP train step < 50 ms. Each benchmark stores ``ops`` (primitive calls per run) and
``us_per_op`` in ``extra_info``.
"""

from __future__ import annotations

import time

import pytest

import eager
import eager.nn.functional as F
import tracer
from eager import nn, optim

SIZES = {"tiny": (4, 8, 16, 4), "medium": (64, 784, 256, 10)}  # batch, in, hidden, out


def setup(size: str):
    batch, d_in, hidden, d_out = SIZES[size]
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x, y = eager.randn(batch, d_in), eager.randn(batch, d_out)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step, x, y


def count_ops(fn, *args) -> int:
    return len(tracer.trace(fn, *args).graph.calls)


def run(benchmark, fn, args, ops):
    benchmark.extra_info["ops"] = ops
    benchmark(fn, *args)
    benchmark.extra_info["us_per_op"] = benchmark.stats.stats.median * 1e6 / ops


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("mode", ["eager", "traced"])
def test_mlp_forward(benchmark, size, mode):
    model, _, x, _ = setup(size)
    benchmark.group = f"mlp forward {size}"
    fn = model if mode == "eager" else tracer.trace(model, x)
    run(benchmark, fn, (x,), count_ops(model, x))


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("mode", ["eager", "traced"])
def test_mlp_train_step(benchmark, size, mode):
    _, step, x, y = setup(size)
    benchmark.group = f"mlp train step {size}"
    fn = step if mode == "eager" else tracer.trace(step, x, y)
    run(benchmark, fn, (x, y), count_ops(step, x, y))


def test_trace_time_of_the_mlp_train_step(benchmark):
    _, step, x, y = setup("medium")
    benchmark.group = "trace"
    traced = benchmark(tracer.trace, step, x, y)
    assert len(traced.graphs) == 2  # first step (creates Adam's state) and steady state, both recorded
    assert benchmark.stats.stats.median < 0.050, "goal: tracing the MLP train step takes < 50 ms"


def _interleaved(fns, args, rounds=9, min_time=0.05):
    """Median seconds per call of each fn, timed in alternating rounds (the machine's load drifts)."""
    for fn in fns:
        for _ in range(3):
            fn(*args)
    n, t = 1, 0.0
    while t < min_time:
        n *= 2
        start = time.perf_counter()
        for _ in range(n):
            fns[0](*args)
        t = time.perf_counter() - start
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            for _ in range(n):
                fn(*args)
            out.append((time.perf_counter() - start) / n)
    return [sorted(t)[len(t) // 2] for t in times]


def main() -> None:
    print(f"{'case':<28}{'ops':>5}{'eager us':>11}{'traced us':>11}{'eager us/op':>13}{'traced us/op':>14}"
          f"{'speedup':>9}")
    for size in SIZES:
        model, step, x, y = setup(size)
        for case, fn, args in ((f"mlp forward {size}", model, (x,)), (f"mlp train step {size}", step, (x, y))):
            ops = count_ops(fn, *args)
            traced = tracer.trace(fn, *args)
            te, tt = _interleaved([fn, traced], args)
            print(f"{case:<28}{ops:>5}{te * 1e6:>11.1f}{tt * 1e6:>11.1f}{te * 1e6 / ops:>13.2f}{tt * 1e6 / ops:>14.2f}"
                  f"{te / tt:>8.2f}x")
    _, step, x, y = setup("medium")
    trace_times = []
    for _ in range(7):
        start = time.perf_counter()
        tracer.trace(step, x, y)
        trace_times.append(time.perf_counter() - start)
    print(f"trace of the MLP train step (784-256-10, Adam): median {sorted(trace_times)[3] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
