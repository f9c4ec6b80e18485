"""ONNX export: a traced graph written as an ONNX model (``traced.export_onnx``), checked by ``onnx.checker`` and
run by ONNX Runtime, agrees with eager: every primitive (each op of a gallery, control flow as If / Loop / Scan,
the fused rows as hand-built graphs), every forward workload, and the ``onnxruntime`` peer in the harness.

Tests that need onnx and onnxruntime skip, naming the extra, where they are not installed; the table-driven
tests (every primitive lowered or named unsupported) run everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest

import eager
import tracer
from compare import workloads
from compare.correctness import compare_outputs
from compare.modes import _build, as_tuple, to_numpy
from eager.primitives import PRIMITIVES, Aval
from tracer import onnx_export
from tracer.executor import StaticExecutor
from tracer.ir import Graph, regions_of
from tracer.onnx_export import DEFAULT_OPSET, LOWERINGS, UNSUPPORTED, UnsupportedOpError, to_onnx, unsupported

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="needs onnx and onnxruntime: pip install graphduel[onnx]")

rng = np.random.default_rng(0)


def f32(*shape):
    return eager.tensor(rng.standard_normal(shape).astype(np.float32))


def i64(values):
    return eager.tensor(np.array(values, np.int64))


def _trace(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tracer.trace(fn, *args)


def _ops(graph: Graph, acc: set) -> set:
    for n in graph.calls:
        acc.add(n.op)
        for region in regions_of(n):
            _ops(region.graph, acc)
    return acc


def _agree(got, want):
    """Every output equal within the harness's tolerances (float32: rtol 1e-3, atol 1e-4; ints and bools exact)."""
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want)
    c = compare_outputs({str(i): np.asarray(g) for i, g in enumerate(got)},
                        {str(i): to_numpy(w) for i, w in enumerate(want)})
    assert c.ok, c.summary()
    for g, w in zip(got, want):
        assert np.asarray(g).dtype == to_numpy(w).dtype


# ---------------------------------------------------------------- the gallery: every primitive a trace records


CAPTURED = f32(4)  # a tensor from outside the function: a constant node of the graph


def _write_through_views(x, v, idx):
    y = x.clone()
    y[1:3] = v          # index_put
    y[idx] += 1.0       # index_add (idx repeats a row: both writes land)
    return y


def _cond(x, w):
    return eager.cond(x.sum() > 0, lambda v: (v @ w).tanh(), lambda v: -v @ w + 1.0, (x,))


def _while(x):
    def body(i, v):
        return i + 1, v * 2.0
    i, v = eager.while_loop(lambda i, v: v.abs().sum() < 100.0, body, (eager.zeros((), dtype=eager.int64), x))
    return i, v


def _scan(h0, xs, w, reverse, dim):
    def step(h, x):
        h = (h + x @ w).tanh()
        return h, h * 2.0
    return eager.scan(step, h0, xs, dim=dim, reverse=reverse)


