"""Traced == eager: every composite of eager.nn.functional, models, and full training steps (f32 and f64).

Each case is traced on one input and then called on a different input of the same signature, so the graph
cannot have baked the example's values in. Float tolerances: f32 rtol 1e-5 / atol 1e-6, f64 rtol 1e-10 /
atol 1e-12 (both modes run the same primitive impls in the same order; differences would be bugs).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import eager
import eager.nn.functional as F
import tracer
from eager import nn, optim

TOL = {eager.float32: dict(rtol=1e-5, atol=1e-6), eager.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [eager.float32, eager.float64]


def close(a, b, dtype):
    a = a.detach().numpy() if isinstance(a, eager.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, eager.Tensor) else np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.dtype, a.shape, b.dtype, b.shape)
    np.testing.assert_allclose(a, b, **TOL[dtype])


def randn(*shape, dtype, seed):
    return eager.tensor(np.random.default_rng(seed).standard_normal(shape), dtype=dtype)


def probs(*shape, dtype, seed):
    return eager.tensor(np.random.default_rng(seed).uniform(0.05, 0.95, shape), dtype=dtype)


def labels(n, classes, seed):
    return eager.tensor(np.random.default_rng(seed).integers(0, classes, n))


# one case per public function of eager.nn.functional: (function, inputs(dtype, seed)); the table test below
# fails when a new composite has no case
CASES = {
    "relu": (lambda x: F.relu(x), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "gelu": (lambda x: F.gelu(x) + F.gelu(x, approximate="tanh"), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "sigmoid": (lambda x: F.sigmoid(x), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "tanh": (lambda x: F.tanh(x), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "silu": (lambda x: F.silu(x), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "softplus": (lambda x: F.softplus(x * 10, beta=0.5, threshold=3.0), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "logsigmoid": (lambda x: F.logsigmoid(x), lambda d, s: [randn(4, 5, dtype=d, seed=s)]),
    "softmax": (lambda x: F.softmax(x, dim=-1), lambda d, s: [randn(3, 4, 5, dtype=d, seed=s)]),
    "log_softmax": (lambda x: F.log_softmax(x, dim=1), lambda d, s: [randn(3, 4, 5, dtype=d, seed=s)]),
    "linear": (lambda x, w, b: F.linear(x, w, b),
               lambda d, s: [randn(4, 3, dtype=d, seed=s), randn(5, 3, dtype=d, seed=s + 1),
                             randn(5, dtype=d, seed=s + 2)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (6,), w, b),
                   lambda d, s: [randn(2, 3, 6, dtype=d, seed=s), randn(6, dtype=d, seed=s + 1),
                                 randn(6, dtype=d, seed=s + 2)]),
    "dropout": (lambda x: F.dropout(x, 0.3), lambda d, s: [randn(6, 7, dtype=d, seed=s)]),
    "embedding": (lambda i, w: F.embedding(i, w, padding_idx=0),
                  lambda d, s: [labels(7, 5, s), randn(5, 3, dtype=d, seed=s)]),
    "one_hot": (lambda i, x: F.one_hot(i, 4).to(x.dtype) * x,
                lambda d, s: [labels(6, 4, s), randn(6, 1, dtype=d, seed=s)]),
    "mse_loss": (lambda a, b: F.mse_loss(a, b), lambda d, s: [randn(4, 3, dtype=d, seed=s),
                                                              randn(4, 3, dtype=d, seed=s + 1)]),
    "nll_loss": (lambda x, t: F.nll_loss(F.log_softmax(x, 1), t), lambda d, s: [randn(6, 4, dtype=d, seed=s),
                                                                                labels(6, 4, s)]),
    "cross_entropy": (lambda x, t, p: F.cross_entropy(x, t) + F.cross_entropy(x, t, label_smoothing=0.1)
                      + F.cross_entropy(x, p),
                      lambda d, s: [randn(6, 4, dtype=d, seed=s), labels(6, 4, s), probs(6, 4, dtype=d, seed=s)]),
    "binary_cross_entropy": (lambda p, t: F.binary_cross_entropy(p, t),
                             lambda d, s: [probs(5, 3, dtype=d, seed=s), probs(5, 3, dtype=d, seed=s + 1)]),
    "binary_cross_entropy_with_logits": (lambda x, t: F.binary_cross_entropy_with_logits(x, t),
                                         lambda d, s: [randn(5, 3, dtype=d, seed=s), probs(5, 3, dtype=d, seed=s)]),
}


def public_functions():
    return sorted(name for name, f in inspect.getmembers(F, inspect.isfunction)
                  if f.__module__ == F.__name__ and not name.startswith("_"))


def test_every_functional_composite_has_a_tracer_case():
    missing = [name for name in public_functions() if name not in CASES]
    assert not missing, f"eager.nn.functional composites without a traced == eager case: {missing}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_functional_equals_eager_on_new_inputs(name, dtype):
    fn, make = CASES[name]
    traced = tracer.trace(fn, *make(dtype, 0))
    new = make(dtype, 10)
    eager.manual_seed(3)
    expected = fn(*new)
    eager.manual_seed(3)  # dropout draws from the default generator in both modes
    got = traced(*new)
    close(got, expected, dtype)
    assert traced.retrace_count == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["gelu", "softmax", "layer_norm", "cross_entropy", "silu", "binary_cross_entropy"])
def test_static_backward_of_functional_equals_eager_autograd(name, dtype):
    fn, make = CASES[name]
    loss = lambda *a: (fn(*a) * fn(*a)).sum()  # noqa: E731  (a scalar that depends on every output)
    dx = tracer.grad(loss, *make(dtype, 0), argnums=0)
    new = make(dtype, 10)
    x = new[0].detach().requires_grad_(True)
    loss(x, *new[1:]).backward()
    close(dx(*new), x.grad, dtype)


def mlp(dtype):
    eager.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_linear_relu_linear_mlp_forward(dtype):
    model = mlp(dtype)
    traced = tracer.trace(model, randn(16, 8, dtype=dtype, seed=0))
    x = randn(16, 8, dtype=dtype, seed=1)
    close(traced(x), model(x), dtype)
    assert [n.name for n in traced.graph.inputs_with_role("param")] == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_layernorm_module(dtype):
    ln = nn.LayerNorm(12).to(dtype)
    with eager.no_grad():
        ln.weight.copy_(randn(12, dtype=dtype, seed=4))
    traced = tracer.trace(ln, randn(3, 12, dtype=dtype, seed=0))
    x = randn(3, 12, dtype=dtype, seed=1) * 5 + 2
    close(traced(x), ln(x), dtype)


class Attention(nn.Module):
    """Single-head attention: softmax(Q K^T / sqrt(d)) V, with a causal mask."""

    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.d = d

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d)
        t = x.shape[1]
        mask = eager.tensor(np.tril(np.ones((t, t), bool)))
        scores = scores.masked_fill(~mask, -1e9)
        return F.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_attention_block_qkt_softmax_v(dtype):
    eager.manual_seed(1)
    block = Attention(16).to(dtype)
    traced = tracer.trace(block, randn(2, 5, 16, dtype=dtype, seed=0))
    x = randn(2, 5, 16, dtype=dtype, seed=1)
    close(traced(x), block(x), dtype)
    assert traced.graph.op_counts()["matmul"] == 5


def train_losses(make_opt, dtype, steps, traced: bool):
    model = mlp(dtype)
    opt = make_opt(model.parameters())
    rng = np.random.default_rng(7)
    w_true = rng.standard_normal((8, 4))
    xs = [rng.standard_normal((16, 8)) for _ in range(steps)]  # a new batch every step, learnable targets
    batches = [(eager.tensor(x, dtype=dtype), eager.tensor(np.tanh(x @ w_true), dtype=dtype)) for x in xs]

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run = tracer.trace(step, *batches[0]) if traced else step
    losses = [run(x, y).item() for x, y in batches]
    return losses, model, opt, run


OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.05),
    "sgd_momentum_nesterov": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: optim.Adam(p, lr=1e-2),
    "adamw_amsgrad": lambda p: optim.AdamW(p, lr=1e-2, amsgrad=True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_traced_train_step_trains_exactly_like_eager_over_20_steps(opt_name, dtype):
    eager_losses, eager_model, _, _ = train_losses(OPTIMIZERS[opt_name], dtype, 20, traced=False)
    traced_losses, traced_model, _, run = train_losses(OPTIMIZERS[opt_name], dtype, 20, traced=True)
    np.testing.assert_allclose(traced_losses, eager_losses, **TOL[dtype])
    assert np.mean(traced_losses[-5:]) < np.mean(traced_losses[:5])
    for p, q in zip(traced_model.parameters(), eager_model.parameters()):
        close(p, q, dtype)
        close(p.grad, q.grad, dtype)
    assert run.retrace_count == 0


def test_one_graph_holds_forward_backward_and_update():
    _, _, _, run = train_losses(OPTIMIZERS["adam"], eager.float32, 1, traced=True)
    g = run.graph
    ops_by_line: dict[str, set] = {}
    for n in g.calls:
        ops_by_line.setdefault(n.source, set()).add(n.op)
    forward, backward, update = sorted(ops_by_line, key=lambda s: int(s.rsplit(":", 1)[1]))
    assert len(ops_by_line) == 3  # the loss line, loss.backward(), opt.step() (zero_grad runs no op)
    assert "matmul" in ops_by_line[forward] and "matmul" in ops_by_line[backward]
    assert "sqrt" in ops_by_line[update] and "matmul" not in ops_by_line[update]
    updated = [p.name for p, _ in g.updates]
    assert "0.weight" in updated and any(name.endswith(".exp_avg_sq") for name in updated)
    assert [n.role for n in g.placeholders].count("input") == 2


@pytest.mark.gpu
def test_traced_train_step_on_gpu_equals_eager():
    def run(traced: bool):
        eager.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).cuda()
        opt = optim.Adam(model.parameters(), lr=1e-2)
        x, y = eager.randn(16, 8, device="cuda"), eager.randn(16, 4, device="cuda")

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        f = tracer.trace(step, x, y) if traced else step
        return [f(x, y).item() for _ in range(20)]

    np.testing.assert_allclose(run(True), run(False), rtol=1e-5, atol=1e-6)


class CustomSigmoid(eager.autograd.Function):
    """The seeds' custom sigmoid: one node in eager autograd, its primitives in the trace."""

    @staticmethod
    def forward(ctx, x):
        y = 1 / (1 + (-x).exp())
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


