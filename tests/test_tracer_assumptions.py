"""The assumption ledger: what a trace froze, where, with which value; check() shows it breaking."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import eager
import tracer
from eager import nn


def traced_quietly(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = tracer.trace(fn, *args, **kwargs)
    return traced, [w for w in caught if issubclass(w.category, tracer.TracerWarning)]


def test_data_dependent_branch_warns_once_per_site_with_line_and_value():
    branch_line = inspect.currentframe().f_lineno + 4

    def fn(x):
        for _ in range(3):  # the same site three times: still one warning, one ledger entry
            if x.sum() > 0:
                x = x * 2
        return x

    traced, caught = traced_quietly(fn, eager.ones(3))
    assert len(caught) == 1
    assert caught[0].lineno == branch_line and caught[0].filename == __file__
    (a,) = traced.assumptions
    assert (a.kind, a.source, a.value, a.count) == ("bool", f"test_tracer_assumptions.py:{branch_line}", True, 3)
    assert "frozen" in str(a)
    # a later retrace of the same function hits the same site: no new warning
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        traced(eager.ones(4))
    assert not [w for w in again if issubclass(w.category, tracer.TracerWarning)]


def _branchy(x):
    if x.sum() > 0:
        return x * 2
    return x - 1


def test_check_of_an_unguarded_trace_reports_the_divergence_on_a_counterexample():
    fn = _branchy
    traced, _ = traced_quietly(fn, eager.ones(3), guards="off")
    assert traced.check(eager.tensor([1.0, 2.0, 3.0])).ok
    report = traced.check(eager.tensor([-1.0, -2.0, -3.0]))
    assert not report.ok
    first = report.divergences[0]
    assert first.kind == "control flow"
    assert first.node.startswith("%1: f32[3] = mul(%0, 2)")
    assert "the eager run did sub(%0, 1)" in first.error
    assert first.assumption.kind == "bool" and first.assumption.value is True
    assert "the eager run saw False" in first.assumption.broken
    assert any(d.kind == "output" for d in report.divergences)


def test_check_of_a_guarded_trace_on_a_counterexample_agrees_by_retracing_and_notes_the_guard():
    traced, _ = traced_quietly(_branchy, eager.ones(3))
    report = traced.check(eager.tensor([-1.0, -2.0, -3.0]))
    assert report.ok and report.traced.tolist() == [-2.0, -3.0, -4.0]
    branch_line = inspect.getsourcelines(_branchy)[1] + 1
    assert f"guard failed at test_tracer_assumptions.py:{branch_line}: bool(tensor)" in report.notes[0]
    assert "was True while tracing and is False on this call" in report.notes[0]
    assert traced.retrace_count == 1 and traced.guard_failures == 1


def _scaled(x):
    scale = x.max().item()
    shape = x.sum(dim=1).tolist()
    return x / scale + len(shape)


@pytest.mark.parametrize("guards", ["off", "retrace"])
def test_item_and_tolist_are_recorded_with_their_values(guards):
    traced, caught = traced_quietly(_scaled, eager.tensor([[1.0, 4.0], [2.0, 2.0]]), guards=guards)
    kinds = {a.kind: a.value for a in traced.assumptions}
    assert kinds == {"item": 4.0, "tolist": [5.0, 4.0]}
    assert len(caught) == 2
    report = traced.check(eager.tensor([[1.0, 8.0], [2.0, 2.0]]))
    if guards == "off":  # the baked 4.0 is replayed
        assert report.divergences[0].kind == "baked value"
        assert "traced 4.0, eager 8.0" in report.divergences[0].error
    else:  # the guard on .item() sees 8.0: the call retraces and bakes 8.0
        assert report.ok and "tensor.item() (node %1) was 4.0 while tracing and is 8.0" in report.notes[0]
        assert all(a.use == "guard" for a in traced.assumptions)


@pytest.mark.parametrize("guards", ["off", "retrace"])
def test_boolean_mask_indexing_is_an_assumption_about_the_selected_count(guards):
    traced, caught = traced_quietly(lambda x: x[x > 0].sum(), eager.tensor([1.0, -1.0, 2.0]), guards=guards)
    (a,) = traced.assumptions
    assert a.kind == "nonzero" and a.value == "2 of 3 selected"
    assert traced.check(eager.tensor([3.0, -5.0, 1.0])).ok          # same positions selected
    other = traced.check(eager.tensor([-3.0, 5.0, 1.0]))             # other positions: the baked indices are wrong
    if guards == "off":
        assert not other.ok
    else:  # ... and the guard on the mask sees it: the call retraces for the new positions
        assert other.ok and other.traced.item() == 6.0 and "a boolean mask" in other.notes[0]
        assert traced.retrace_count == 1


def test_returned_item_is_recomputed_by_each_call():
    traced, caught = traced_quietly(lambda x: (x * x).sum().item(), eager.ones(2))
    assert traced(eager.tensor([3.0, 4.0])) == 25.0
    assert traced.assumptions[0].returned and "recomputed" in str(traced.assumptions[0])


class DynamicNet(nn.Module):
    """The seeds' network: the branch depends on a Python call counter."""

    def __init__(self, d_in, h, d_out):
        super().__init__()
        self.linear1 = nn.Linear(d_in, h)
        self.linear2 = nn.Linear(h, d_out)
        self.counter = 0

    def forward(self, x):
        self.counter += 1
        if self.counter % 2 == 0:
            h_relu = self.linear1(x).clamp(min=0)
        else:
            h_relu = self.linear1(x * 2).clamp(min=0)
        return self.linear2(h_relu)