GALLERY = {
    "unary": (lambda x: (x.exp() + x.abs().log() + x.abs().sqrt() + x.tanh() + x.sin() + x.cos() - x.neg()).relu()
              + x.sign() + x.sigmoid() + x.erf() + x.erfc(), [f32(3, 4)]),
    "binary": (lambda x, y: (x + y, x - y, x * 2, x / (y.abs() + 1), x.abs() ** 1.5, eager.maximum(x, y),
                             eager.minimum(x, y)), [f32(3, 4), f32(4)]),
    "comparisons": (lambda x, y: (x == y, x != y, x < y, x <= 0, x > y, x >= 0.5), [f32(3, 4), f32(3, 4)]),
    "bitwise": (lambda a, b: (a & b, a | b, a ^ b, ~a, (a > 0) & (b > 0), (a > 0) | (b > 0), (a > 0) ^ (b > 0),
                              ~(a > 0)), [i64([[5, -3], [2, 0]]), i64([[3, 6], [-1, 7]])]),
    "where_cast": (lambda x: (eager.where(x > 0, x, 0.0), (x > 0).sum(), x.long(), x.to(eager.float64),
                              (x > 0).float(), x.detach() * 3), [f32(3, 4)]),
    "reductions": (lambda x: (x.sum(), x.sum(1), x.sum((0, 2), keepdim=True), x.amax(1), x.argmax(),
                              x.argmax(1, keepdim=True)), [f32(2, 3, 4)]),
    "movement": (lambda x: (x.reshape(4, 6), x.permute(2, 0, 1), x[:, None].expand(2, 5, 3, 4),
                            eager.cat([x, x * 2], 1), x.diagonal(0, 1, 2), x.diagonal(1, 0, 2), x.unfold(2, 2, 1)),
                 [f32(2, 3, 4)]),
    "basic_index": (lambda x: (x[1:, ::2], x[..., -1], x[None, 0], x[::-1], x[::-2, 1:3], x[-2], x[:]), [f32(5, 4)]),
    "index_tensor": (lambda x, i: (x[i], x[:, i], x[None, 1:, i]), [f32(5, 4), i64([0, -1, 2])]),
    # several index tensors (NumPy's advanced indexing): adjacent ones in place, separated ones first, an int
    # beside a tensor as a 0-d index, broadcast against each other
    "advanced_index": (lambda x, i, j: (x[i, j], x[:, i, j], x[i, :, j], x[1, :, i], x[i[:, None], j],
                                        x[None, i, 1:, j]), [f32(3, 4, 5), i64([0, -1, 2]), i64([1, 3, -4])]),
    "index_write": (_write_through_views, [f32(5, 4), f32(2, 4), i64([0, 4, 0])]),
    "gather_scatter": (lambda x, i, src: (x.gather(1, i), x.scatter(1, i, src), x.scatter_add(1, i, src)),
                       [f32(3, 4), i64([[0, 3], [1, 2], [2, 0]]), f32(3, 3)]),
    "creation": (lambda x: (x + eager.ones(3, 4), eager.zeros(()) + x.sum(), eager.full((2,), 3.0)), [f32(3, 4)]),
    "captured_constant": (lambda x: x * CAPTURED + CAPTURED.sum(), [f32(3, 4)]),
    "matmul": (lambda a, b: a @ b, [f32(2, 3, 4), f32(4, 5)]),
    "cond": (_cond, [f32(4, 3), f32(3, 3)]),
    "while_loop": (_while, [f32(4)]),
    "scan": (lambda h, xs, w: _scan(h, xs, w, False, 0), [f32(2, 3), f32(5, 2, 3), f32(3, 3)]),
}


