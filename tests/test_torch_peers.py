"""The torch peers beyond eager PyTorch: torch.compile on train steps (modules and optimizer.step compiled, its
first-call compile time among the one-time costs) and torch.jit.script on each workload's TorchScript twin
(Python control flow kept in the graph), both judged against float64 and eager like every peer."""

from __future__ import annotations

import numpy as np
import pytest

from compare import workloads
from compare.harness import RunConfig, run
from compare.modes import MODES, Skip, _timed_first_calls, prepare_torch_compile
from compare.report import setup_table

torch = pytest.importorskip("torch")

FAST = {"repeats": 3, "warmup": 1, "target_s": 1e-3}
TWINS = [n for n in workloads.names() if workloads.get(n).torchscript is not None]
CONTROL_TWINS = {"rnn_scan": "prim::Loop", "power_iteration": "prim::Loop", "branch_gate": "prim::If",
                 "dynamic_net": "prim::If", "dynamic_net_script": "prim::If", "dynamic_net_cond": "prim::If"}


def _cell(df, workload, mode, metric):
    rows = df[(df.workload == workload) & (df["mode"] == mode) & (df.metric == metric)]
    assert len(rows) == 1, (workload, mode, metric, df[(df.workload == workload) & (df["mode"] == mode)])
    return rows.iloc[0]


# ------------------------------------------------------------------ torch.compile on a train step
def test_a_train_step_compiles_its_modules_and_optimizer_step_and_keeps_backward_eager():
    runner = prepare_torch_compile(workloads.get("mlp_train_sgd"), workloads.get("mlp_train_sgd").make_inputs("small"),
                                   "cpu")  # nothing compiles until the first call: cheap
    (model,), (opt,) = runner.program.models, runner.program.optimizers
    assert model._compiled_call_impl is not None  # Module.compile(): forward, and backward through AOTAutograd
    assert opt.step.__name__ == "compiled_step" and hasattr(opt.step, "_torchdynamo_orig_callable")


def test_torch_compile_on_a_small_train_step_is_correct_and_its_compile_time_is_a_one_time_cost():
    df = run(RunConfig(workloads=["mlp_train_sgd"], modes=["eager", "torch.compile"], sizes=["small"], **FAST))
    assert _cell(df, "mlp_train_sgd", "torch.compile", "run").status == "ok"
    ref = _cell(df, "mlp_train_sgd", "torch.compile", "abs_err_vs_reference")
    assert ref.status == "pass" and ref.value < 1e-5  # loss, gradients and parameters after the step vs float64
    assert _cell(df, "mlp_train_sgd", "torch.compile", "abs_err_vs_eager").status == "pass"  # two steps
    compile_s = _cell(df, "mlp_train_sgd", "torch.compile", "compile_cold").value
    first_s = _cell(df, "mlp_train_sgd", "torch.compile", "first_call").value
    step_s = _cell(df, "mlp_train_sgd", "torch.compile", "time").value
    # compiling costs more than a step; how much more depends on Inductor's caches and the machine's load
    assert 0 < compile_s < first_s and step_s < compile_s
    header, body = setup_table(df)
    (row,) = [r for r in body if r[0][0] == "mlp_train_sgd / small / torch.compile"]
    assert row[header.index("compile_cold")][0] not in ("", "-")


def test_a_torch_compile_failure_in_the_first_call_of_a_train_step_is_a_skip_with_the_measured_error():
    from torch._dynamo.exc import TorchDynamoException

    def fails(*args):
        raise TorchDynamoException("Inductor cannot lower this")
    setup: dict = {}
    call = _timed_first_calls(torch, fails, workloads.get("mlp_train_sgd"), setup, skips=True)
    with pytest.raises(Skip, match="torch.compile fails on this train step .*Inductor cannot lower this"):
        call()


