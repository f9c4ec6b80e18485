"""Fusion structure, fuel, views and memory planning, each on small programs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import eager
import eager.nn.functional as F
from compiler import views as V
from compiler.fusion import bisect, fuse
from compiler.passes import optimize
from compiler.program import build
from compiler.runtime.cpu import build_executable
from compiler.testing import capture, reference

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graphduel-cache"))
    mp.delenv("GRAPHDUEL_FUSION_FUEL", raising=False)
    yield
    mp.undo()


def _graph(fn, *arrays):
    return optimize(capture(fn, *[eager.tensor(a) for a in arrays]))


def _kernels(fn, *arrays, fuel=None):
    program = build(_graph(fn, *arrays), fuel)
    return [s for s in program.steps if s.kind == "kernel"], program


def tanh_gelu(x):
    return 0.5 * x * (1 + eager.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


X = RNG.standard_normal((8, 16)).astype(np.float32)
W = RNG.standard_normal(16).astype(np.float32)


@pytest.mark.parametrize("name, fn, arrays, most", [
    ("tanh-gelu", tanh_gelu, (X,), 1),
    ("F.gelu tanh", lambda x: F.gelu(x, approximate="tanh"), (X,), 1),
    ("softmax", lambda x: F.softmax(x, dim=-1), (X,), 2),
    ("log_softmax", lambda x: F.log_softmax(x, dim=-1), (X,), 2),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (16,), w, b), (X, W, W), 2),
    ("mean of squares", lambda x: (x * x).mean(), (X,), 1),
    ("rms norm", lambda x, w: x * eager.rsqrt((x * x).mean(dim=-1, keepdim=True) + 1e-6) * w, (X, W), 1),
])
def test_fusion_structure(name, fn, arrays, most):
    kernels, program = _kernels(fn, *arrays)
    assert len(kernels) <= most, f"{name}: {[s.group for s in kernels]}"
    assert all(s.kind == "kernel" for s in program.steps), name


def test_whole_softmax_and_layer_norm_are_one_row_kernel():
    for fn, arrays in [(lambda x: F.softmax(x, dim=-1), (X,)),
                       (lambda x, w, b: F.layer_norm(x, (16,), w, b), (X, W, W))]:
        (k,), program = _kernels(fn, *arrays)
        assert program.kernels[k.group.id].is_row_kernel and k.group.reduced == (1,)


def test_matmul_stays_a_library_call_with_bias_and_activation_fused_after_it():
    w = RNG.standard_normal((16, 4)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    _, program = _kernels(lambda x, w, b: F.relu(x @ w + b), X, w, b)
    assert [s.kind for s in program.steps] == ["library", "kernel"]
    ops = {m.op for m in program.steps[1].group.members}
    assert {"add", "relu"} <= ops  # bias and activation: one kernel


def test_fuel_zero_means_one_kernel_per_op_and_more_fuel_never_adds_kernels():
    g = _graph(lambda x, w, b: F.layer_norm(tanh_gelu(x), (16,), w, b), X, W, W)
    counts = []
    full = fuse(g, None)
    for fuel in range(len(full.log) + 1):
        program = build(g, fuel)
        counts.append(sum(s.kind == "kernel" for s in program.steps))
        out = build_executable(program).run([X, W, W]) if fuel in (0, len(full.log) // 2) else None
        if out is not None:
            np.testing.assert_allclose(out[0], reference(g, [X, W, W])[0], rtol=1e-4, atol=1e-5)
    assert counts[0] == len(g.calls)
    assert all(a >= b for a, b in zip(counts, counts[1:])) and counts[-1] == 1
    assert [j.index for j in full.log] == list(range(1, len(full.log) + 1))


def test_fuel_from_the_environment(monkeypatch):
    g = _graph(tanh_gelu, X)
    monkeypatch.setenv("GRAPHDUEL_FUSION_FUEL", "2")
    assert len(fuse(g).log) == 2 and len(fuse(g).groups) == len(g.calls) - 2


def test_bisect_names_the_fusion_that_breaks_a_result(monkeypatch):
    """Inject a bug that only shows when exp is fused *inside* a kernel; bisect must find that join."""
    import compiler.kernel as K
    real = K._Lowerer._build

    def buggy(self, n, view):
        e = real(self, n, view)
        if n.op == "exp" and n.id in self.members and n.id not in self.g.stores:
            e.op = "log"  # wrong, and only for a fused (interior) exp
        return e
    monkeypatch.setattr(K._Lowerer, "_build", buggy)
    fn = lambda x: (x.abs() + 1).exp() * 2 + 1  # noqa: E731
    g = _graph(fn, X)
    want = reference(g, [X])[0]

    def run(fuel):
        program = build(g, fuel)
        return build_executable(program).run([X])[0], program.schedule.log
    culprit = bisect(run, lambda out: np.allclose(out, want, rtol=1e-4))
    assert culprit is not None and culprit.node.op == "exp", culprit
    assert "exp into kernel" in str(culprit)


def test_views_compose_through_movement_ops():
    v = V.identity(2)
    assert V.permute_source(v, (1, 0)) == ((0, 1), (1, 0))
    assert V.broadcast_source(v, (4, 3), (3,), 2) == ((0, 1),)
    assert V.broadcast_source(v, (4, 3), (4, 1), 2) == ((1, 0), (0, 0))
    # [4,6] read as reshape of [24]: flat index 6*i0 + i1
    assert V.reshape_source(v, (4, 6), (24,), (4, 6)) == ((6, 1),)
    # [24] domain read as [4,6] is div/mod: not affine
    assert V.reshape_source(V.identity(1), (24,), (4, 6), (24,)) is None
    assert V.linear_form(((0, 1), (1, 0)), (3, 2), 2) == (1, 2)


def test_memory_plan_reuses_slots_and_writes_in_place():
    ws = [RNG.standard_normal((16, 16)).astype(np.float32) for _ in range(4)]

    def chain(x, a, b, c, d):
        for w in (a, b, c, d):
            x = F.relu(x @ w)   # relu can overwrite the matmul result it reads last
        return x
    g = _graph(chain, X, *ws)
    program = build(g)
    plan = program.memory
    assert plan.in_place, "relu(h) should be computed in place over h"
    intermediates = [n for n, kind in plan.kind.items() if kind == "slot"]
    assert len(plan.slot_bytes) < len(intermediates)
    out = build_executable(program).run([X, *ws])
    np.testing.assert_allclose(out[0], reference(g, [X, *ws])[0], rtol=1e-4, atol=1e-4)


def test_returned_arrays_are_never_overwritten_by_a_later_call():
    ex = build_executable(build(_graph(lambda x: x.exp(), X)))
    first = ex.run([X])[0]
    kept = first.copy()
    second = ex.run([X + 1])[0]
    np.testing.assert_array_equal(first, kept)
    assert second is not first
    first_buffer = first.ctypes.data
    del first
    third = ex.run([X])[0]  # the pool reuses the dropped array, and only that one
    np.testing.assert_allclose(third, np.exp(X), rtol=1e-6)
    assert third.ctypes.data == first_buffer
    np.testing.assert_allclose(second, np.exp(X + 1), rtol=1e-6)


def test_what_a_caller_does_to_a_dropped_result_does_not_reach_later_results():
    ex = build_executable(build(_graph(lambda x: x.exp(), X)))
    for _ in range(3):
        r = ex.run([X])[0]
        r.shape = (r.size,)
        r.flags.writeable = False
        del r
    out = ex.run([X])[0]
    assert out.shape == X.shape and out.flags.writeable
    np.testing.assert_allclose(out, np.exp(X), rtol=1e-6)


def test_a_weakly_held_result_dies_instead_of_changing():
    import weakref
    ex = build_executable(build(_graph(lambda x: x.exp(), X)))
    held = weakref.WeakValueDictionary()
    held["first"] = ex.run([X])[0]
    ex.run([X + 1])
    assert "first" not in held


def test_a_returned_view_keeps_its_buffer_alive_to_the_end():
    w = RNG.standard_normal((16, 16)).astype(np.float32)

    def f(x, w):
        h = x @ w                      # a slot buffer...
        out = h.reshape(2, 64)         # ...returned through a host view
        for _ in range(3):
            h = F.relu(h @ w)          # later steps that could reuse h's slot
        return out, h
    g = _graph(f, X, w)
    got = build_executable(build(g)).run([X, w])
    for a, b in zip(got, reference(g, [X, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ values with readers in several steps
def test_a_value_read_only_by_kernels_is_recomputed_in_each_instead_of_stored():
    def f(x):
        h = x.exp()                              # read by both kernels below
        return (h * 2).sum(dim=1), h + x         # a row kernel and an elementwise kernel
    g = _graph(f, X)
    kernels, program = _kernels(f, X)
    assert len(kernels) == 2, [s.group for s in kernels]
    assert all("exp" in {m.op for m in s.group.members} for s in kernels)
    assert all(m.op != "exp" for s in kernels for m in s.group.members if m.id in s.group.stores)
    got = build_executable(program).run([X])
    for a, b in zip(got, reference(g, [X])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_forward_activation_is_recomputed_in_its_backward_kernel():
    """GELU forward and backward: the backward kernel recomputes tanh(...) from the pre-activation rather than
    reading the forward's intermediates back (the classifier's 2048x1024 step wrote 7 arrays, now 1)."""
    w = RNG.standard_normal((16, 16)).astype(np.float32)

    def step(x, w):
        h = x @ w
        y = F.gelu(h, approximate="tanh")
        gy = y @ w                               # forward goes on through a matmul
        return gy, eager.autograd.grad(y.sum() + gy.sum(), h)[0]
    g = optimize(capture(step, eager.tensor(X), eager.tensor(w, requires_grad=True)))
    program = build(g)
    stored = [m for s in program.steps if s.kind == "kernel" for m in s.group.members if m.id in s.group.stores]
    assert all(m.shape != (8, 16) or m.op in ("mul", "add") for m in stored)
    assert sum(m.shape == (8, 16) for m in stored) <= 2, [m.op for m in stored]
    for a, b in zip(build_executable(program).run([X, w]), reference(g, [X, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_value_read_by_a_kernel_and_a_matmul_joins_the_kernel():
    w = RNG.standard_normal((16, 16)).astype(np.float32)

    def f(x, w):
        h = F.relu(x)
        return h @ w, h.sum(dim=1)               # relu feeds BLAS and a row sum
    kernels, program = _kernels(f, X, w)
    assert len(kernels) == 1 and {m.op for m in kernels[0].group.members} >= {"relu", "sum"}
    steps = [s.kind for s in program.steps]
    assert steps.index("kernel") < steps.index("library"), "the kernel stores relu before matmul reads it"
    got = build_executable(program).run([X, w])
    for a, b in zip(got, reference(_graph(f, X, w), [X, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_joining_never_makes_a_cycle_of_steps():
    """t feeds kernel A directly and through a matmul: A must not swallow t, or A would wait for itself."""
    w = RNG.standard_normal((16, 16)).astype(np.float32)

    def f(x, w):
        t = x.tanh()
        return t + (t @ w)
    g = _graph(f, X, w)
    program = build(g)
    order = [s.kind for s in program.steps]
    assert order == ["kernel", "library", "kernel"], [s.group or s.node for s in program.steps]
    np.testing.assert_allclose(build_executable(program).run([X, w])[0], reference(g, [X, w])[0],
                               rtol=1e-4, atol=1e-4)


def test_a_bias_gradient_sum_keepdims_then_reshape_fuses_with_its_update():
    """The VJP of a broadcast add is sum(keepdim=True) then reshape; the SGD update of the bias reads it."""
    def f(g, b):
        grad = g.sum(dim=0, keepdim=True).reshape(16)
        return b - grad * 0.1, grad
    kernels, program = _kernels(f, X, W)
    assert len(kernels) == 1 and program.kernels[kernels[0].group.id].is_row_kernel
    got = build_executable(program).run([X, W])
    for a, b in zip(got, reference(_graph(f, X, W), [X, W])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_per_row_store_is_never_written_over_a_buffer_the_row_still_reads():
    """Row kernel: s = column sums of x, stored per row because a matmul reads it, and vv (a slot of the
    same size, read for the last time here) read after it. s may not take vv's buffer in place: the row
    stores s before it reads vv (found by the GAN step's Adam update, where a bias-gradient sum shared a row
    kernel with the second-moment update)."""
    v0 = RNG.standard_normal((1, 16)).astype(np.float32)
    w = RNG.standard_normal((16, 16)).astype(np.float32)

    def f(x, v, w):
        vv = v @ w                                  # a slot, read last by the row kernel
        s = x.sum(dim=0, keepdim=True)
        return (vv.abs() + s * s).sqrt(), s @ w
    g = _graph(f, X, v0, w)
    program = build(g)
    for nid, donor in program.memory.in_place.items():
        step = next(s for s in program.steps if s.kind == "kernel" and nid in s.group.stores)
        k = program.kernels[step.group.id]
        store = next(s for s in k.stores if s.node.id == nid)
        assert any(store.form[k.n_outer:]), f"per-row store {nid} written in place over {donor}"
    for a, b in zip(build_executable(program).run([X, v0, w]), reference(g, [X, v0, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_numpy_fallback_reads_a_full_as_a_literal_not_from_a_reused_slot():
    """``full`` is a literal to kernels, so the planner may hand its slot to a later value; the NumPy
    fallback must not read the slot (Adam's first step: zeros for m, read after the slot was reused)."""
    from compiler.runtime.executor import Executable
    w = RNG.standard_normal((16, 16)).astype(np.float32)

    def f(x, w):
        m = eager.zeros(8, 16)                  # read by a row kernel over rows and one over columns
        a = (x - m).sum(dim=1)
        h = x @ w                               # a slot of m's size, planned after m's
        b = (x * m + h).sum(dim=0)
        return a, b
    g = _graph(f, X, w)
    program = build(g)
    got = Executable(program, None).run([X, w])
    for a, b in zip(got, reference(g, [X, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_column_sum_does_not_take_a_full_size_value_another_step_reads():
    """sum(dim=0) walks its rows across memory: relu, also read by a matmul, is better computed and stored
    contiguously by its own kernel than in the column kernel's strided walk."""
    w = RNG.standard_normal((16, 16)).astype(np.float32)
    kernels, program = _kernels(lambda x, w: (F.relu(x) @ w, F.relu(x).sum(dim=0)), X, w)
    assert len(kernels) == 2 and [m.op for m in kernels[-1].group.members] == ["sum"]


@pytest.mark.parametrize("shape, dim", [((300, 1000), 0), ((7, 3, 130), 1), ((260, 2, 3), (0, 2))])
def test_column_kernels_walk_rows_as_vector_lanes_and_match_numpy(shape, dim):
    """Reductions over leading dims (bias gradients, variance over a batch) run as column kernels: a tile of
    kept rows per vector, accumulators per row; tails of several tiles, with max, sum and a row-wise epilogue."""
    from compiler.codegen.c import COLUMN_TILE
    x = RNG.standard_normal(shape).astype(np.float32)

    def f(x):
        m = x.max(dim=dim, keepdim=True)
        e = (x - m).exp()
        return e / e.sum(dim=dim, keepdim=True), (x * x).mean(dim=dim)
    g = _graph(f, x)
    program = build(g)
    kernels = [program.kernels[s.group.id] for s in program.steps if s.kind == "kernel"]
    assert any(k.columnar for k in kernels if k.is_row_kernel)
    assert max(math.prod(k.outer) for k in kernels if k.is_row_kernel) > COLUMN_TILE or shape[0] == 7
    for a, b in zip(build_executable(program).run([x]), reference(g, [x])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_column_max_propagates_nan_like_numpy():
    x = RNG.standard_normal((200, 140)).astype(np.float32)
    x[5, 3] = x[150, 139] = np.nan
    g = _graph(lambda x: x.max(dim=0), x)
    got = build_executable(build(g)).run([x])[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x.max(axis=0)))
    np.testing.assert_allclose(got, x.max(axis=0))


def test_a_value_returned_only_through_a_view_is_stored_by_its_kernel():
    """m is returned as m.reshape(12) (a view nobody else reads) and read by a kernel: the kernel must store m
    for the view, though the view is in no reader's path (found by an adversarial review; it crashed)."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for fn in (lambda a: ((a * 2).reshape(12), (a * 2) + 1),
               lambda a: ((a * 2).permute(1, 0), (a * 2).sum(0))):
        g = _graph(fn, a)
        for got, want in zip(build_executable(build(g)).run([a]), reference(g, [a])):
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_value_recomputed_in_two_kernels_rounds_the_same_in_both():
    """y = a*b is recomputed by the max kernel and by the mask kernel: with fused multiply-adds one copy would
    round and the other not, and (y - max(y)) >= 0 would miss the maximum in some rows."""
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((64, 37)).astype(np.float32) for _ in range(2))

    def f(a, b):
        y = a * b
        return ((y - y.amax(1, keepdim=True)) >= 0).float().sum(1), y.amax(1)
    count = build_executable(build(_graph(f, a, b))).run([a, b])[0]
    np.testing.assert_array_equal(count, np.ones(64, np.float32))


def test_no_in_place_write_over_a_buffer_the_kernel_also_reads_through_a_host_view():
    """b.reshape(6, 4) is not affine over a [4, 6] domain, so it is a NumPy view of b's buffer made on the
    host: the kernel reading b and that view must not write its result over b."""
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    w = RNG.standard_normal((6, 3)).astype(np.float32)

    def f(x, w):
        b = x.exp()
        return (b + b.reshape(6, 4).permute(1, 0)) @ w
    g = _graph(f, x, w)
    np.testing.assert_allclose(build_executable(build(g)).run([x, w])[0], reference(g, [x, w])[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fn", [lambda x, b: x.sum(0) + b.reshape(5),
                                lambda x, b: x.sum(0, keepdim=True) + b.reshape(1, 5),
                                lambda x, b: (x.sum(0) + 1) * b.reshape(5).exp()])
def test_an_empty_reduced_dim_still_reads_every_kept_element(fn):
    """A row kernel over [0, 5] reduced on dim 0 writes 5 elements; a reshaped operand must be read at each."""
    x = np.zeros((0, 5), np.float32)
    b = np.arange(5, dtype=np.float32).reshape(5, 1)
    g = _graph(fn, x, b)
    np.testing.assert_allclose(build_executable(build(g)).run([x, b])[0], reference(g, [x, b])[0], rtol=1e-6)