def _hand_built() -> dict[str, tuple[Graph, list]]:
    """Graphs holding rows a trace never records (eager's fused ``linear`` and ``cross_entropy``, whose
    decompositions it records), records only in backward graphs (``conv_transpose``), or rows the gallery's eager
    API does not reach, built by hand, with their inputs."""
    out = {}
    g = Graph()
    x, w, b = (g.placeholder(n, Aval(s, np.dtype(np.float32))) for n, s in (("x", (4, 3)), ("w", (5, 3)), ("b", (5,))))
    g.outputs.append(g.call("linear", (x, w, b), {}, Aval((4, 5), np.dtype(np.float32))))
    out["linear"] = (g, [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (5, 3), (5,))])
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (4,))):
        g = Graph()
        x = g.placeholder("logits", Aval((4, 6), np.dtype(np.float32)))
        t = g.placeholder("target", Aval((4,), np.dtype(np.int64)))
        g.outputs.append(g.call("cross_entropy", (x, t), {"ignore_index": 2, "reduction": reduction},
                                Aval(shape, np.dtype(np.float32))))
        out[f"cross_entropy_{reduction}"] = (g, [rng.standard_normal((4, 6)).astype(np.float32),
                                                 np.array([1, 2, 5, 0], np.int64)])
    conv = {"stride": (2, 1), "padding": ((1, 0), (1, 1)), "dilation": (1, 2), "groups": 2}
    g = Graph()
    x = g.placeholder("x", Aval((2, 4, 7, 6), np.dtype(np.float32)))
    w = g.placeholder("w", Aval((6, 2, 3, 2), np.dtype(np.float32)))
    y = g.call("conv", (x, w), conv, PRIMITIVES["conv"].shape_rule(x.aval, w.aval, **conv))
    back = g.call("conv_transpose", (y, w), {**conv, "size": (7, 6)}, x.aval)
    g.outputs += [y, back]
    out["conv"] = (g, [rng.standard_normal((2, 4, 7, 6)).astype(np.float32),
                       rng.standard_normal((6, 2, 3, 2)).astype(np.float32)])
    # rows whose eager wrappers may come later: floor division and remainder (Python's signs, ints and floats,
    # a scalar divisor too), rounding (halves to even), cumulative sums and products, stable argsort both ways
    # (ties), einsum
    a = np.array([[7, -7, 6, -6, 0], [5, -5, 9, -1, 3]])
    b = np.array([[2, 2, -4, -4, 3], [-3, -3, 2, 2, 5]])
    for dtype in (np.int64, np.float32):
        for op in ("floor_divide", "remainder"):
            out[f"{op}_{np.dtype(dtype).name}"] = _one(op, [a.astype(dtype), b.astype(dtype)])
            out[f"{op}_{np.dtype(dtype).name}_scalar"] = _one(op, [a.astype(dtype), -2])
    out["floor_divide_float_fractions"] = _one("floor_divide", [np.float32([7.5, -7.5, 1e-3, -0.25]),
                                                                np.float32([0.5, 2.5, -0.1, 0.1])])
    for values in (a.astype(np.float32), a, a > 0):
        out[f"cumsum_{values.dtype.name}"] = _one("cumsum", [values], axis=1)
    halves = np.float32([[-2.5, -1.5, -0.5, 0.5, 1.5], [2.5, -0.7, 0.7, -3.2, 3.9]])
    for op in ("floor", "ceil", "round", "trunc"):
        out[op] = _one(op, [halves])
    out["round_int"] = _one("round", [a])
    out["cumprod"] = _one("cumprod", [rng.standard_normal((4, 3)).astype(np.float32)], axis=0)
    out["cumprod_int_last_axis"] = _one("cumprod", [b], axis=-1)
    ties = np.float32([[3, 1, 2, 1, 3], [0, 0, -1, 5, 0]])
    out["argsort"] = _one("argsort", [ties], axis=1, descending=False)
    out["argsort_descending"] = _one("argsort", [ties], axis=-1, descending=True)
    out["einsum"] = _one("einsum", [rng.standard_normal((2, 3, 4)).astype(np.float32),
                                    rng.standard_normal((4, 5)).astype(np.float32)], equation="bij,jk->bki")
    return out


def _one(op: str, operands: list, **params) -> tuple[Graph, list]:
    """A graph of one ``op`` call on placeholders for the array operands (scalars stay scalars), with the arrays."""
    g = Graph()
    args = [g.placeholder(f"a{i}", Aval(v.shape, v.dtype)) if isinstance(v, np.ndarray) else v
            for i, v in enumerate(operands)]
    shape_args = [a.aval if hasattr(a, "aval") else a for a in args]
    g.outputs.append(g.call(op, args, params, PRIMITIVES[op].shape_rule(*shape_args, **params)))
    return g.validate(), [v for v in operands if isinstance(v, np.ndarray)]


def test_every_primitive_is_lowered_to_onnx_or_named_unsupported_with_a_reason():
    lowered, refused = set(LOWERINGS), set(UNSUPPORTED)
    assert not lowered & refused
    assert set(PRIMITIVES) == lowered | refused, f"no ONNX rule: {sorted(set(PRIMITIVES) - lowered - refused)}"
    assert refused == {n for n, p in PRIMITIVES.items() if p.random} | {"conv_weight_grad"}
    assert all(len(why) > 40 for why in UNSUPPORTED.values())