@pytest.mark.parametrize("guards", ["off", "retrace"])
def test_dynamicnet_call_counter_is_caught_and_check_disagrees_on_the_second_call_only_without_guards(guards):
    eager.manual_seed(0)
    model = DynamicNet(64, 32, 10)
    x = eager.randn(1, 64)
    traced, caught = traced_quietly(model, x, guards=guards)
    counter_line = inspect.getsourcelines(DynamicNet)[1] + [i for i, line in enumerate(
        inspect.getsourcelines(DynamicNet)[0]) if "self.counter += 1" in line][0]
    assert model.counter == 0  # tracing has no side effects, Python state included
    (a,) = traced.assumptions
    assert a.kind == "python_state" and a.name == "model.counter" and (a.before, a.after) == (0, 1)
    assert a.source == f"test_tracer_assumptions.py:{counter_line}"
    assert "model.counter changed 0 -> 1" in str(caught[0].message)

    first = traced.check(x)           # eager call 1 (counter 0 -> 1) takes the traced branch
    assert first.ok and model.counter == 1
    second = traced.check(x)          # eager call 2 (counter 1 -> 2) takes the other branch
    if guards == "retrace":  # the guard on model.counter (0 when traced) fails on entry: the call retraces
        assert second.ok and model.counter == 2 and traced.retrace_count == 1
        assert "retraced: guard on Python state model.counter" in second.notes[0]
        assert f"changed at test_tracer_assumptions.py:{counter_line}" in second.notes[0]
        assert "it was 0 when traced and is 1 now" in second.notes[0]
        return
    assert not second.ok
    d = second.divergences[0]
    assert d.kind == "control flow" and "mul(%0, 2)" in d.node
    assert d.assumption.name == "model.counter"
    assert d.assumption.broken == "it was 0 when traced and is 1 now"


def test_python_state_that_tracing_left_alone_is_guarded():
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    traced = tracer.trace(model, eager.ones(2, 4))
    assert traced.graph.op_counts().get("uniform") == 1
    model.eval()  # eval mode: dropout off; the traced train-mode program must not be reused
    x = eager.randn(2, 4)
    np.testing.assert_array_equal(traced(x).numpy(), model(x).detach().numpy())
    assert traced.retrace_count == 1 and "uniform" not in traced.graph.op_counts()


def test_tracer_warning_is_a_user_warning():
    def scaled(x):
        total = float(x.sum())  # bound to a name: frozen (and guarded)
        return x * total

    assert issubclass(tracer.TracerWarning, UserWarning)
    with pytest.warns(tracer.TracerWarning, match="float"):
        tracer.trace(scaled, eager.ones(2))


def test_a_scalar_kept_in_the_graph_freezes_nothing_and_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", tracer.TracerWarning)
        traced = tracer.trace(lambda x: x * float(x.sum()), eager.ones(2))
    assert traced(eager.tensor([1.0, 2.0])).tolist() == [3.0, 6.0] and traced.retrace_count == 0


# Values that leave the graph by the side doors (NumPy conversion, copying into a new tensor) and integer draws.
def test_numpy_asarray_of_a_traced_value_is_an_assumption():
    with pytest.warns(tracer.TracerWarning):
        traced = tracer.trace(lambda x: x * float(np.asarray(x).sum()), eager.ones(2))
    assert traced(eager.tensor([1.0, 2.0])).tolist() == [3.0, 6.0] and traced.retrace_count == 1  # guarded


def test_eager_tensor_of_a_traced_value_is_an_assumption():
    with pytest.warns(tracer.TracerWarning):
        tracer.trace(lambda x: eager.tensor(x * 2) + 1, eager.ones(2))


def test_randint_inside_a_trace_draws_anew_each_call():
    traced = tracer.trace(lambda x: x + eager.randint(0, 1000, (8,)).float(), eager.zeros(8))
    assert traced(eager.zeros(8)).tolist() != traced(eager.zeros(8)).tolist()
