"""Each optimisation pass alone: it removes what it should, keeps what it must, and never changes results."""

from __future__ import annotations

import numpy as np
import pytest

import eager
from compiler.passes import cse, dce, fold_constants, optimize, simplify
from compiler.testing import capture, reference
from eager.primitives import Aval
from tracer.ir import Graph

F32 = np.dtype("float32")
RNG = np.random.default_rng(0)


def _same_results(before: Graph, after: Graph, arrays, rtol=1e-12) -> None:
    for a, b in zip(reference(before, arrays), reference(after, arrays)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def _x(shape=(3, 4)):
    return RNG.standard_normal(shape).astype(np.float32)


def test_dce_drops_dead_calls_keeps_placeholders():
    g = Graph()
    x = g.placeholder("x", Aval((3,), F32))
    unused = g.placeholder("unused", Aval((3,), F32))
    g.call("sin", (x,), {}, Aval((3,), F32))
    g.constant(np.ones(3, np.float32))
    g.outputs.append(g.call("exp", (x,), {}, Aval((3,), F32)))
    out = dce(g)
    assert [n.op for n in out.calls] == ["exp"]
    assert [p.name for p in out.placeholders] == ["x", "unused"] and unused.role == "input"
    assert not [n for n in out.nodes if n.op == "constant"]


def test_dce_keeps_state_updates():
    g = Graph()
    p = g.placeholder("w", Aval((2,), F32), role="param")
    g.updates.append((p, g.call("mul", (p, 0.5), {}, Aval((2,), F32))))
    assert dce(g).op_counts() == {"mul": 1}


def test_cse_merges_equal_calls_but_not_random_draws_or_different_literals():
    def f(x):
        a, b = x.exp(), x.exp()
        c, d = x * 2, x * 2.5
        return a + b + c + d
    g = capture(f, eager.tensor(_x()))
    out = dce(cse(g))
    assert out.op_counts()["exp"] == 1 and out.op_counts()["mul"] == 2
    _same_results(g, out, [_x()])
    r = Graph()
    r.outputs = [r.call("uniform", (), {"shape": (2,), "dtype": F32, "device": "cpu"}, Aval((2,), F32))
                 for _ in range(2)]
    assert cse(r).op_counts()["uniform"] == 2


def test_fold_constants_evaluates_constant_subgraphs_once():
    g = Graph()
    x = g.placeholder("x", Aval((4,), F32))
    c = g.constant(np.arange(4, dtype=np.float32))
    e = g.call("exp", (c,), {}, Aval((4,), F32))
    g.outputs.append(g.call("mul", (x, e), {}, Aval((4,), F32)))
    out = dce(fold_constants(g))
    assert [n.op for n in out.calls] == ["mul"]
    _same_results(g, out, [_x((4,))], rtol=1e-6)  # folded in the graph's float32, as the program would


def test_a_folded_uniform_result_becomes_a_broadcast_scalar_that_kernels_read_as_a_literal():
    """A mean's gradient folds to N equal values: kept as one scalar broadcast, not an array the kernel loads."""
    from compiler.program import build
    g = Graph()
    x = g.placeholder("x", Aval((32, 10), F32))
    c = g.constant(np.float32(1 / 320))
    b = g.call("broadcast_to", (c,), {"shape": (32, 10)}, Aval((32, 10), F32))
    e = g.call("mul", (b, 2.0), {}, Aval((32, 10), F32))
    g.outputs.append(g.call("mul", (e, x), {}, Aval((32, 10), F32)))
    out = dce(fold_constants(g))
    consts = [n for n in out.nodes if n.op == "constant"]
    assert len(consts) == 1 and np.asarray(consts[0].value).size == 1
    (kernel,) = build(out).kernels.values()
    assert [b.op for b in kernel.buffers] == ["placeholder"]
    _same_results(g, out, [_x((32, 10))], rtol=1e-6)


def test_fold_keeps_big_fills_as_calls_and_random_draws():
    g = Graph()
    big = g.call("full", (), {"shape": (512, 512), "fill_value": 1.0, "dtype": F32, "device": "cpu"},
                 Aval((512, 512), F32))
    rnd = g.call("normal", (), {"shape": (2,), "dtype": F32, "device": "cpu"}, Aval((2,), F32))
    g.outputs = [big, rnd]
    assert fold_constants(g).op_counts() == {"full": 1, "normal": 1}


@pytest.mark.parametrize("fn, gone", [
    (lambda x: x * 1 + 0 - 0, {"mul", "add", "sub"}),
    (lambda x: (1 * x) / 1, {"mul", "div"}),
    (lambda x: eager.neg(eager.neg(x.exp())), {"neg"}),
    (lambda x: x.reshape(12).reshape(2, 6).reshape(3, 4).exp(), {"reshape"}),
    (lambda x: x.detach().clone().exp(), {"stop_gradient", "copy"}),
    (lambda x: x.permute(1, 0).permute(1, 0).exp(), {"permute"}),
    (lambda x: x.to(eager.float32).exp(), {"cast"}),
    (lambda x: x ** 1 + x ** 2, {"pow"}),
    (lambda x: eager.where(x > 0, x, x), {"where"}),
])
def test_simplify_identities(fn, gone):
    g = capture(fn, eager.tensor(_x()))
    out = dce(simplify(g))
    assert not gone & set(out.op_counts()), out
    _same_results(g, out, [_x()])


def test_simplify_keeps_broadcasting_identities():
    # x * ones[2,3] broadcasts x[3] to [2,3]: not an identity, must stay
    g = Graph()
    x = g.placeholder("x", Aval((3,), F32))
    ones = g.placeholder("o", Aval((2, 3), F32))
    g.outputs.append(g.call("mul", (x, 1), {}, Aval((3,), F32)))
    g.outputs.append(g.call("add", (ones, x), {}, Aval((2, 3), F32)))
    assert dce(simplify(g)).op_counts() == {"add": 1}


def test_simplify_pow_to_multiplies_within_tolerance():
    g = capture(lambda x: x ** 3 + x ** 0.5, eager.tensor(np.abs(_x())))
    out = dce(simplify(g))
    assert "pow" not in out.op_counts() and out.op_counts()["sqrt"] == 1
    x = np.abs(_x())
    for a, b in zip(reference(g, [x]), reference(out, [x])):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_optimize_pipeline_validates_and_preserves_results():
    def f(x, w):
        h = (x @ w).detach() * 1
        return eager.softmax(h + 0, dim=-1).sum() + (h.exp() + h.exp()).mean()
    x, w = _x((4, 5)), _x((5, 3))
    g = capture(f, eager.tensor(x), eager.tensor(w))
    out = optimize(g)
    assert len(out.calls) < len(g.calls)
    _same_results(g, out, [x, w])


def test_passes_read_device_constants_through_the_backend_not_numpy(monkeypatch):
    """A CUDA trace holds CuPy constants, which refuse implicit conversion to NumPy: CSE, folding and the
    literal reader must copy them with ``to_numpy`` (a stand-in device array plays CuPy here)."""
    import eager.backend as backend

    class DeviceArray:
        def __init__(self, host):
            self.host = host
            self.shape, self.dtype, self.size, self.nbytes = host.shape, host.dtype, host.size, host.nbytes

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    class FakeCupy:
        @staticmethod
        def asnumpy(a):
            return a.host
    monkeypatch.setattr(backend, "_cupy", lambda: FakeCupy)
    g = Graph()
    x = g.placeholder("x", Aval((4,), F32))
    two = g.constant(DeviceArray(np.full((), 2, np.float32)))
    vec = g.constant(DeviceArray(np.arange(4, dtype=np.float32)))
    e = g.call("exp", (vec,), {}, Aval((4,), F32))
    g.outputs.append(g.call("mul", (g.call("mul", (x, two), {}, Aval((4,), F32)), e), {}, Aval((4,), F32)))
    out = optimize(g)
    from compiler.program import build
    (kernel,) = build(out).kernels.values()
    assert "placeholder" in [b.op for b in kernel.buffers]


def test_folding_keeps_the_sign_of_zero():
    g = Graph()
    x = g.placeholder("x", Aval((2,), F32))
    c = g.constant(np.array([-0.0, 0.0], np.float32))
    g.outputs.append(g.call("div", (x, g.call("mul", (c, 2.0), {}, Aval((2,), F32))), {}, Aval((2,), F32)))
    with np.errstate(divide="ignore"):
        got = reference(optimize(g), [np.ones(2, np.float32)])[0]
    np.testing.assert_array_equal(got, [-np.inf, np.inf])


def test_cse_keeps_two_scans_over_the_same_inputs_whose_bodies_return_different_values():
    # a train step's own scan and its backward's recompute scan: same inputs, same body size, other outputs.
    # Merged (a region's repr names only its size), the compiled gradient was silently wrong.
    import compiler
    import tracer

    def f(xs, h0):
        a = eager.scan(lambda h, x: (h + x, h + x), h0, xs)[1]
        b = eager.scan(lambda h, x: (h + x, h), h0, xs)[1]
        return a - b
    xs, h0 = eager.arange(6.0).reshape(3, 2), eager.zeros(2)
    graph = tracer.trace(f, xs, h0).graph
    assert [n.op for n in cse(graph).nodes].count("scan") == 2
    assert compiler.compile(f, xs, h0)(xs, h0).tolist() == f(xs, h0).tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
