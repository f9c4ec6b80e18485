"""Eager against PyTorch eager, per case of ``compare.eager_vs_torch`` (skipped by default: run with
``pytest tests/benchmarks --benchmark-only``). pytest-benchmark times each side on its own; the ratio goals are
judged by ``python3 -m compare.eager_vs_torch``, which interleaves the two in one run (fairer on a shared machine).
"""

from __future__ import annotations

import pytest

from compare import eager_vs_torch as bench

pytest.importorskip("pytest_benchmark")
CASES = bench.cases()


@pytest.mark.parametrize("lib_name", ["eager", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(benchmark, case, lib_name):
    lib = pytest.importorskip(lib_name)
    step = case.make(lib)
    benchmark.extra_info["goal_ratio"] = case.goal
    benchmark(step)
