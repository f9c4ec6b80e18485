"""PyTorch snippets port by changing the import: the seeds' code, verbatim, runs with ``import eager as torch``."""

import warnings

import eager as torch
import eager.nn as nn


def test_seed_dynamic_graph_snippet_runs_unchanged_and_gives_the_right_gradients():
    # ../shared/seeds/004: y = (x + w) * (w + 1), written with torch.add / torch.mul
    w = torch.tensor([1.], requires_grad=True)
    x = torch.tensor([2.], requires_grad=True)
    a = torch.add(w, x)
    a.retain_grad()
    b = torch.add(w, 1)
    y = torch.mul(a, b)
    y.backward()
    assert (w.is_leaf, x.is_leaf, a.is_leaf, b.is_leaf, y.is_leaf) == (True, True, False, False, False)
    with warnings.catch_warnings(record=True):
        assert (w.grad.tolist(), x.grad.tolist(), a.grad.tolist(), b.grad, y.grad) == ([5.0], [2.0], [2.0], None, None)
    assert (w.grad_fn, x.grad_fn) == (None, None)
    assert (a.grad_fn.name, b.grad_fn.name, y.grad_fn.name) == ("AddBackward", "AddBackward", "MulBackward")


def test_torch_namespaces_and_methods_used_by_the_seeds_exist():
    # seed 001 uses x.mm(w1), torch.no_grad, torch.autograd.Function, torch.nn, torch.optim
    x, w1 = torch.randn(4, 3), torch.randn(3, 2, requires_grad=True)
    h = x.mm(w1).clamp(min=0)
    with torch.no_grad():
        w1 -= 1e-3 * torch.ones_like(w1)
    assert h.shape == (4, 2) and issubclass(torch.autograd.Function, object)
    assert torch.nn.Linear is nn.Linear and torch.optim.SGD is not None and torch.viz.make_dot is not None


def test_seed_scalar_graph_snippet_gives_the_mathematically_right_gradients():
    # seed 003 prints 8 and 1 here; PyTorch and mathematics say 24 and 2
    x = torch.tensor(3.0, requires_grad=True)
    z = (x * 2) ** 2
    z.backward()
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    e = ((a + b) * 2).mean()
    e.backward()
    assert (x.grad.item(), a.grad.item(), b.grad.item()) == (24.0, 2.0, 2.0)
