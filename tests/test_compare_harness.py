"""The harness: tidy rows with machine metadata, stated skips, errors as rows, divergences located,
tolerances enforced, timing statistics, and reports that stand on their own."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest

from compare import modes as modes_module
from compare import timing, workloads
from compare.correctness import compare_outputs
from compare.harness import COLUMNS, GUARD_METRICS, RunConfig, correctness_failures, run, run_cell, summary_line
from compare.modes import MODES, Mode, Runner, Skip
from compare.report import correctness_table, guard_table, load_results, timing_table, write_report

FAST = {"repeats": 3, "warmup": 1, "target_s": 1e-3}


@pytest.fixture(scope="module")
def small_run() -> pd.DataFrame:
    return run(RunConfig(workloads=["softmax", "mlp_train_sgd"], modes=["eager", "numpy", "jax.jit"],
                         sizes=["small"], **FAST))


def test_results_are_tidy_with_machine_and_versions(small_run):
    df = small_run
    assert list(df.columns) == COLUMNS
    assert not df.duplicated(["workload", "size", "mode", "metric"]).any()  # one row per measurement
    meta = df.attrs["meta"]
    for key in ("platform", "cpu", "numpy", "jax", "commit", "date", "command"):
        assert meta.get(key), key
    time_rows = df[df.metric == "time"]
    assert (time_rows.value > 0).all() and time_rows.samples.map(len).eq(3).all()


def test_every_cell_is_checked_against_the_reference_and_eager(small_run):
    df = small_run
    assert correctness_failures(df).empty
    sgd = df[(df.workload == "mlp_train_sgd") & (df["mode"] == "jax.jit") & (df.metric == "abs_err_vs_reference")]
    assert "grad:" in sgd.detail.iloc[0] or sgd.status.iloc[0] == "pass"
    assert set(df[df["mode"] == "jax.jit"].metric) >= {"abs_err_vs_reference", "abs_err_vs_eager", "first_call",
                                                        "time", "time_iqr", "speedup_vs_eager"}


def test_a_forward_only_peer_on_a_train_step_is_skipped_with_its_reason(small_run):
    row = small_run[(small_run.workload == "mlp_train_sgd") & (small_run["mode"] == "numpy")]
    assert row.status.tolist() == ["skip"] and "forward only" in row.detail.iloc[0]


def _with_mode(monkeypatch, name, family, prepare):
    monkeypatch.setitem(MODES, name, Mode(name, family, prepare))


def test_a_missing_peer_is_skipped_with_how_to_install_it_and_a_broken_mode_is_an_error_row(monkeypatch):
    def missing(wl, arrays, device):
        modes_module._import("surely_not_a_module_graphduel", "pip install it")

    def broken(wl, arrays, device):
        raise RuntimeError("boom")
    _with_mode(monkeypatch, "missing", "peer", missing)
    _with_mode(monkeypatch, "broken", "peer", broken)
    df = run(RunConfig(workloads=["softmax"], modes=["eager", "missing", "broken"], sizes=["small"], **FAST))
    runs = df[df.metric == "run"].set_index("mode")
    assert runs.status.to_dict() == {"eager": "ok", "missing": "skip", "broken": "error"}
    assert runs.detail["missing"] == "surely_not_a_module_graphduel is not installed; pip install it"
    assert "RuntimeError: boom" in runs.detail["broken"]


@pytest.mark.parametrize("mode, package", [("traced", "tracer"), ("compiled", "compiler"), ("eager", "eager")])
def test_our_own_package_failing_to_import_is_an_error_row_never_a_skip(monkeypatch, mode, package):
    # None in sys.modules makes the next import of the package raise ModuleNotFoundError naming it: exactly
    # what a missing optional peer raises, so only the package's ownership can tell the two apart
    monkeypatch.setitem(sys.modules, package, None)
    rows = run_cell(workloads.get("softmax"), "small", RunConfig(modes=[mode], sizes=["small"], **FAST))
    (row,) = [r for r in rows if r["metric"] == "run" and r["mode"] == mode]
    assert row["status"] == "error", row
    assert f"graphduel's own module {package} failed to import" in row["detail"] and "not a skip" in row["detail"]


def test_a_peer_that_is_installed_but_broken_is_an_error_not_a_skip(monkeypatch, tmp_path):
    (tmp_path / "graphduel_broken_peer.py").write_text("import graphduel_missing_dependency_of_the_peer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="graphduel_broken_peer is installed but does not import"):
        modes_module._import("graphduel_broken_peer", "pip install it")
    with pytest.raises(Skip, match="^graphduel_absent_peer is not installed; pip install it$"):
        modes_module._import("graphduel_absent_peer", "pip install it")


class _FakeTrace:
    """Replays the first call forever, as a static graph without guards replays the branch it recorded."""

    assumptions = ["seeds.py:93: self.counter % 2 == 0 was False when traced"]

    def __init__(self, prog):
        self.prog, self.first = prog, None

    def __call__(self, *args):
        if self.first is None:
            self.first = self.prog.fn(*args)
        return self.first

    def check(self, *args):
        return type("Report", (), {"ok": False, "divergences": ["%4 = mul(%0, 2.0)    # seeds.py:96"]})()


def _fake_static_replay(monkeypatch, family):
    import eager

    def fake_traced(wl, arrays, device):
        prog = wl.build(eager, arrays)
        fake = _FakeTrace(prog)
        return Runner(lambda: fake(*prog.args), handle=fake, program=prog, setup={"trace_time": 1e-3},
                      structure={"ir_nodes": 7, "source_hash": "abc"})
    _with_mode(monkeypatch, "fake_traced", family, fake_traced)
    return run(RunConfig(workloads=["dynamic_net"], modes=["eager", "fake_traced"], sizes=["small"], **FAST))


def test_an_unguarded_static_replay_of_dynamic_net_in_our_modes_is_a_located_failure_not_expected(monkeypatch):
    df = _fake_static_replay(monkeypatch, "ours")
    vs_eager = df[(df["mode"] == "fake_traced") & (df.metric == "abs_err_vs_eager")].iloc[0]
    assert vs_eager.status == "fail" and not vs_eager.expected_divergence  # our modes guard: this is a bug
    assert "call 2" in vs_eager.detail and "first diverging node" in vs_eager.detail and "%4 = mul" in vs_eager.detail
    assert "self.counter" in vs_eager.detail
    vs_ref = df[(df["mode"] == "fake_traced") & (df.metric == "abs_err_vs_reference")].iloc[0]
    assert vs_ref.status == "pass"  # the first call took the branch the reference computes
    _, body = correctness_table(df)
    assert ("FAIL vs eager", "fail") in body[0]
    assert df[df.metric == "break_even_calls"].shape[0] == 1 and (df.metric == "ir_nodes").any()
    assert "1 with a correctness failure (0 expected" in summary_line(df)


def test_a_peer_that_freezes_dynamic_net_is_an_expected_divergence(monkeypatch):
    df = _fake_static_replay(monkeypatch, "peer")
    vs_eager = df[(df["mode"] == "fake_traced") & (df.metric == "abs_err_vs_eager")].iloc[0]
    assert vs_eager.status == "fail" and vs_eager.expected_divergence
    assert "divergence: Python state (self.counter) picks the branch" in vs_eager.detail
    _, body = correctness_table(df)
    assert ("diverged (expected)", "expected") in body[0]
    assert "1 with a correctness failure (1 expected" in summary_line(df)


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_dynamic_net_in_our_static_modes_agrees_with_eager_by_retracing_and_the_report_counts_it(mode, tmp_path):
    df = run(RunConfig(workloads=["dynamic_net"], modes=["eager", mode], sizes=["small"], **FAST))
    assert correctness_failures(df).empty, correctness_failures(df)[["mode", "metric", "detail"]].to_string()
    counts = df[(df["mode"] == mode) & df.metric.isin(GUARD_METRICS)].set_index("metric")
    # every call after the first finds model.counter at a value no program was traced for: a guard fails and
    # the call retraces (up to cache_size programs, then it runs eagerly)
    calls = counts.value["retraces"] + counts.value["eager_fallbacks"]
    assert counts.value["retraces"] >= 1 and counts.value["guard_failures"] == calls
    assert "model.counter" in counts.detail["retraces"] and "seeds.py:" in counts.detail["retraces"]
    assert df[(df["mode"] == "eager") & df.metric.isin(GUARD_METRICS)].empty  # eager has nothing to guard
    header, body = guard_table(df)
    assert header[1:4] == ["retraces", "guard failures", "eager fallbacks"]
    assert body[0][0][0] == f"dynamic_net / small / {mode}" and int(body[0][1][0]) == counts.value["retraces"]
    md = (write_report(df, tmp_path) / "report.md").read_text()
    assert "## Retraces and guard failures" in md and "model.counter" in md
    assert "retraced" in summary_line(df)


def test_a_wrong_answer_is_never_shown_or_plotted_as_a_speedup(monkeypatch):
    from compare.plots import speedup_figure
    df = _fake_static_replay(monkeypatch, "peer")
    _, body = timing_table(df, "small")
    cell = dict(zip(["workload", "eager", "fake_traced"], body[0]))["fake_traced"]
    assert cell[1] == "fail" and "wrong answer: no speedup" in cell[0] and "x)" not in cell[0]
    fig = speedup_figure(df, "small")
    ax = fig.axes[0]
    assert all(np.isnan(p.get_width()) for p in ax.patches)  # no bar drawn for the wrong cell
    assert any("wrong answer" in t.get_text() for t in ax.texts)
    good = df[df.metric != "abs_err_vs_eager"]  # without the failing row, the same speedup is drawn
    good = good[good.metric != "rel_err_vs_eager"]
    drawn = speedup_figure(good, "small").axes[0]
    assert [p.get_width() for p in drawn.patches] == pytest.approx(
        df[(df.metric == "speedup_vs_eager") & (df["mode"] == "fake_traced")].value.tolist())


def test_tolerances_catch_wrong_values_shapes_nans_and_missing_outputs():
    want = {"a": np.ones(4), "b": np.zeros(2)}
    assert compare_outputs({"a": np.ones(4, np.float32), "b": np.zeros(2, np.float32)}, want).ok
    assert not compare_outputs({"a": np.ones(4, np.float32) * 1.01, "b": np.zeros(2)}, want).ok
    assert "shape" in compare_outputs({"a": np.ones(3), "b": np.zeros(2)}, want).summary()
    assert "NaN" in compare_outputs({"a": np.full(4, np.nan), "b": np.zeros(2)}, want).summary()
    assert "missing" in compare_outputs({"a": np.ones(4)}, want).summary()


def test_timing_statistics_and_break_even():
    samples = timing.measure({"x": lambda: sum(range(50)), "y": lambda: sum(range(500))}, repeats=4,
                             target_s=1e-4)
    assert all(len(v) == 4 for v in samples.values())
    assert timing.summarize(samples["y"])["median"] > timing.summarize(samples["x"])["median"]
    assert timing.summarize([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median": 3.0, "iqr": 2.0, "min": 1.0}
    assert timing.break_even(setup_s=1.0, t_mode=0.1, t_eager=0.3) == 5
    assert math.isinf(timing.break_even(setup_s=1.0, t_mode=0.3, t_eager=0.1))


def test_report_files_are_self_contained_and_reload(small_run, tmp_path):
    out = write_report(small_run, tmp_path / "r")
    for name in ("report.md", "report.html", "results.csv", "results.json", "speedup_small.png"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<style>" in page and 'src="http' not in page
    md = (out / "report.md").read_text()
    for fact in ("AMD" if "AMD" in small_run.attrs["meta"]["cpu"] else small_run.attrs["meta"]["cpu"],
                 "command", "numpy", "date", "commit"):
        assert fact in md
    again = load_results(out / "results.json")
    assert again.shape == small_run.shape and again.attrs["meta"]["cpu"] == small_run.attrs["meta"]["cpu"]
    assert json.loads((out / "results.json").read_text())["meta"]["config"]["sizes"] == ["small"]
    assert pd.read_csv(out / "results.csv").shape[0] == small_run.shape[0]


def test_scaling_plot_appears_with_two_sizes(tmp_path):
    df = run(RunConfig(workloads=["softmax"], modes=["eager", "numpy"], sizes=["small", "medium"], **FAST))
    out = write_report(df, tmp_path)
    assert (out / "scaling.png").exists() and (out / "speedup_medium.png").exists()


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_our_static_modes_agree_with_eager(mode):
    names = ["tanh_gelu", "layer_norm", "softmax", "attention_block", "mlp_forward", "mlp_train_sgd",
             "mlp_train_adam", "adam_update", "classifier_train", "seed_add_mul", "dynamic_net", "module_list",
             "gan_step", "custom_sigmoid"]
    df = run(RunConfig(workloads=names, modes=["eager", mode], sizes=["small"], **FAST))
    runs = df[(df.metric == "run") & (df["mode"] == mode)]
    assert (runs.status == "ok").all(), runs[runs.status != "ok"][["workload", "detail"]].to_string()
    fails = correctness_failures(df)
    assert fails.empty, fails[["workload", "mode", "metric", "detail"]].to_string()


def test_compiled_mode_with_its_cuda_kernels_under_the_emulator_matches_float64_and_eager(monkeypatch):
    """Every workload's CUDA kernels (the cuda backend's source and launches, run by the SIMT emulator on this
    CPU) pass the same correctness cells as the C kernels: outputs, gradients and new state."""
    import shutil

    import compiler
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the SIMT emulator cannot build")
    backends = []
    real = compiler.compile

    def simt_compile(fn, *args, **kwargs):
        compiled = real(fn, *args, backend="simt", **kwargs)
        backends.append(compiled.backend)
        return compiled
    monkeypatch.setattr(compiler, "compile", simt_compile)
    from compare import workloads
    names = workloads.names()  # dynamic_net included: its retraces compile the same kernels under the emulator
    df = run(RunConfig(workloads=names, modes=["eager", "compiled"], sizes=["small"], **FAST))
    runs = df[(df.metric == "run") & (df["mode"] == "compiled")]
    assert len(runs) == len(names) and (runs.status == "ok").all(), runs[runs.status != "ok"][["workload", "detail"]]
    assert set(backends) == {"simt"}
    fails = correctness_failures(df)
    assert fails.empty, fails[["workload", "mode", "metric", "detail"]].to_string()


@pytest.mark.parametrize("module", ["compare.correctness", "compare.timing", "compare.machine", "compare.modes",
                                    "compare.gate", "compare.plots", "compare.workloads", "compare.workloads.registry",
                                    "compare.workloads.npref", "compare.harness", "compare.report", "compare.explain"])
def test_docstring_examples_run(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0


def test_a_vs_eager_difference_on_call_one_is_rounding_when_both_pass_the_float64_judge():
    from compare.correctness import compare_outputs
    from compare.harness import _Cell, _judged_by_reference
    reference = {"w": np.array([0.5, 0.0])}
    eager_cell, cell = _Cell(runner=None), _Cell(runner=None)
    eager_cell.calls, cell.calls = [{"w": np.float32([0.5, 9e-5])}], [{"w": np.float32([0.5, -9e-5])}]
    vs_eager = compare_outputs(cell.calls[0], eager_cell.calls[0])
    assert not vs_eager.ok  # 1.8e-4 apart: beyond float32's atol between the two
    assert _judged_by_reference([(1, vs_eager)], cell, eager_cell, reference)  # but each is 9e-5 from float64
    cell.calls = [{"w": np.float32([0.5, 0.01])}]  # genuinely wrong: fails the judge
    assert not _judged_by_reference([(1, vs_eager)], cell, eager_cell, reference)
    cell.calls = [{"w": np.float32([0.5, -9e-5])}]
    assert not _judged_by_reference([(2, vs_eager)], cell, eager_cell, reference)  # no judge for later calls


# ---------------------------------------------------------------- the report's Control flow section

CONTROL_FLOW = {"rnn_scan": "scan", "power_iteration": "while_loop", "branch_gate": "cond"}
FLOW_MODES = ["eager", "traced", "compiled", "numpy", "jax.jit"]


@pytest.fixture(scope="module")
def control_flow_run() -> pd.DataFrame:
    return run(RunConfig(workloads=[*CONTROL_FLOW, "dynamic_net", "softmax"], modes=FLOW_MODES, sizes=["small"],
                         **FAST))


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:end if end >= 0 else None]


def test_the_report_has_a_control_flow_section_with_each_control_flow_workload_in_every_mode(control_flow_run,
                                                                                             tmp_path):
    md = (write_report(control_flow_run, tmp_path) / "report.md").read_text()
    section = _section(md, "Control flow")
    assert md.index("## Control flow") < md.index("## Time per call")
    assert "| workload / size / mode | correct | retraces | guard failures | time per call | static approach |" \
        in section
    assert "softmax" not in section  # only workloads with data-dependent control flow
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines()
             if line.startswith("| ") and " / small / " in line]
    rows = {row[0]: row[1:] for row in cells}
    for wl, op in CONTROL_FLOW.items():
        for mode in FLOW_MODES:
            correct, retraces, guard_failures, t, approach = rows[f"{wl} / small / {mode}"]
            assert correct == "pass", (wl, mode, correct)
            assert t.endswith("s") and t != "-"  # a measured time per call
            if mode in ("traced", "compiled"):
                assert (retraces, guard_failures) == ("0", "0")  # the node decides: nothing to retrace
            else:
                assert (retraces, guard_failures) == ("-", "-")  # not ours to count
        assert f"one {op} node with" in rows[f"{wl} / small / traced"][-1]
        assert "fused kernels" in rows[f"{wl} / small / compiled"][-1]
        assert rows[f"{wl} / small / jax.jit"][-1] == f"lax.{op} under jax.jit"
        assert rows[f"{wl} / small / eager"][-1].startswith("Python")


def test_the_control_flow_section_shows_dynamic_net_retracing_on_guard_failures(control_flow_run):
    from compare.report import control_flow_table
    header, body = control_flow_table(control_flow_run)
    rows = {row[0][0]: dict(zip(header[1:], (text for text, _ in row[1:]))) for row in body}
    traced = rows["dynamic_net / small / traced"]
    assert traced["correct"] == "pass" and int(traced["retraces"]) >= 1
    assert int(traced["guard failures"]) >= int(traced["retraces"])
    assert "guarded" in traced["static approach"] and "retraces" in traced["static approach"]
    assert rows["dynamic_net / small / jax.jit"]["correct"] == "diverged (expected)"
    assert "frozen" in rows["dynamic_net / small / jax.jit"]["static approach"]
    assert rows["dynamic_net / small / numpy"]["static approach"].startswith("skipped: ")  # the measured reason
    assert not any(name.startswith("softmax") for name in rows)


def test_a_torch_compile_failure_on_a_control_flow_workload_is_a_skip_with_the_measured_error(monkeypatch):
    torch = pytest.importorskip("torch")
    from torch._dynamo.exc import Unsupported

    def failing_compile(fn, **kwargs):
        def call(*args):
            raise Unsupported("higher-order op body not captured")
        return call
    monkeypatch.setattr(torch, "compile", failing_compile)
    df = run(RunConfig(workloads=["branch_gate", "softmax"], modes=["eager", "torch.compile"], sizes=["small"],
                       **FAST))
    runs = df[(df.metric == "run") & (df["mode"] == "torch.compile")].set_index("workload")
    assert runs.status["branch_gate"] == "skip"
    assert runs.detail["branch_gate"].startswith(f"torch.compile fails on this torch.cond (torch {torch.__version__})")
    assert "Unsupported: higher-order op body not captured" in runs.detail["branch_gate"]
    assert runs.status["softmax"] == "error"  # elsewhere the same failure is not excused
