"""Timelines: one call per mode as slices (eager ops and backward nodes, traced IR nodes, compiled kernels and
host steps), the Chrome trace file, the matplotlib picture, and that profiling leaves the engine untouched."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import eager
from compare.modes import MODES
from compare.timeline import Timeline, profile, timeline_figure, write_timeline_figures, write_trace
from compare.workloads import get


@pytest.fixture(scope="module")
def eager_sgd() -> Timeline:
    return profile("mlp_train_sgd", "eager", "small")


def _inside(inner, outer) -> bool:
    return outer.start - 1e-9 <= inner.start and inner.end <= outer.end + 1e-9


def test_eager_has_a_slice_per_op_with_shapes_and_the_users_source_line(eager_sgd):
    ops = [s for s in eager_sgd.slices if s.cat == "op"]
    assert [s.name for s in ops[:3]] == ["linear", "relu", "linear"]
    first = ops[0]
    assert first.args["inputs"] == "float32[32, 64], float32[128, 64], float32[128]"
    assert first.args["output"] == "float32[32, 128]"
    assert first.args["source"].startswith("mlp.py:")  # the workload's line, not the engine's or the profiler's
    call = next(s for s in eager_sgd.slices if s.cat == "call")
    assert all(_inside(s, call) and s.dur >= 0 for s in eager_sgd.slices)
    assert eager_sgd.busy() < eager_sgd.duration  # the gaps: Python, dispatch, autograd bookkeeping


def test_eager_has_a_slice_per_backward_node_inside_backward_and_the_optimizer_and_modules(eager_sgd):
    by_cat = {}
    for s in eager_sgd.slices:
        by_cat.setdefault(s.cat, []).append(s)
    (backward,) = by_cat["autograd"]
    nodes = by_cat["backward"]
    # mse_loss is sub, mul, sum, div; then Linear-ReLU-Linear, walked from the loss back
    assert [s.name for s in nodes] == ["DivBackward", "SumBackward", "MulBackward", "SubBackward", "LinearBackward",
                                       "ReluBackward", "LinearBackward"]
    assert all(_inside(s, backward) for s in nodes)
    assert [s.name for s in by_cat["optimizer"]] == ["SGD.zero_grad", "SGD.step"]
    assert [s.name for s in by_cat["module"]] == ["Sequential", "Linear", "ReLU", "Linear"]


def test_profiling_leaves_the_engine_as_it_was_and_the_step_computes_the_same():
    from eager.autograd.engine import Node
    from eager.nn import Module
    from eager.primitives import PRIMITIVES
    from tracer.codegen import P
    impls = {n: p.impl for n, p in PRIMITIVES.items()}
    methods = (Node.backward, Module.__call__, eager.Tensor.backward, eager.optim.Adam.step)
    wl = get("mlp_train_adam")
    arrays = wl.make_inputs("small")
    plain = MODES["eager"].prepare(wl, arrays, "cpu")
    for _ in range(3):
        plain.call()
    profiled = profile(wl, "eager", "small")  # 2 warm-up calls and the profiled one: 3 steps
    assert {n: p.impl for n, p in PRIMITIVES.items()} == impls
    assert (Node.backward, Module.__call__, eager.Tensor.backward, eager.optim.Adam.step) == methods
    assert not [k for k, v in vars(P).items() if hasattr(v, "__wrapped__")]
    assert "Adam.step" in {s.name for s in profiled.slices}
    x = eager.ones(3)
    x.add_(1.0)  # the in-place fast path reads impl.ufunc: still there (and wrapped impls keep it too)
    assert x.tolist() == [2.0, 2.0, 2.0]


def test_a_profiled_eager_step_trains_exactly_as_an_unprofiled_one(monkeypatch):
    wl = get("mlp_train_sgd")
    arrays = wl.make_inputs("small")
    plain = MODES["eager"].prepare(wl, arrays, "cpu")
    for _ in range(3):
        plain.call()
    seen = {}
    prepare = MODES["eager"].prepare

    def keep(wl, arrays, device):
        seen["runner"] = prepare(wl, arrays, device)
        return seen["runner"]
    monkeypatch.setitem(MODES, "eager", MODES["eager"].__class__(**{**MODES["eager"].__dict__, "prepare": keep}))
    profile(wl, "eager", "small")
    want, got = plain.state(), seen["runner"].state()
    assert sorted(want) == sorted(got)
    for k in want:
        np.testing.assert_array_equal(got[k].detach().numpy(), want[k].detach().numpy())


def test_traced_has_a_slice_per_ir_node_of_the_replayed_graph_in_order():
    tl = profile("mlp_train_sgd", "traced", "small")
    nodes = [s for s in tl.slices if s.cat == "node"]
    wl = get("mlp_train_sgd")
    runner = MODES["traced"].prepare(wl, wl.make_inputs("small"), "cpu")
    runner.call()
    graph = runner.handle.graph
    assert [s.name for s in nodes] == [n.op for n in graph.calls]
    assert nodes[1].args["node"].startswith("%") and "matmul" in nodes[1].args["node"]
    assert nodes[1].args["source"].startswith("mlp.py:")
    glue = [s.name for s in tl.slices if s.cat == "glue"]
    assert glue == ["guards + gather inputs", "write back state + wrap outputs"]


def test_compiled_has_a_slice_per_kernel_and_host_step_named_as_the_compiler_names_them():
    tl = profile("mlp_train_adam", "compiled", "small")
    wl = get("mlp_train_adam")
    runner = MODES["compiled"].prepare(wl, wl.make_inputs("small"), "cpu")
    runner.call()
    compiled = runner.handle
    kernels = [s for s in tl.slices if s.cat == "kernel"]
    assert [s.name for s in kernels] == [k.name for k in compiled.kernels]
    steps = [s for s in tl.slices if s.cat in ("kernel", "library", "host")]
    assert len(steps) == len(compiled.lowered.program.steps)
    assert all(s.args["fused ops"] == len(s.args["ops"].split(", ")) for s in kernels)
    assert {s.name for s in steps if s.cat == "library"} == {"library:matmul"}
    graph = next(s for s in tl.slices if s.cat == "graph")
    assert all(_inside(s, graph) for s in steps)


def test_write_trace_writes_chrome_trace_events_one_process_per_mode(tmp_path):
    path = write_trace("softmax", ["eager", "compiled"], "small", tmp_path / "trace.json")
    data = json.loads(path.read_text())
    assert data["displayTimeUnit"] == "ms"
    events = data["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {1: "eager: softmax (small, cpu)", 2: "compiled: softmax (small, cpu)"}
    complete = [e for e in events if e["ph"] == "X"]
    assert all(isinstance(e["ts"], float | int) and e["dur"] >= 0 and e["tid"] == 1 for e in complete)
    assert {e["cat"] for e in complete if e["pid"] == 1} >= {"call", "op"}
    assert {e["cat"] for e in complete if e["pid"] == 2} >= {"call", "kernel", "graph", "glue"}
    assert set(data["otherData"]) == {"eager", "compiled"}
    assert data["otherData"]["compiled"]["summary"].startswith("compiled: ")


def test_a_peer_or_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="profile: mode must be one of eager, traced, compiled .*not 'torch'"):
        profile("softmax", "torch")
    with pytest.raises(KeyError, match="unknown workload 'nope'"):
        profile("nope")


def test_timeline_figure_draws_one_row_per_mode_on_one_time_axis(eager_sgd):
    compiled = profile("mlp_train_sgd", "compiled", "small")
    fig = timeline_figure("mlp_train_sgd", timelines=[eager_sgd, compiled])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["eager", "compiled"]
    eager_y, compiled_y = ax.get_yticks()
    assert eager_y > compiled_y  # the first mode on top
    assert ax.get_xlim()[1] >= max(eager_sgd.duration, compiled.duration) * 1e3
    texts = [t.get_text() for t in ax.texts]
    assert any(t.strip().startswith("eager: ") and "ops" in t for t in texts)
    assert any(t.strip().startswith("compiled: ") and "kernels" in t for t in texts)


def test_write_timeline_figures_draws_each_train_workload_that_ran_and_says_why_not_for_the_others(tmp_path):
    def run_row(workload, kind, mode, status):
        return {"workload": workload, "kind": kind, "size": "small", "mode": mode, "metric": "run",
                "status": status, "device": "cpu"}
    df = pd.DataFrame([run_row("mlp_train_sgd", "train", "eager", "ok"),
                       run_row("mlp_train_sgd", "train", "compiled", "ok"),
                       run_row("mlp_train_adam", "train", "eager", "ok"),
                       run_row("mlp_train_adam", "train", "compiled", "error"),
                       run_row("user_step", "train", "eager", "ok"), run_row("user_step", "train", "compiled", "ok"),
                       run_row("softmax", "forward", "eager", "ok")])
    out = write_timeline_figures(df, tmp_path)
    assert out["mlp_train_sgd"] == tmp_path / "timeline_mlp_train_sgd.png"
    assert (tmp_path / "timeline_mlp_train_sgd.png").stat().st_size > 0
    assert out["mlp_train_adam"] == "not drawn: eager and compiled did not both run"
    assert out["user_step"].startswith("not drawn: not a registered workload")
    assert "softmax" not in out


def test_docstring_examples_run():
    import doctest

    import compare.timeline as module
    assert doctest.testmod(module).failed == 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode, work", [("eager", "op"), ("compiled", "kernel")])
def test_on_cuda_each_slice_is_synchronised_and_the_compiled_steps_are_its_kernels(mode, work):
    tl = profile("mlp_train_sgd", mode, "small", device="cuda")
    assert tl.device == "cuda" and any(s.cat == work for s in tl.slices)
    assert all(s.dur >= 0 for s in tl.slices) and tl.busy() <= tl.duration