def gan_step():
    eager.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    D = nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    opt_g, opt_d = optim.Adam(G.parameters(), lr=1e-3), optim.Adam(D.parameters(), lr=1e-3)

    def step(z, real):
        fake = G(z)
        opt_d.zero_grad()
        ones, zeros = eager.ones(real.shape[0], 1), eager.zeros(real.shape[0], 1)
        loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + \
            F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
        loss_g.backward()
        opt_g.step()
        return loss_d, loss_g

    def data(i):
        r = np.random.default_rng(i)
        return (eager.tensor(r.standard_normal((5, 4)), dtype=eager.float32),
                eager.tensor(r.standard_normal((5, 2)) + 2, dtype=eager.float32))
    return step, data


def custom_function_step():
    eager.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = optim.SGD(model.parameters(), lr=0.5)

    def step(x):
        opt.zero_grad()
        loss = CustomSigmoid.apply(model(x)).sum()
        loss.backward()
        opt.step()
        return loss

    return step, lambda i: (eager.full((2, 3), 0.1 * i),)


def embedding_classifier_step():
    eager.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), nn.Flatten(), nn.Linear(18, 5))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(idx, target):
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(idx), target)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        return loss

    def data(i):
        r = np.random.default_rng(i)
        return eager.tensor(r.integers(0, 10, (4, 3))), eager.tensor(r.integers(0, 5, 4))
    return step, data


@pytest.mark.parametrize("make", [gan_step, custom_function_step, embedding_classifier_step],
                         ids=["gan_with_detach", "custom_autograd_function", "embedding_clip_grad_momentum"])
def test_seed_style_training_programs_trace_like_eager(make):
    results = []
    for traced in (False, True):
        step, data = make()
        run = tracer.trace(step, *data(0)) if traced else step
        out = [run(*data(i)) for i in range(6)]
        results.append([[t.item() for t in o] if isinstance(o, tuple) else [o.item()] for o in out])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)
    assert run.retrace_count == 0
