"""tracer.grad: a static backward graph from the forward, equal to eager autograd, with no eager backward."""

from __future__ import annotations

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
