"""PyTorch snippets port by changing the import: the seeds' code, verbatim, runs with ``import eager as torch``."""

import warnings

import numpy as np
import pytest

import eager as torch


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
    assert (a.grad_fn.name(), b.grad_fn.name(), y.grad_fn.name()) == ("AddBackward", "AddBackward", "MulBackward")


def _seed_001_snippets(torch, data: dict) -> dict:
    """Seed 001's code, as written for PyTorch (x.mm(w1), torch.no_grad, torch.autograd.Function, torch.nn,
    torch.optim), on given data instead of torch.randn; ``torch`` is either library."""

    class Sigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = 1.0 / (1.0 + (-x).exp())
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad_y):
            (y,) = ctx.saved_tensors
            return grad_y * y * (1.0 - y)

    x, y = torch.tensor(data["x"]), torch.tensor(data["y"])
    w1 = torch.tensor(data["w1"], requires_grad=True)
    w2 = torch.tensor(data["w2"], requires_grad=True)
    h = x.mm(w1).clamp(min=0)
    loss = (h.mm(w2) - y).pow(2).sum()
    loss.backward()
    grads = [w1.grad.clone(), w2.grad.clone()]
    with torch.no_grad():
        w1 -= 1e-3 * w1.grad
        w2 -= 1e-3 * w2.grad
        w1.grad.zero_()

    s_in = torch.tensor(data["x"], requires_grad=True)
    Sigmoid.apply(s_in).sum().backward()

    model = torch.nn.Linear(3, 2)
    model.load_state_dict({"weight": torch.tensor(data["lin_w"]), "bias": torch.tensor(data["lin_b"])})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(3):
        step_loss = torch.nn.functional.mse_loss(model(x[:, :3]), y[:, :2])
        optimizer.zero_grad()
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.item())
    values = {"h": h, "loss": loss, "grad_w1": grads[0], "grad_w2": grads[1], "w1": w1, "w2": w2,
              "w1.grad after zero_": w1.grad, "sigmoid grad": s_in.grad, "linear weight": model.weight,
              "linear bias": model.bias}
    return {"sgd losses": np.array(losses), **{k: v.detach().numpy() for k, v in values.items()}}


def test_seed_001_snippets_give_pytorchs_values_with_import_eager_as_torch():
    real_torch = pytest.importorskip("torch", reason="PyTorch is the oracle here (pip install graphduel[peers])")
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((4, 5)), "y": rng.standard_normal((4, 3)), "w1": rng.standard_normal((5, 6)),
            "w2": rng.standard_normal((6, 3)), "lin_w": rng.standard_normal((2, 3)), "lin_b": rng.standard_normal(2)}
    data = {k: v.astype(np.float32) for k, v in data.items()}
    ours, theirs = _seed_001_snippets(torch, data), _seed_001_snippets(real_torch, data)
    assert set(ours) == set(theirs)
    for name, want in theirs.items():
        assert ours[name].shape == want.shape and ours[name].dtype == want.dtype, name
        np.testing.assert_allclose(ours[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not ours["w1.grad after zero_"].any() and (ours["h"] == 0).any()  # the clamp and zero_ did act


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