def test_gallery_and_hand_built_graphs_exercise_every_lowering():
    seen: set = set()
    for fn, args in GALLERY.values():
        _ops(_trace(fn, *args).graph, seen)
    for graph, _ in _hand_built().values():
        _ops(graph, seen)
    assert set(LOWERINGS) - seen <= {"to_device"}  # a move to the device a tensor is on records nothing
    assert "to_device" in LOWERINGS


def test_unsupported_names_each_random_draw_with_its_line_without_onnx():
    traced = _trace(lambda x: x + eager.rand(3) * eager.randn(3), eager.zeros(3))
    found = unsupported(traced.graph)
    assert [s.split(" = ")[1].split("(")[0] for s in found] == ["uniform", "normal"]
    assert all("test_onnx_export.py:" in s and "pass it in as an input" in s for s in found)
    fn, args = GALLERY["scan"]
    assert unsupported(_trace(fn, *args).graph) == []


@needs_onnx
@pytest.mark.parametrize("case", sorted(GALLERY))
def test_gallery_op_exported_agrees_with_eager_in_onnxruntime(case):
    fn, args = GALLERY[case]
    program = onnx_export.export(_trace(fn, *args))
    _agree(program(*args), fn(*args))


@needs_onnx
@pytest.mark.parametrize("name", sorted(_hand_built()))
def test_hand_built_graphs_agree_with_the_static_executor_in_onnxruntime(name):
    graph, arrays = _hand_built()[name]
    model, interface = to_onnx(graph)
    session = _session(model)
    got = session.run(None, dict(zip(interface.input_names, arrays)))
    _agree(got, StaticExecutor(graph).run(arrays))


def _session(model):
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- control flow on data the trace did not see


@needs_onnx
def test_cond_becomes_if_and_takes_the_branch_the_data_asks_for():
    x, w = f32(4, 3), f32(3, 3)
    program = onnx_export.export(_trace(_cond, x.abs(), w))  # traced on the true branch
    assert [n.op_type for n in program.model.graph.node].count("If") == 1
    for sign in (1.0, -1.0):
        _agree(program(x.abs() * sign, w), _cond(x.abs() * sign, w))


@needs_onnx
def test_while_loop_becomes_loop_with_a_trip_count_decided_by_the_data():
    program = onnx_export.export(_trace(_while, eager.ones(4)))
    assert "Loop" in {n.op_type for n in program.model.graph.node}
    trips = []
    for scale in (1.0, 0.01, 30.0):
        x = eager.ones(4) * scale
        got, want = program(x), _while(x)
        _agree(got, want)
        trips.append(int(got[0]))
    assert trips == [5, 12, 0]


@needs_onnx
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -2])
def test_scan_becomes_scan_forwards_and_backwards_along_any_dim(reverse, dim):
    h0, w = f32(2, 3), f32(3, 3)
    xs = f32(5, 2, 3) if dim == 0 else f32(2, 5, 3)
    fn = lambda h, s, w: _scan(h, s, w, reverse, dim)  # noqa: E731
    program = onnx_export.export(_trace(fn, h0, xs, w))
    assert "Scan" in {n.op_type for n in program.model.graph.node}
    _agree(program(h0, xs * 0.5, w), fn(h0, xs * 0.5, w))


# ---------------------------------------------------------------- the model: inputs, initializers, outputs, file


@needs_onnx
def test_params_become_initializers_with_their_current_values_and_arguments_graph_inputs():
    from onnx import numpy_helper
    model = eager.nn.Sequential(eager.nn.Linear(6, 8), eager.nn.ReLU(), eager.nn.Linear(8, 2))
    x = f32(5, 6)
    traced = _trace(model, x)
    with eager.no_grad():
        model[0].weight.mul_(2.0)  # exported: the value now, not the value traced
    program = onnx_export.export(traced)
    graph = program.model.graph
    assert [i.name for i in graph.input] == program.input_names == ["input"]
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(inits[name], p.detach().numpy())
    assert [o.name for o in graph.output] == program.output_names == ["out0"]
    _agree(program(x), model(x))


