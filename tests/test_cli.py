"""The graphduel command: `run --quick` end to end (in-process and as a subprocess), report, explain, list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import eager
from compare.cli import main
from compare.harness import CORRECTNESS_METRICS
from compare.modes import default_modes

REPO = Path(__file__).resolve().parent.parent
SELECTION = ["softmax", "mlp_train_adam", "custom_sigmoid", "dynamic_net"]
OURS_ON_CPU = default_modes("cpu")  # eager, traced, compiled


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    assert main(["run", "--quick", "--workloads", *SELECTION, "--out", str(out)]) == 0
    return out


def _rows(out: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((out / "results.json").read_text())["rows"])


def test_run_quick_writes_every_file(quick_report, capsys):
    for name in ("report.md", "report.html", "results.csv", "results.json", "speedup_small.png"):
        assert (quick_report / name).stat().st_size > 0, name


def test_report_plots_memory_bound_workloads_against_the_measured_copy_bandwidth(quick_report):
    meta = json.loads((quick_report / "results.json").read_text())["meta"]
    assert float(meta["copy_bandwidth_gbps"]) > 0
    assert (quick_report / "roofline.png").stat().st_size > 0
    report = (quick_report / "report.md").read_text()
    assert "## Roofline" in report and f"({meta['copy_bandwidth_gbps']} GB/s" in report


def test_every_correctness_cell_passes_except_dynamic_net(quick_report):
    df = _rows(quick_report)
    checks = df[df.metric.isin(CORRECTNESS_METRICS)]
    assert set(checks.workload) == set(SELECTION)
    failed = checks[checks.status != "pass"]
    assert set(failed.workload) <= {"dynamic_net"}, failed[["workload", "mode", "metric", "detail"]].to_string()
    runs = df[df.metric == "run"]
    assert (runs.status != "error").all(), runs[runs.status == "error"][["workload", "mode", "detail"]].to_string()
    ours = runs[runs.family == "ours"]
    # our modes never skip on the CPU (a skip there once hid an import error of our own); peers may, with a reason
    assert set(ours["mode"]) == set(OURS_ON_CPU) and (ours.status == "ok").all(), ours[["mode", "detail"]]
    assert set(checks["mode"]) >= set(OURS_ON_CPU)


def test_dynamic_net_passes_in_our_static_modes_by_retracing_while_the_peers_diverge(quick_report):
    df = _rows(quick_report)
    dyn = df[(df.workload == "dynamic_net") & (df.metric == "abs_err_vs_eager")].set_index("mode")
    for mode in ("traced", "compiled"):  # the guard on model.counter retraces: the answer is eager's
        assert dyn.status[mode] == "pass", mode
    peers = [m for m in ("jax.jit", "torch.jit.trace") if m in dyn.index]  # optional: run where installed
    for mode in peers:
        assert dyn.status[mode] == "fail" and "divergence" in dyn.detail[mode], mode
    report = (quick_report / "report.md").read_text()
    assert "## Retraces and guard failures" in report and "model.counter" in report


def test_cuda_graph_mode_is_left_out_on_the_cpu_and_says_why_when_asked(quick_report, tmp_path):
    assert "compiled+graph" not in set(_rows(quick_report)["mode"])
    assert main(["run", "--quick", "--workloads", "softmax", "--modes", "compiled+graph", "--peers", "none",
                 "--out", str(tmp_path)]) == 0
    graph = _rows(tmp_path).query("mode == 'compiled+graph'")
    assert len(graph) and (graph.status == "skip").all() and "--device cuda" in graph.detail.iloc[0]


def test_report_rerenders_from_results(quick_report, tmp_path, capsys):
    assert main(["report", str(quick_report / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").exists() and "report:" in capsys.readouterr().out


def test_explain_and_list_print(capsys):
    assert main(["explain", "softmax"]) == 0
    text = capsys.readouterr().out
    assert "workload softmax (forward)" in text and "side by side" in text
    # explain reports a mode that failed instead of raising: a report that says so is a failure here
    assert not [line for line in text.splitlines() if "failed" in line or "skipped" in line or "error" in line]
    assert "%4: f32[64,256] = exp(%3)" in text and "kernels per call: 1" in text  # the traced IR, the kernel
    for mode in OURS_ON_CPU:
        assert f"{mode} vs_reference: pass" in text, mode
    assert main(["list"]) == 0
    assert "dynamic_net" in capsys.readouterr().out


def test_user_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["run", "--quick", "--workloads", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown workload 'nope'; known: " in capsys.readouterr().err
    assert main(["gate", "--baseline", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_compare_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compare", "run", "--quick", "--workloads", "tanh_gelu",
                           "--peers", "numpy", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report: " in proc.stdout and (tmp_path / "report.html").exists()


@pytest.mark.gpu
def test_a_cuda_run_passes_every_correctness_cell_and_times_with_cuda_events(tmp_path):
    assert main(["run", "--device", "cuda", "--quick", "--workloads", *SELECTION, "--peers", "none",
                 "--out", str(tmp_path)]) == 0
    df = _rows(tmp_path)
    checks = df[df.metric.isin(CORRECTNESS_METRICS)]
    assert set(checks["mode"]) == {"eager", "traced", "compiled", "compiled+graph"}
    assert (checks.device == "cuda").all()
    failed = checks[checks.status != "pass"]
    assert set(failed.workload) <= {"dynamic_net"}, failed[["workload", "mode", "metric", "detail"]].to_string()
    times = df[df.metric == "time"]
    assert len(times) == 4 * len(SELECTION) and (times.value > 0).all()
    assert "gpu" in json.loads((tmp_path / "results.json").read_text())["meta"]


@pytest.mark.skipif(eager.cuda_available(), reason="checks the run on a machine without a GPU")
def test_a_cuda_run_without_a_gpu_reports_every_cell_skipped_instead_of_crashing(tmp_path):
    assert main(["run", "--device", "cuda", "--quick", "--workloads", "softmax", "--out", str(tmp_path)]) == 0
    df = _rows(tmp_path)
    assert (df.status == "skip").all()
    assert "CuPy" in df[df["mode"] == "eager"].detail.iloc[0]
    assert "copy_bandwidth_gbps" not in json.loads((tmp_path / "results.json").read_text())["meta"]


def test_every_row_of_a_run_names_the_machine_and_host_it_was_measured_on(quick_report):
    df = _rows(quick_report)
    meta = json.loads((quick_report / "results.json").read_text())["meta"]
    assert (df.machine == f"cpu: {meta['cpu']} x{meta['cores']}").all() and (df.host == meta["host"]).all()
    assert set(meta["cell_seconds"]) == {f"{w}/small" for w in SELECTION}  # what shards balance on


@pytest.mark.parametrize("flags, message", [
    (["--ray", "--shard", "1/2"], "--ray and --shard are two ways to split the matrix: choose one"),
    (["--shard", "3/2"], "K must be between 1 and N"),
    (["--shard", "half"], "expected K/N with whole numbers"),
])
def test_bad_scale_out_flags_are_one_clear_line(flags, message, capsys):
    assert main(["run", "--quick", "--workloads", "softmax", *flags]) == 2
    assert message in capsys.readouterr().err
