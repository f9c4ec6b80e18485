"""BLAS threading for programs of small matmuls: the tuner keeps the thread count its own timings favour,
follows a change of load, re-checks less often while its choice holds, and can be fixed by the user."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import eager
import eager.nn as nn
from compiler.runtime.blas import ThreadTuner, _openblas


def drive(tuner: ThreadTuner, cost, calls: int) -> list:
    """Run ``calls`` calls whose time is ``cost(option)``; returns the option of each call."""
    chosen = []
    for _ in range(calls):
        option = tuner.choice()
        tuner.record(option, cost(option))
        chosen.append(option)
    return chosen


def test_tuner_keeps_the_faster_thread_count_after_sampling_both():
    tuner = ThreadTuner((1, None), samples=5)
    chosen = drive(tuner, lambda o: 1.0 if o is None else 2.0, 10)
    assert chosen.count(1) == 5 and chosen.count(None) == 5
    assert tuner.best is None
    assert drive(tuner, lambda o: 1.0 if o is None else 2.0, 20) == [None] * 20


def test_tuner_switches_when_load_makes_the_other_count_faster():
    tuner = ThreadTuner((1, None), samples=3, recheck=3, period=8)
    drive(tuner, lambda o: 1.0 if o is None else 2.0, 6)
    assert tuner.best is None
    # the other core got busy: two threads now wait on each other
    chosen = drive(tuner, lambda o: 30.0 if o is None else 2.0, 8 + 3 + 5)
    assert chosen[8:11] == [1, 1, 1]
    assert tuner.best == 1 and chosen[-5:] == [1] * 5


def test_tuner_rechecks_less_often_while_its_choice_holds():
    tuner = ThreadTuner((1, None), samples=2, recheck=2, period=4, max_period=16)
    chosen = drive(tuner, lambda o: 1.0 if o is None else 2.0, 4 + 4 * 2 + 8 + 2 + 16 + 2 + 16)
    rechecks = [i for i, o in enumerate(chosen) if o == 1 and i >= 4]
    assert rechecks == [8, 9, 18, 19, 36, 37, 54, 55]
    assert tuner.best is None and tuner.period == 16


def _small_matmul_step():
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    return lambda x: model(x).sum()


@pytest.mark.skipif(_openblas() is None or _openblas()[1]() < 2, reason="needs OpenBLAS with 2+ threads")
def test_small_matmul_program_tunes_threads_and_gives_the_same_result():
    x = eager.randn(8, 32)
    step = _small_matmul_step()
    c = compiler.compile(step, x)
    ex = c.lowered.executable
    assert ex.blas_threads == "auto"
    results = {float(c(x).item()) for _ in range(20)}
    assert ex.blas_tuner.decided
    assert c.report(show=False).attrs["blas_threads"] in ("1 (tuned)", "2 (tuned)", f"{_openblas()[1]()} (tuned)")
    assert results == {float(c(x).item())}
    np.testing.assert_allclose(results.pop(), float(step(x).item()), rtol=1e-5)


def test_fixed_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_BLAS_THREADS", "1")
    x = eager.randn(8, 32)
    c = compiler.compile(_small_matmul_step(), x)
    expected = None if _openblas() is None or _openblas()[1]() < 2 else 1
    assert c.lowered.executable.blas_threads == expected
    assert c.lowered.executable.blas_tuner is None
    if expected == 1:
        assert c.report(show=False).attrs["blas_threads"] == "1 (fixed)"


@pytest.mark.skipif(_openblas() is None or _openblas()[1]() < 2, reason="needs OpenBLAS with 2+ threads")
def test_bad_thread_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_BLAS_THREADS", "two")
    with pytest.raises(ValueError, match="GRAPHDUEL_BLAS_THREADS='two'"):
        compiler.compile(_small_matmul_step(), eager.randn(8, 32))


@pytest.mark.skipif(_openblas() is None or _openblas()[1]() < 2, reason="needs OpenBLAS with 2+ threads")
def test_report_timings_use_the_count_the_tuner_settled_on(monkeypatch):
    import compiler.runtime.executor as executor
    x = eager.randn(8, 32)
    c = compiler.compile(_small_matmul_step(), x)
    c(x)
    tuner = c.lowered.executable.blas_tuner
    tuner.decided, tuner.best, tuner.calls_since = True, 1, tuner.period  # settled on 1, a re-check due
    used = []
    real = executor.BlasThreads
    monkeypatch.setattr(executor, "BlasThreads", lambda n: used.append(n) or real(n))
    df = c.report(show=False)
    assert used[0] == 1 and df.attrs["blas_threads"] == "1 (tuned)"
