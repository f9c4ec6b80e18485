"""tracer.grad through cond and scan: one static gradient graph, judged by jax.grad of the lax equivalent in float64.

The gradient program holds the same backward a traced train step records (a cond of the branches' VJPs; a
recomputing scan, then a reverse scan of the step's VJP), so one graph serves every branch and every input; it
compiles, saves and loads. while_loop stays forward only, as in JAX.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import compiler
import eager
import tracer
from eager.autograd.engine import BackwardError
from eager.control import ControlFlowError

jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
RNG = np.random.default_rng(0)


def _f64(values, requires_grad=False):
    return eager.tensor(np.asarray(values, dtype=np.float64), requires_grad=requires_grad)


def _close(got, want, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(got.numpy() if isinstance(got, eager.Tensor) else got), want, rtol=rtol,
                               atol=atol)


def _eager_grads(fn, args, argnums, params=()):
    """The gradients eager autograd gives through the Python (eager runs the branch taken, step by step)."""
    leaves = [a.detach().requires_grad_(True) if i in argnums else a for i, a in enumerate(args)]
    for p in params:
        p.grad = None
    fn(*leaves).backward()
    return [leaves[i].grad for i in argnums] + [p.grad for p in params]


# ---------------------------------------------------------------- cond

W = _f64([0.5, -1.0, 2.0], requires_grad=True)  # a parameter both branches capture


def _cond_loss(x, y):
    def true_fn(a, b):
        return (a * W).sin() * b, (a * b).sum()

    def false_fn(a, b):
        return a * W * W + b.exp(), (a - b).sum() * 2
    u, s = eager.cond(x.sum() > 0, true_fn, false_fn, (x, y))
    return (u * u).sum() + s


def _cond_ref(x, y, w):
    def true_fn(ab):
        a, b = ab
        return jnp.sin(a * w) * b, (a * b).sum()

    def false_fn(ab):
        a, b = ab
        return a * w * w + jnp.exp(b), (a - b).sum() * 2
    u, s = jax.lax.cond(x.sum() > 0, true_fn, false_fn, (x, y))
    return (u * u).sum() + s


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_grad_through_cond_equals_jax_grad_of_lax_cond_on_both_branches_with_a_captured_param(mode):
    x, y = _f64([1.0, 2.0, 0.5]), _f64([0.3, -0.2, 0.7])
    g = tracer.grad(_cond_loss, x, y, argnums=(0, 1), wrt_params=True)
    run = g if mode == "traced" else compiler.compile(g, x, y)
    for sign in (1.0, -1.0):  # -1 takes the branch tracing did not
        dx, dy, dparams = run(x * sign, y)
        want = jax.grad(_cond_ref, argnums=(0, 1, 2))(x.numpy() * sign, y.numpy(), W.detach().numpy())
        for got, expected in zip((dx, dy, dparams["W"]), want):
            _close(got, expected)
        for got, expected in zip((dx, dy, dparams["W"]), _eager_grads(_cond_loss, (x * sign, y), (0, 1), (W,))):
            _close(got, expected.numpy())
    assert g.retrace_count == 0 and g.graph.op_counts()["cond"] == 2  # one program: forward cond, backward cond


def test_grad_through_cond_graph_saves_and_loads_and_takes_either_branch(tmp_path):
    x, y = _f64([1.0, 2.0, 0.5]), _f64([0.3, -0.2, 0.7])
    g = tracer.grad(_cond_loss, x, y, argnums=(0, 1))
    g.save(str(tmp_path / "dcond.gd"))
    loaded = tracer.load(str(tmp_path / "dcond.gd"))
    for sign in (1.0, -1.0):
        for got, want in zip(loaded(x * sign, y), g(x * sign, y)):
            _close(got, want.numpy(), rtol=0, atol=0)


# ---------------------------------------------------------------- scan

SCAN_W = _f64(RNG.standard_normal((3, 3)) * 0.5, requires_grad=True)  # captured by the step


def _scan_loss(reverse):
    def loss(xs, us, h0, c0):
        def step(carry, x):
            h, c = carry
            a, b = x
            c = c * a.sigmoid() + (h @ SCAN_W + b).tanh()
            return (c.tanh() * h, c), (h + c, (h * a).sum())
        (h, c), (ys, zs) = eager.scan(step, (h0, c0), (xs, us), reverse=reverse)
        return h.sum() + (c * c).sum() + (ys * ys).sum() + zs.sin().sum()
    return loss


def _scan_ref(reverse):
    def loss(xs, us, h0, c0, w):
        def step(carry, x):
            h, c = carry
            a, b = x
            c = c * jax.nn.sigmoid(a) + jnp.tanh(h @ w + b)
            return (jnp.tanh(c) * h, c), (h + c, (h * a).sum())
        (h, c), (ys, zs) = jax.lax.scan(step, (h0, c0), (xs, us), reverse=reverse)
        return h.sum() + (c * c).sum() + (ys * ys).sum() + jnp.sin(zs).sum()
    return loss


def _scan_args(seed):
    rng = np.random.default_rng(seed)
    return tuple(_f64(rng.standard_normal(s)) for s in ((5, 3), (5, 3), (3,), (3,)))


@pytest.mark.parametrize("mode", ["traced", "compiled"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_grad_through_scan_equals_jax_grad_of_lax_scan_for_carries_xs_and_a_captured_param(reverse, mode):
    loss = _scan_loss(reverse)
    g = tracer.grad(loss, *_scan_args(1), argnums=(0, 1, 2, 3), wrt_params=True, return_value=True)
    run = g if mode == "traced" else compiler.compile(g, *_scan_args(1))
    for seed in (2, 3):  # inputs tracing never saw
        args = _scan_args(seed)
        value, (*dargs, dparams) = run(*args)
        arrays = [a.numpy() for a in args] + [SCAN_W.detach().numpy()]
        _close(value, _scan_ref(reverse)(*arrays))
        want = jax.grad(_scan_ref(reverse), argnums=(0, 1, 2, 3, 4))(*arrays)
        for got, expected in zip((*dargs, dparams["SCAN_W"]), want):
            _close(got, expected)
        for got, expected in zip((*dargs, dparams["SCAN_W"]), _eager_grads(loss, args, (0, 1, 2, 3), (SCAN_W,))):
            _close(got, expected.numpy())
    assert g.graph.op_counts()["scan"] == 3  # the forward, its recompute, the reverse scan of the step's VJP


def test_grad_through_scan_graph_saves_and_loads(tmp_path):
    g = tracer.grad(_scan_loss(True), *_scan_args(1), argnums=(0, 2))
    g.save(str(tmp_path / "dscan.gd"))
    loaded = tracer.load(str(tmp_path / "dscan.gd"))
    args = _scan_args(4)
    for got, want in zip(loaded(*args), g(*args)):
        _close(got, want.numpy(), rtol=0, atol=0)


# ---------------------------------------------------------------- nested control flow and second order


def _nested_loss(xs):
    def body(c, x):
        c = eager.cond(x.sum() > 0, lambda a, b: (a * W + b).sin(), lambda a, b: a * b * W, (c, x))
        return c, c.sum()
    h, ys = eager.scan(body, eager.ones(3, dtype=eager.float64), xs)
    return h.sum() + (ys * ys).sum()


def _nested_ref(xs, w):
    def body(c, x):
        c = jax.lax.cond(x.sum() > 0, lambda ab: jnp.sin(ab[0] * w + ab[1]), lambda ab: ab[0] * ab[1] * w, (c, x))
        return c, c.sum()
    h, ys = jax.lax.scan(body, jnp.ones(3), xs)
    return h.sum() + (ys * ys).sum()


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_grad_through_a_cond_nested_in_a_scan_body_equals_jax_grad(mode):
    xs = _f64(RNG.standard_normal((6, 3)))
    g = tracer.grad(_nested_loss, xs, wrt_params=True)
    run = g if mode == "traced" else compiler.compile(g, xs)
    for seed in (5, 6):
        other = _f64(np.random.default_rng(seed).standard_normal((6, 3)))  # other branches on other steps
        dxs, dparams = run(other)
        want = jax.grad(_nested_ref, argnums=(0, 1))(other.numpy(), W.detach().numpy())
        _close(dxs, want[0])
        _close(dparams["W"], want[1])


def _grad_norm_through_cond(x):
    """|dL/dW|^2 for a loss through cond: the forward graph holds the backward cond, so its gradient is second order."""
    loss = eager.cond(x.sum() > 0, lambda v: (v * W).sin().sum(), lambda v: (v * W * W).sum(), (x,))
    gw, = eager.autograd.grad(loss, W, create_graph=True)
    return (gw * gw).sum()


def _grad_norm_ref(w, x):
    def loss(w):
        return jax.lax.cond(x.sum() > 0, lambda v: jnp.sin(v * w).sum(), lambda v: (v * w * w).sum(), x)
    gw = jax.grad(loss)(w)
    return (gw * gw).sum()


def test_second_order_grad_through_cond_equals_jax_grad_of_jax_grad():
    x = _f64([1.0, 2.0, 3.0])
    g = tracer.grad(_grad_norm_through_cond, x, wrt_params=True)
    for sign in (1.0, -1.0):
        dx, dparams = g(x * sign)
        want_w, want_x = jax.grad(_grad_norm_ref, argnums=(0, 1))(W.detach().numpy(), x.numpy() * sign)
        _close(dx, want_x)
        _close(dparams["W"], want_w)


def _scan_grad_norm(xs):
    """|dL/dSCAN_W|^2 for a loss through a reverse scan that captures SCAN_W: second order through the scan."""
    h, ys = eager.scan(lambda h, x: ((h @ SCAN_W + x).tanh(), h.sum()), eager.ones(3, dtype=eager.float64), xs,
                       reverse=True)
    gw, = eager.autograd.grad(h.sum() + (ys * ys).sum(), SCAN_W, create_graph=True)
    return (gw * gw).sum()


def _scan_grad_norm_ref(w, xs):
    def loss(w):
        h, ys = jax.lax.scan(lambda h, x: (jnp.tanh(h @ w + x), h.sum()), jnp.ones(3), xs, reverse=True)
        return h.sum() + (ys * ys).sum()
    gw = jax.grad(loss)(w)
    return (gw * gw).sum()


def test_second_order_grad_through_scan_with_a_captured_param_equals_jax_grad_of_jax_grad():
    xs = _f64(RNG.standard_normal((4, 3)))
    g = tracer.grad(_scan_grad_norm, xs, wrt_params=True)
    other = _f64(RNG.standard_normal((4, 3)))
    dxs, dparams = g(other)
    want_w, want_xs = jax.grad(_scan_grad_norm_ref, argnums=(0, 1))(SCAN_W.detach().numpy(), other.numpy())
    _close(dxs, want_xs)
    _close(dparams["SCAN_W"], want_w)


def test_second_order_in_a_traced_train_step_over_scan_equals_jax():
    def step(xs):
        SCAN_W.grad = None
        _scan_grad_norm(xs).backward()  # backward through the backward scans
        return SCAN_W.grad
    traced = tracer.trace(step, _f64(RNG.standard_normal((4, 3))))
    other = _f64(RNG.standard_normal((4, 3)))
    _close(traced(other), jax.grad(_scan_grad_norm_ref)(SCAN_W.detach().numpy(), other.numpy()))


# ---------------------------------------------------------------- the eager path, and what stays refused


def test_the_gradient_programs_python_run_eagerly_equals_the_traced_program():
    xs = _f64(RNG.standard_normal((6, 3)))
    g = tracer.grad(_nested_loss, xs, wrt_params=True)
    traced, eager_run = g(xs), g.fn(xs)  # g.fn replays the forward program with eager's cond and scan
    _close(traced[0], eager_run[0].numpy())
    _close(traced[1]["W"], eager_run[1]["W"].numpy())


def test_grad_through_a_while_loop_is_refused_pointing_to_scan():
    def f(x):
        _, v = eager.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 2), (eager.tensor(0), x))
        return v.sum()
    with pytest.raises(BackwardError, match="while_loop is forward only.*eager.scan with a fixed number of steps"):
        tracer.grad(f, eager.ones(3))


def test_a_while_loop_off_the_gradient_path_is_replayed_and_its_value_used():
    def f(x):
        _, v = eager.while_loop(lambda i, v: v.sum() < 20, lambda i, v: (i + 1, v * 2),
                                (eager.tensor(0), eager.ones(3, dtype=eager.float64)))
        return (x * v).sum()
    g = tracer.grad(f, _f64([1.0, 2.0, 3.0]))
    assert g(_f64([0.0, 0.0, 0.0])).tolist() == [8.0, 8.0, 8.0]


def test_an_integer_carry_in_a_differentiated_scan_is_refused_naming_the_fix():
    def f(xs):
        (_, h), _ = eager.scan(lambda c, x: ((c[0] + 1, c[1] * x), c[1]),
                               (eager.tensor(0), eager.ones(3, dtype=eager.float64)), xs)
        return h.sum()
    with pytest.raises(ControlFlowError, match="every carry must be floating point.*pass it as xs"):
        tracer.grad(f, _f64(np.ones((4, 3))))
