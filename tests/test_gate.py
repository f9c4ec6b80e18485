"""The CI gate: a planted 2x slowdown fails it, run-to-run noise on an unchanged tree passes it, structural
metrics are exact, correctness is gated, and pytest-benchmark files are read."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from compare.cli import main
from compare.gate import evaluate, format_findings, gate, load_any, verdict
from compare.harness import COLUMNS, RunConfig, run
from compare.report import save_results
from compare.workloads import REGISTRY, workload

SLOWDOWN = {"factor": 1}


@pytest.fixture(scope="module")
def probe():
    """A workload whose eager side can be made exactly k times more work (the planted regression)."""
    @workload(name="gate_probe", sizes={"small": {"x": (32, 64)}}, tags=("test",))
    def gate_probe(lib, x):
        for _ in range(8 * SLOWDOWN["factor"]):
            x = lib.tanh(x)
        return x

    @gate_probe.peer("numpy")
    def _(xp, x):
        for _ in range(8):
            x = xp.tanh(x)
        return x
    yield gate_probe
    REGISTRY.pop("gate_probe")


def _measure() -> pd.DataFrame:
    return run(RunConfig(workloads=["gate_probe"], modes=["eager", "numpy"], sizes=["small"], repeats=9,
                         warmup=1, target_s=0.003))


def test_verdict_needs_growth_and_confidence():
    base = np.array([1.0, 1.02, 0.98, 1.01, 0.99])
    assert verdict(base, base * 2, 0.3, 0.01)[0] == "regressed"
    assert verdict(base, base * 1.1, 0.3, 0.01)[0] == "ok"
    noisy = np.array([0.9, 3.0, 1.0, 2.9, 1.5])  # median grew, but the samples overlap: not confident
    assert verdict(base, noisy, 0.3, 0.01)[0] == "noisy"


def test_a_planted_2x_slowdown_fails_the_gate(probe):
    base = _measure()
    SLOWDOWN["factor"] = 2
    try:
        passed, findings = gate(base, _measure())
    finally:
        SLOWDOWN["factor"] = 1
    assert not passed
    bad = [f for f in findings if f.status == "regressed"]
    assert [f.what for f in bad] == ["gate_probe / small / eager/numpy"]
    assert 1.6 < bad[0].change < 2.6
    assert "regressed" in format_findings(findings)


def test_run_to_run_noise_on_an_unchanged_tree_passes(probe):
    base = _measure()
    for _ in range(3):
        passed, findings = gate(base, _measure())
        assert passed, format_findings(findings)


def _rows(metric, value, mode="compiled", status="ok", detail="", workload="w") -> dict:
    return {"workload": workload, "kind": "forward", "size": "small", "mode": mode, "family": "ours",
            "device": "cpu", "metric": metric, "value": value, "unit": "", "status": status, "detail": detail,
            "samples": None, "expected_divergence": False}


def test_structure_is_gated_exactly():
    base = pd.DataFrame([_rows("kernels", 3), _rows("ir_nodes", 10), _rows("source_hash", math.nan, detail="a")],
                        columns=COLUMNS)
    more = pd.DataFrame([_rows("kernels", 4), _rows("ir_nodes", 9), _rows("source_hash", math.nan, detail="b")],
                        columns=COLUMNS)
    status = {f.what: f.status for f in evaluate(base, more)}
    assert status == {"w / small / compiled kernels": "regressed", "w / small / compiled ir_nodes": "improved",
                      "w / small / compiled generated source": "changed"}
    assert gate(base, more)[0] is False and gate(base, base)[0] is True


def test_a_cell_that_passed_must_still_pass():
    base = pd.DataFrame([_rows("abs_err_vs_eager", 0.0, status="pass")], columns=COLUMNS)
    cur = pd.DataFrame([_rows("abs_err_vs_eager", 0.5, status="fail", detail="wrong")], columns=COLUMNS)
    passed, findings = gate(base, cur)
    assert not passed and findings[0].status == "broken"


def test_cli_gate_exit_codes(probe, tmp_path, capsys):
    base = _measure()
    save_results(base, tmp_path / "base")
    save_results(_measure(), tmp_path / "same")
    SLOWDOWN["factor"] = 2
    try:
        save_results(_measure(), tmp_path / "slow")
    finally:
        SLOWDOWN["factor"] = 1
    assert main(["gate", "--baseline", str(tmp_path / "base/results.json"),
                 "--current", str(tmp_path / "same/results.json")]) == 0
    assert main(["gate", "--baseline", str(tmp_path / "base/results.json"),
                 "--current", str(tmp_path / "slow/results.json")]) == 1
    out = capsys.readouterr().out
    assert "gate: FAILED" in out and "eager/numpy" in out


def test_the_gate_measures_now_when_no_current_is_given(probe, tmp_path):
    save_results(_measure(), tmp_path)
    assert main(["gate", "--baseline", str(tmp_path / "results.json")]) == 0


BENCH = '''
import pytest
@pytest.mark.parametrize("mode", ["eager", "fast"])
def test_probe(benchmark, mode):
    benchmark.group = "probe"
    n = 20000 if mode == "eager" else 5000
    benchmark(lambda: sum(range(n)))
'''


def test_the_gate_reads_pytest_benchmark_json(tmp_path):
    (tmp_path / "test_bench_probe.py").write_text(BENCH)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
                           "--benchmark-only", "--benchmark-enable", "--benchmark-save-data",
                           "--benchmark-min-rounds=7", "--benchmark-max-time=0.2",
                           f"--benchmark-json={out}", "-o", "addopts="],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    base = load_any(out)
    assert set(base["mode"]) == {"eager", "fast"} and set(base.workload) == {"probe"}
    assert gate(base, base)[0]
    data = json.loads(out.read_text())
    for b in data["benchmarks"]:
        if "fast" in b["name"]:
            b["stats"]["data"] = [x * 3 for x in b["stats"]["data"]]
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(data))
    passed, findings = gate(base, load_any(slow))
    assert not passed, format_findings(findings, show_all=True)


def _timed(workload: str, mode: str, samples: list[float], machine: str) -> dict:
    return {**_rows("time", float(np.median(samples)), mode=mode, workload=workload), "samples": samples,
            "family": "ours", "machine": machine, "host": machine + "-host"}


def _two_kind_run(slow_on: str | None = None, moved: bool = False) -> pd.DataFrame:
    """Cell w1 timed on kind A, w2 on kind B (compiled/eager about 0.5); ``slow_on`` doubles compiled there;
    ``moved`` times w2 on kind A instead."""
    rows = []
    for name, kind in (("w1", "cpu: A x2"), ("w2", "cpu: B x8")):
        kind = "cpu: A x2" if moved and name == "w2" else kind
        factor = 2.0 if kind == slow_on else 1.0
        rows.append(_timed(name, "eager", [1.0, 1.01, 0.99, 1.02, 0.98], kind))
        rows.append(_timed(name, "compiled", [0.5 * factor * x for x in (1.0, 1.01, 0.99, 1.0, 1.0)], kind))
    return pd.DataFrame(rows, columns=COLUMNS)


def test_a_merged_run_is_gated_per_machine_kind():
    base = _two_kind_run()
    status = {f.what: f.status for f in evaluate(base, _two_kind_run(slow_on="cpu: B x8"))}
    assert status == {"w1 / small / compiled/eager on cpu: A x2": "ok",
                      "w2 / small / compiled/eager on cpu: B x8": "regressed"}
    passed, findings = gate(base, _two_kind_run(moved=True))  # w2 ran on kind A this time: not comparable
    moved = [f for f in findings if f.what.startswith("w2")]
    assert passed and [f.status for f in moved] == ["other-machine"] and "cpu: A x2" in moved[0].detail


def test_results_without_machine_columns_get_their_runs_machine(tmp_path):
    rows = [_rows("kernels", 3)]
    meta = {"device": "cpu", "cpu": "Some CPU", "cores": "4", "host": "h1"}
    (tmp_path / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))  # written before machines
    df = load_any(tmp_path)
    assert df.machine.tolist() == ["cpu: Some CPU x4"] and df.host.tolist() == ["h1"]