def test_compile_time_is_the_first_call_less_a_steady_call(monkeypatch):
    import types

    import compare.modes as modes
    # a fake clock (a sleeping step overshoots under load): call 1 takes 0.5 s, call 2 0.01 s, call 3 is not timed
    ticks = iter([0.0, 0.5, 1.0, 1.01])
    monkeypatch.setattr(modes, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    setup: dict = {}
    call = _timed_first_calls(torch, lambda: 1, workloads.get("mlp_train_sgd"), setup, skips=True)
    call()
    assert setup["compile_cold"] == 0.5  # until a steady call is seen: the whole first call
    call()
    assert abs(setup["compile_cold"] - 0.49) < 1e-12
    call()
    assert abs(setup["compile_cold"] - 0.49) < 1e-12  # later calls are timed by the harness, not here


def test_torch_compile_stays_out_of_quick_and_says_why():
    why = RunConfig.quick().excluded["torch.compile"]
    assert "train step" in why and "--peers torch.compile" in why
    assert "torch.jit.script" not in RunConfig.quick().excluded and MODES["torch.jit.script"].quick


# ------------------------------------------------------------------ torch.jit.script on the twins
def test_the_control_flow_workloads_and_forward_workloads_have_twins():
    assert set(CONTROL_TWINS) <= set(TWINS)
    assert {"mlp_forward", "tanh_gelu", "softmax"} <= set(TWINS)


@pytest.mark.parametrize("name", TWINS)
def test_torch_jit_script_runs_the_twin_and_agrees_with_float64_and_eager(name):
    df = run(RunConfig(workloads=[name], modes=["eager", "torch.jit.script"], sizes=["small"], **FAST))
    assert _cell(df, name, "torch.jit.script", "run").status == "ok"
    ref = _cell(df, name, "torch.jit.script", "abs_err_vs_reference")
    assert ref.status == "pass", ref.detail
    eager_row = _cell(df, name, "torch.jit.script", "abs_err_vs_eager")  # two calls: DynamicNet's branch flips
    assert eager_row.status == "pass", eager_row.detail
    assert _cell(df, name, "torch.jit.script", "compile_cold").value > 0  # the scripting, a one-time cost


@pytest.mark.parametrize("name", sorted(CONTROL_TWINS))
def test_the_scripted_twin_keeps_python_control_flow_as_graph_control_flow(name):
    wl = workloads.get(name)
    prog = wl.torchscript(torch, wl.make_inputs("small"))
    scripted = torch.jit.script(prog.fn)
    graph = str(scripted.graph if hasattr(scripted, "graph") else scripted.forward.graph)
    assert CONTROL_TWINS[name] in graph


def test_the_scripted_dynamic_net_flips_its_branch_where_torch_jit_trace_freezes_it():
    df = run(RunConfig(workloads=["dynamic_net"], modes=["eager", "torch.jit.trace", "torch.jit.script"],
                       sizes=["small"], **FAST))
    assert _cell(df, "dynamic_net", "torch.jit.script", "abs_err_vs_eager").status == "pass"
    assert _cell(df, "dynamic_net", "torch.jit.trace", "abs_err_vs_eager").status == "fail"


def test_power_iterations_scripted_trip_count_follows_the_data():
    wl = workloads.get("power_iteration")
    arrays = wl.make_inputs("small")
    prog = wl.torchscript(torch, arrays)
    scripted = torch.jit.script(prog.fn)
    _, v_loose = scripted(*prog.args, 1e-1)
    _, v_tight = scripted(*prog.args)
    reference = wl.run_reference(arrays)["vector"]
    assert np.abs(v_tight.numpy() - reference).max() < np.abs(v_loose.numpy() - reference).max()


@pytest.mark.parametrize("name", ["layer_norm", "mlp_train_sgd"])
def test_a_workload_without_a_twin_is_skipped_with_the_reason(name):
    df = run(RunConfig(workloads=[name], modes=["eager", "torch.jit.script"], sizes=["small"], **FAST))
    row = _cell(df, name, "torch.jit.script", "run")
    assert row.status == "skip" and "no TorchScript twin written for this workload" in row.detail