@needs_onnx
def test_export_onnx_writes_a_checked_model_that_onnxruntime_runs_from_the_file(tmp_path):
    import onnx
    fn = lambda x, y: ((x @ y).relu().sum(0), x * 2)  # noqa: E731
    x, y = f32(3, 4), f32(4, 5)
    path = tmp_path / "model.onnx"
    traced = tracer.trace(fn, x, y)
    returned = traced.export_onnx(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == DEFAULT_OPSET == returned.model.opset_import[0].version
    assert model.producer_name == "graphduel"
    got = _session(model).run(None, {"x": x.numpy(), "y": y.numpy()})
    _agree(got, fn(x, y))
    assert os.path.getsize(path) > 0


@needs_onnx
def test_an_older_opset_is_written_when_asked_and_an_unknown_one_is_refused_with_the_range():
    import onnx
    fn, (x,) = GALLERY["reductions"]
    traced = _trace(fn, x)
    model = onnx_export.export(traced, opset=18).model
    assert model.opset_import[0].version == 18
    _agree(_session(model).run(None, {"x": x.numpy()}), fn(x))
    with pytest.raises(ValueError, match=f"opset must be an int from 18 to {onnx.defs.onnx_opset_version()}"):
        onnx_export.export(traced, opset=13)


@needs_onnx
def test_a_primitive_without_onnx_operator_stops_the_export_naming_it_and_the_line(tmp_path):
    traced = _trace(lambda x: (x + eager.rand(3)).exp(), eager.zeros(3))
    with pytest.raises(UnsupportedOpError, match=r"uniform\(\.\.\.\) at .*test_onnx_export\.py:\d+: uniform draws "
                                                  r"from graphduel's generator"):
        traced.export_onnx(tmp_path / "never_written.onnx")
    assert not (tmp_path / "never_written.onnx").exists()


@needs_onnx
def test_a_buffer_the_program_updates_is_fed_back_so_calls_follow_eager():
    wl = workloads.get("dynamic_net_cond")
    arrays = wl.make_inputs("small")
    ours, theirs = _build(wl, eager, arrays, "cpu"), _build(wl, eager, arrays, "cpu")
    program = onnx_export.export(_trace(ours.fn, *ours.args))
    graph = program.model.graph
    assert "counter" in [i.name for i in graph.input] and "counter" in [t.name for t in graph.initializer]
    assert program.updates == {"counter": "counter.new"}
    assert dict((p.key, p.value) for p in program.model.metadata_props)["graphduel.updates"] == \
        '{"counter": "counter.new"}'
    for _ in range(3):  # odd calls double the input: the branch flips with the fed-back counter
        _agree(program(*ours.args), theirs.fn(*theirs.args))
    assert int(program.state["counter"]) == 3
    assert int(ours.fn.counter.item()) == 0  # the module it came from is not touched


@needs_onnx
def test_an_argument_written_in_place_is_written_by_the_onnx_call_as_by_the_traced_one():
    def bump(x):
        x.add_(1.0)
        return x * 2
    program = onnx_export.export(_trace(bump, eager.zeros(3)))
    x, y = eager.ones(3), eager.ones(3)
    _agree(program(x), bump(y))
    assert x.tolist() == y.tolist() == [2.0, 2.0, 2.0]


@needs_onnx
def test_a_call_with_another_signature_is_refused_naming_the_argument():
    program = onnx_export.export(_trace(lambda x: x * 2, eager.zeros(3)))
    with pytest.raises(tracer.SignatureError, match=r"exported for other arguments \(argument x: f32\[3\] -> "
                                                    r"f32\[4\]"):
        program(eager.zeros(4))


@needs_onnx
def test_frozen_python_state_is_exported_with_a_warning_naming_its_line():
    class Flip(eager.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * 2 if self.calls % 2 else -x
    traced = _trace(Flip(), eager.ones(2))
    with pytest.warns(tracer.TracerWarning, match=r"cannot check \(at .*test_onnx_export\.py:\d+\)"):
        onnx_export.export(traced)

    def sign_branch(x):
        return x * 2 if x.sum() > 0 else -x  # a value guard: an extra graph output of the trace, not of the model
    traced = _trace(sign_branch, eager.ones(2))
    assert len(traced.graph.outputs) == 2
    with pytest.warns(tracer.TracerWarning, match=r"cannot check \(at .*test_onnx_export\.py:\d+\)"):
        program = onnx_export.export(traced)
    assert program.output_names == ["out0"]
    np.testing.assert_array_equal(program(-eager.ones(2)), [-2.0, -2.0])  # the traced branch, as warned


# ---------------------------------------------------------------- every forward workload, and the peer


FORWARD = [n for n in workloads.names() if workloads.get(n).kind == "forward"]


@needs_onnx
@pytest.mark.parametrize("name", FORWARD)
def test_every_forward_workload_exports_and_agrees_with_eager_in_onnxruntime(name):
    from compare.modes import MODES, Skip
    wl = workloads.get(name)
    arrays = wl.make_inputs("small")
    try:
        runner = MODES["onnxruntime"].prepare(wl, arrays, "cpu")  # the peer: trace (or script), export, session
    except Skip as e:  # only for a primitive ONNX has no operator for, named with its line
        assert "ONNX export:" in str(e)
        pytest.skip(str(e))
    theirs = _build(wl, eager, arrays, "cpu")
    # DynamicNet traced plainly: its Python counter froze the branch into the model (scripted, it is a cond)
    frozen = wl.expect_divergence and "script" not in wl.tags
    for call in (1, 2):
        got, want = runner.call(), theirs.fn(*theirs.args)
        if frozen and call == 2:
            c = compare_outputs({"out": np.asarray(got)}, {"out": to_numpy(want)})
            assert not c.ok
            continue
        _agree(got, want)


@needs_onnx
def test_onnxruntime_peer_passes_forward_workloads_in_the_harness_and_skips_train_steps_with_the_reason():
    from compare.harness import RunConfig, run
    cfg = RunConfig(workloads=["attention_block", "power_iteration", "mlp_train_sgd"], modes=["onnxruntime"],
                    sizes=["small"], repeats=2, target_s=1e-3)
    df = run(cfg)
    ort = df[df["mode"] == "onnxruntime"]
    status = {(w, m): s for w, m, s in zip(ort.workload, ort.metric, ort.status)}
    for wl in ("attention_block", "power_iteration"):
        assert status[(wl, "abs_err_vs_reference")] == status[(wl, "abs_err_vs_eager")] == "pass"
    run_row = ort[(ort.workload == "mlp_train_sgd") & (ort.metric == "run")]
    assert run_row.status.tolist() == ["skip"] and "forward workloads" in run_row.detail.iloc[0]
    assert {"trace_time", "compile_cold", "time"} <= set(ort[ort.workload == "attention_block"].metric)


def test_onnxruntime_peer_skips_naming_the_extra_when_onnxruntime_is_missing(monkeypatch):
    import sys

    from compare.modes import MODES, Skip
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    wl = workloads.get("softmax")
    with pytest.raises(Skip, match=r"onnxruntime is not installed; pip install graphduel\[onnx\]"):
        MODES["onnxruntime"].prepare(wl, wl.make_inputs("small"), "cpu")
    with pytest.raises(Skip, match="CPU provider"):
        MODES["onnxruntime"].prepare(wl, wl.make_inputs("small"), "cuda")


def test_export_without_onnx_says_which_extra_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"ONNX export needs onnx, which is not installed; pip install "
                                          r"graphduel\[onnx\]"):
        onnx_export.export(_trace(lambda x: x * 2, eager.zeros(2)))
