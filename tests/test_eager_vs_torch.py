"""The eager-vs-PyTorch benchmark measures both libraries on the same step and reports the ratio and goal."""

import pytest

from compare import eager_vs_torch as bench


def test_every_case_runs_the_same_step_on_eager_and_torch_and_has_a_goal():
    torch = pytest.importorskip("torch")
    import eager
    assert all(c.goal > 0 for c in bench.cases())
    for case in bench.cases()[:3]:
        ours, theirs = case.make(eager)(), case.make(torch)()
        assert tuple(ours.shape) == tuple(theirs.shape)
        assert ours.detach().numpy() == pytest.approx(theirs.detach().numpy(), rel=1e-5, abs=1e-6)


def test_a_measurement_gives_both_times_their_ratio_and_whether_the_goal_was_met():
    torch = pytest.importorskip("torch")
    row = bench.measure(bench.cases()[1], repeat=2, torch=torch)
    assert row["ours_us"] > 0 and row["torch_us"] > 0
    assert row["ratio"] == pytest.approx(row["ours_us"] / row["torch_us"])
    assert row["met"] == (row["ratio"] <= 2.0)
    text = bench.table([row], "1 thread each")
    assert "| relu (64, 10) |" in text and "<= 2.0" in text
