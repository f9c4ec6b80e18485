"""A traced graph reads like a program: printout, table, DOT, generated `.code` (which runs), save/load."""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import pytest

import eager
import eager.nn.functional as F
import tracer
from eager import nn, optim
from tracer.codegen import compile_source
from tracer.executor import Interpreter, StaticExecutor


def mlp():
    eager.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_printout_lists_one_line_per_op_with_types_and_source_lines():
    line = inspect.currentframe().f_lineno + 1
    traced = tracer.trace(lambda x, w: (x @ w).relu().sum(), eager.ones(3, 4), eager.ones(4, 5))
    text = str(traced.graph)
    lines = text.splitlines()
    assert lines[0] == "graph(%0: f32[3,4] x, %1: f32[4,5] w):"
    assert lines[1] == f"  %2: f32[3,5] = matmul(%0, %1)    # test_tracer_program.py:{line}"
    assert lines[2] == f"  %3: f32[3,5] = relu(%2)    # test_tracer_program.py:{line}"
    assert "= sum(%3, axes=(0, 1), keepdims=False)" in lines[3]
    assert lines[-1] == "  return (%4)"


def test_table_and_dot_describe_every_node():
    traced = tracer.trace(mlp(), eager.ones(2, 4))
    table = traced.graph.table()
    assert list(table.columns) == ["id", "op", "args", "params", "shape", "dtype", "name", "source"]
    assert len(table) == len(traced.graph.nodes)
    assert table.iloc[1]["name"] == "0.weight" and table.iloc[1]["op"] == "placeholder"
    assert (table["op"] == "matmul").sum() == 2
    dot = traced.graph.to_dot()
    assert dot.startswith("digraph graph_ir {") and dot.count("->") >= len(traced.graph.calls)


def test_generated_code_is_readable_and_runs_to_the_same_result():
    model = mlp()
    traced = tracer.trace(model, eager.ones(2, 4))
    code = traced.code
    assert "def forward(xp, constants, input, p_0_weight, p_0_bias, p_2_weight, p_2_bias):" in code
    assert "P.matmul(xp, input, v5)" in code and "# f32[2,8]  test_tracer_program.py:" in code
    assert "del " in code  # values are freed after their last use
    forward = compile_source(code, "test")
    x = eager.randn(2, 4)
    arrays = [x._data] + [p._data for p in model.parameters()]
    (out,) = forward(np, {}, *arrays)
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-6)


def test_interpreter_and_generated_code_agree_and_interpreter_names_failing_node():
    traced = tracer.trace(lambda a, b: (a * b).exp().sum(dim=0), eager.ones(3, 2), eager.ones(3, 2))
    arrays = [np.full((3, 2), 0.5, np.float32), np.arange(6, dtype=np.float32).reshape(3, 2)]
    fast = StaticExecutor(traced.graph).run(arrays)
    slow = Interpreter(traced.graph).run(arrays)
    np.testing.assert_array_equal(fast[0], slow[0])
    with pytest.raises(tracer.ExecutionError, match=r"while executing %2: f32\[3,2\] = mul\(%0, %1\).*"
                                                    r"test_tracer_program.py"):
        StaticExecutor(traced.graph).run([np.ones((3, 2), np.float32), np.ones((4, 2), np.float32)])


def test_lower_contract_gets_placeholder_arrays_and_returns_outputs_then_updates():
    seen = []

    class Recording:
        def __init__(self, graph):
            self.inner = StaticExecutor(graph)
            self.graph = graph

        def run(self, arrays):
            seen.append([n.name for n in self.graph.placeholders])
            out = self.inner.run(arrays)
            assert len(out) == len(self.graph.outputs) + len(self.graph.updates)
            return out

    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    traced = tracer.trace(step, eager.ones(2, 4), lower=Recording)
    traced(eager.ones(2, 4))
    assert seen[-1] == ["x", "0.weight", "0.bias", "2.weight", "2.bias"]


def train_step_and_data():
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return {"loss": loss, "scale": 2}

    rng = np.random.default_rng(0)
    x, y = eager.tensor(rng.standard_normal((5, 4)), dtype=eager.float32), eager.zeros(5, 2)
    return step, x, y, model


def test_save_and_load_round_trip_runs_without_the_python_source(tmp_path):
    step, x, y, model = train_step_and_data()
    traced = tracer.trace(step, x, y)
    traced(x, y)  # after one call the optimizer holds its moments: the saved program is the steady-state step
    path = tmp_path / "step"
    traced.save(path)
    doc = json.loads((path / "graph.json").read_text())
    assert doc["format"] == "graphduel.graph" and doc["version"] == 2
    assert sorted(os.listdir(path)) == ["arrays.npz", "graph.json"]
    loaded = tracer.load(path)
    assert str(loaded.graph) == str(traced.graph)
    for _ in range(3):
        a, b = loaded(x, y), traced(x, y)
        assert a["scale"] == b["scale"] == 2
        np.testing.assert_allclose(a["loss"].numpy(), b["loss"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(loaded.params["0.weight"].numpy(), model[0].weight.detach().numpy(), rtol=1e-6)
    assert set(loaded.written) == {"0.weight.grad", "0.bias.grad", "2.weight.grad", "2.bias.grad"}


def test_loaded_graph_keeps_getitem_keys_dtypes_and_scalars(tmp_path):
    def fn(x, idx):
        y = x[1:, None, ..., ::2] * np.float64(0.5)
        z = x.to(eager.float64)[idx]
        return y.sum() + z.sum().to(eager.float32), x[x > 0].sum()

    x = eager.tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5)
    idx = eager.tensor([1, 0, 1])
    with pytest.warns(tracer.TracerWarning):
        traced = tracer.trace(fn, x, idx)
    traced.save(tmp_path / "g")
    loaded = tracer.load(tmp_path / "g")
    for a, b in zip(loaded(x, idx), fn(x, idx)):
        np.testing.assert_allclose(a.numpy(), b.numpy())
    assert loaded.code == traced.code
