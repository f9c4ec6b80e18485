"""tracer.grad: a static backward graph from the forward, equal to eager autograd, with no eager backward."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import eager
import eager.nn.functional as F
import tracer
from eager import nn


def test_grad_of_a_function_equals_eager_autograd():
    def f(x, w):
        return F.gelu(x @ w).pow(2).mean()

    rng = np.random.default_rng(0)
    x0, w0 = (eager.tensor(rng.standard_normal(s), dtype=eager.float64) for s in ((4, 3), (3, 5)))
    g = tracer.grad(f, x0, w0, argnums=(0, 1))
    x1, w1 = (eager.tensor(rng.standard_normal(s), dtype=eager.float64, requires_grad=True) for s in ((4, 3), (3, 5)))
    dx, dw = g(x1.detach(), w1.detach())
    f(x1, w1).backward()
    np.testing.assert_allclose(dx.numpy(), x1.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(dw.numpy(), w1.grad.numpy(), rtol=1e-12)
    assert [n.name for n in g.graph.placeholders] == ["x", "w"]


def test_grad_with_respect_to_module_parameters_and_value():
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    g = tracer.grad(lambda x: model(x).sum(), eager.ones(5, 3), wrt_params=True, return_value=True)
    x = eager.randn(5, 3)
    value, (dx, dparams) = g(x)
    xx = x.detach().requires_grad_(True)
    loss = model(xx).sum()
    loss.backward()
    assert abs(value.item() - loss.item()) < 1e-6
    np.testing.assert_allclose(dx.numpy(), xx.grad.numpy(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(dparams[name].numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(n.name for n in g.graph.inputs_with_role("param")) == sorted(dict(model.named_parameters()))


def test_grad_graph_is_static_and_runs_without_eager_autograd():
    g = tracer.grad(lambda x: (x * x).sum(), eager.ones(3))
    assert "matmul" not in g.graph.op_counts() and g.graph.op_counts()["mul"] >= 2
    assert g(eager.tensor([1.0, 2.0, 3.0])).tolist() == [2.0, 4.0, 6.0]


def test_grad_refuses_a_non_scalar_or_stateful_function():
    with pytest.raises(ValueError, match=r"must return a scalar floating-point tensor first.*f32\[3\]"):
        tracer.grad(lambda x: x * 2, eager.ones(3))
    with pytest.raises(ValueError, match="argnums=1 names argument 1, which is not a tensor argument"):
        tracer.grad(lambda x, k: (x * k).sum(), eager.ones(3), 2.0, argnums=1)


# ---------------------------------------------------------------- the forward's guards are the gradient's


def branch_loss(x):
    return (x * x).sum() if x.sum() > 0 else (x * 3).sum()


def quiet(make, fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tracer.TracerWarning)
        return make(fn, *args, **kwargs)


def quiet_grad(fn, *args, **kwargs):
    return quiet(tracer.grad, fn, *args, **kwargs)


def test_grad_takes_the_branch_each_input_takes_and_keeps_both_gradient_programs():
    g = quiet_grad(branch_loss, eager.ones(2))
    assert g(-eager.ones(2)).tolist() == [3.0, 3.0]  # eager: the false branch's gradient
    assert g(eager.tensor([2.0, 1.0])).tolist() == [4.0, 2.0]
    assert g(-eager.ones(2)).tolist() == [3.0, 3.0]
    assert g.retrace_count == 1 and len(g.entries) == 2 and g.guard_failures >= 1
    assert g.graph.outputs[-1].op == "gt"  # the forward's guarded value is an output of the backward graph


def test_grad_with_guards_raise_raises_a_guard_error_naming_the_forward_line():
    line = inspect.getsourcelines(branch_loss)[1] + 1
    for g in (quiet_grad(branch_loss, eager.ones(2), guards="raise"),
              quiet_grad(quiet(tracer.trace, branch_loss, eager.ones(2), guards="raise"), eager.ones(2))):
        assert g(eager.ones(2)).tolist() == [2.0, 2.0]
        with pytest.raises(tracer.GuardError, match=rf"guard failed at test_tracer_grad.py:{line}: bool\(tensor\) .*"
                                                    r"was True while tracing and is False on this call"):
            g(-eager.ones(2))


def test_grad_past_the_forwards_cache_size_differentiates_its_python_eagerly_as_eager_does():
    eager.manual_seed(0)
    lin = nn.Linear(2, 1)

    def loss(x):
        y = lin(x).sum()
        return y * y if y > 0 else y * 3

    forward = quiet(tracer.trace, loss, eager.ones(1, 2), cache_size=1)
    g = quiet_grad(forward, eager.ones(1, 2), wrt_params=True)
    for x in (eager.tensor([[-5.0, -5.0]]), eager.tensor([[2.0, 3.0]])):
        dx, dparams = g(x)
        xx = x.detach().requires_grad_(True)
        lin.zero_grad()
        loss(xx).backward()
        np.testing.assert_allclose(dx.numpy(), xx.grad.numpy(), rtol=1e-6)
        assert sorted(dparams) == ["bias", "weight"]
        np.testing.assert_allclose(dparams["weight"].numpy(), lin.weight.grad.numpy(), rtol=1e-6)
        np.testing.assert_allclose(dparams["bias"].numpy(), lin.bias.grad.numpy(), rtol=1e-6)
    assert g.eager_fallbacks >= 1 and forward.eager_fallbacks >= 1


class Switch(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(eager.tensor([2.0]))
        self.square = True

    def forward(self, x):
        y = (x * self.scale).sum()
        return y * y if self.square else y * 3


def test_grad_retraces_when_python_state_the_forward_reads_changes():
    model = Switch()
    g = quiet_grad(model, eager.ones(2), wrt_params=True)
    assert g(eager.ones(2))[1]["scale"].tolist() == [16.0]   # d(2s)^2/ds at s=2, x=(1,1)
    model.square = False
    dx, dparams = g(eager.ones(2))
    assert dx.tolist() == [6.0, 6.0] and dparams["scale"].tolist() == [6.0] and g.retrace_count == 1
    assert [n.name for n in g.graph.inputs_with_role("param")] == ["scale"]


def test_grad_refuses_a_forward_that_changes_python_state():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x.sum()

    with pytest.raises(ValueError, match=r"changes state \(Python state model\.calls .*\); grad needs a pure"):
        quiet_grad(Counting(), eager.ones(2))
