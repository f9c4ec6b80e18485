"""The matrix spread over machines: Ray tasks (a local cluster of 2 worker processes) and CI shards, each merged
into one run with the serial run's cells, structure and verdicts; a killed worker's cell is retried or reported
as an error cell, never missing; merges of different commits, configurations or plans are refused."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from compare import cells as cellrec
from compare.cli import main
from compare.harness import CORRECTNESS_METRICS
from compare.machine_report import machine_sections, write_run_report
from compare.report import load_results
from compare.shard import MergeError, cell_costs, measured_costs, merge, plan, plan_cells

ARGS = ["--quick", "--workloads", "softmax", "dynamic_net", "mlp_train_sgd", "--modes", "eager", "traced",
        "compiled", "--peers", "numpy"]
CELLS = {"softmax/small", "dynamic_net/small", "mlp_train_sgd/small"}
STRUCTURE = ("ir_nodes", "kernels", "fusion_groups", "source_hash")
VERDICTS = ("run", *CORRECTNESS_METRICS)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'graphduel[dist]' (or ray)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # 2 worker processes run the cells
    yield ray
    ray.shutdown()


def _cli(*args: str) -> None:
    assert main(["run", *ARGS, *args]) == 0


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("serial")
    _cli("--out", str(out))
    return load_results(out)


@pytest.fixture(scope="module")
def ray_run(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray")
    _cli("--ray", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    for k in (1, 2):
        _cli("--shard", f"{k}/2", "--out", str(root / f"s{k}"))
    return [root / "s1", root / "s2"]


def assert_same_cells(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same rows (cell, mode, metric), same structure and same verdicts; timings are measurements, not compared."""
    key = ["workload", "size", "mode", "metric"]
    assert sorted(map(tuple, got[key].values)) == sorted(map(tuple, want[key].values))
    for metrics, column in ((VERDICTS, "status"), (STRUCTURE, "value"), (("source_hash",), "detail")):
        g = got[got.metric.isin(metrics)].set_index(key)[column].sort_index()
        w = want[want.metric.isin(metrics)].set_index(key)[column].sort_index()
        pd.testing.assert_series_equal(g, w, check_names=False)
    assert list(dict.fromkeys(got.workload)) == list(dict.fromkeys(want.workload))  # the run's order


# ------------------------------------------------------------------ Ray
def test_a_ray_run_on_two_workers_has_the_serial_runs_cells_structure_and_verdicts(ray_run, serial):
    df = load_results(ray_run)
    assert_same_cells(df, serial)
    meta = json.loads((ray_run / "results.json").read_text())["meta"]
    assert set(meta["cells"]) == CELLS and all(c["attempts"] == 1 for c in meta["cells"].values())
    pids = {c["worker"].rsplit(":", 1)[1] for c in meta["cells"].values()}
    assert str(os.getpid()) not in pids  # the cells ran in the cluster's worker processes, not in this one
    assert (df.host != "").all() and (df.machine.str.startswith("cpu: ")).all()
    assert meta["ray"]["cpus_per_cell"] == 1 and meta["config"]["workloads"] == ARGS[2:5]
    recorded = cellrec.read(ray_run / cellrec.RECORDS)  # written as the cells arrived
    assert {r["cell"] for r in recorded} == CELLS


def test_a_worker_killed_mid_cell_is_retried_and_one_killed_every_time_becomes_an_error_cell(ray_cluster,
                                                                                               serial, tmp_path):
    from compare.distributed import run_ray
    from compare.shard import config_of
    cfg = config_of(serial.attrs["meta"])
    df = run_ray(cfg, out=tmp_path, kill={"softmax/small": "1", "dynamic_net/small": "*"})
    cells = df.attrs["meta"]["cells"]
    assert set(cells) == CELLS  # never a silently missing cell
    assert cells["softmax/small"]["attempts"] == 2 and "WorkerCrashedError" in cells["softmax/small"]["retried_after"]
    assert "error" not in cells["softmax/small"] and cells["mlp_train_sgd/small"]["attempts"] == 1
    assert cells["dynamic_net/small"]["attempts"] == 2 and "WorkerCrashedError" in cells["dynamic_net/small"]["error"]
    dyn = df[df.workload == "dynamic_net"]
    assert set(dyn.metric) == {"run"} and (dyn.status == "error").all()
    assert list(dyn["mode"]) == cfg.selected_modes() and dyn.detail.str.contains("failed after 2 attempt").all()
    retried = df[df.workload == "softmax"]
    assert_same_cells(retried, serial[serial.workload == "softmax"])  # the second attempt measured the full cell
    assert {r["cell"] for r in cellrec.read(tmp_path / cellrec.RECORDS)} == CELLS
    write_run_report(df, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Retried and failed cells" in report and "**dynamic_net/small** [error]" in report


def test_a_ray_run_that_stopped_half_way_merges_what_finished_and_names_what_did_not(ray_run, tmp_path, capsys):
    stopped = tmp_path / "stopped"
    shutil.copytree(ray_run, stopped)
    (stopped / "results.json").unlink()  # the driver died before writing the report
    kept = [line for line in (stopped / cellrec.RECORDS).read_text().splitlines() if "mlp_train_sgd" not in line]
    (stopped / cellrec.RECORDS).write_text("\n".join(kept) + "\n")
    assert main(["merge", str(stopped), "--out", str(tmp_path / "merged")]) == 0
    df = load_results(tmp_path / "merged")
    assert set(df.workload) == {"softmax", "dynamic_net", "mlp_train_sgd"}
    mlp = df[df.workload == "mlp_train_sgd"]
    assert (mlp.status == "error").all() and mlp.detail.str.contains("did not run").all()
    assert "CELL ERROR mlp_train_sgd/small" in capsys.readouterr().out


def test_without_ray_the_flag_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["run", *ARGS, "--ray"]) == 2
    err = capsys.readouterr().err
    assert "needs Ray" in err and "graphduel[dist]" in err


# ------------------------------------------------------------------ shards and merge
def test_two_shards_merged_equal_the_serial_runs_cells(shards, serial, tmp_path):
    metas = [json.loads((d / "results.json").read_text())["meta"] for d in shards]
    mine = [set(m["cell_seconds"]) for m in metas]
    assert mine[0] & mine[1] == set() and mine[0] | mine[1] == CELLS  # a partition of the cells
    assert metas[0]["shard"]["plan"] == metas[1]["shard"]["plan"] and metas[0]["shard"]["costs"] == "estimated"
    assert main(["merge", *map(str, shards), "--out", str(tmp_path)]) == 0
    merged = load_results(tmp_path)
    assert_same_cells(merged, serial)
    assert "--shard 1/2" in merged.attrs["meta"]["merged"][str(shards[0])]


def _copy_with(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "results.json").read_text())
    change(data["meta"])
    (dst / "results.json").write_text(json.dumps(data))
    return dst


def test_merge_refuses_shards_of_different_commits_configurations_or_plans(shards, tmp_path):
    s1, s2 = shards
    other_commit = _copy_with(s2, tmp_path / "c", lambda m: m.update(commit="0123456789ab"))
    with pytest.raises(MergeError, match="different commits .*0123456789ab"):
        merge([s1, other_commit])
    other_config = _copy_with(s2, tmp_path / "r", lambda m: m["config"].update(repeats=9))
    with pytest.raises(MergeError, match=r"different configurations cannot be merged \(repeats: 5 in .*, 9 in "):
        merge([s1, other_config])
    other_plan = _copy_with(s2, tmp_path / "p", lambda m: m["shard"].update(plan_id="ffffffffffff"))
    with pytest.raises(MergeError, match="different plans"):
        merge([s1, other_plan])
    with pytest.raises(MergeError, match="2/2 missing"):
        merge([s1])
    with pytest.raises(MergeError, match="given twice"):
        merge([s1, s2, s1])
    assert main(["merge", str(s1), str(other_commit), "--out", str(tmp_path / "x")]) == 2  # one line, exit 2


def test_the_plan_is_deterministic_balanced_and_gives_every_cell_one_shard():
    costs = {f"w{i}/small": c for i, c in enumerate([5.0, 4.0, 3.0, 3.0, 3.0, 1.0, 1.0])}
    a = plan(costs, 3)
    assert a == plan(dict(costs), 3) and set(a) == set(costs) and set(a.values()) == {1, 2, 3}
    loads = [sum(costs[c] for c in a if a[c] == k) for k in (1, 2, 3)]
    assert sorted(loads) == [6.0, 7.0, 7.0]  # 20 s over 3 shards: no shard waits on another by more than a cell
    assert sorted(plan(costs, 10).values()) == list(range(1, 8))  # more shards than cells: one cell each, some idle


def test_shards_balance_on_measured_cell_times_when_given(serial):
    from compare.shard import config_of
    cfg = config_of(serial.attrs["meta"])
    measured = measured_costs(serial)
    assert measured == serial.attrs["meta"]["cell_seconds"] and set(measured) == CELLS
    heavy = {**measured, "softmax/small": 100.0}
    assert plan_cells(cfg, 2, heavy)["softmax/small"] != plan_cells(cfg, 2, heavy)["mlp_train_sgd/small"]
    old = serial.copy()
    old.attrs = {"meta": {k: v for k, v in serial.attrs["meta"].items() if k != "cell_seconds"}}
    derived = measured_costs(old)  # results written before cell times were recorded: setup + timing loop
    assert set(derived) == CELLS and all(v > 0 for v in derived.values())
    assert set(cell_costs(cfg, {"softmax/small": 2.0})) == CELLS  # the unmeasured cells are estimated


# ------------------------------------------------------------------ several machine kinds
def two_kinds(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as if its mlp_train_sgd cell had run on a second host of another machine kind."""
    from compare.shard import config_of
    records = cellrec.records_from_frame(df)
    for rec in records:
        if rec["workload"] == "mlp_train_sgd":
            rec["machine"] = {**rec["machine"], "host": "box-b", "cpu": "Other CPU", "kind": "cpu: Other CPU x64"}
    return cellrec.assemble(records, config_of(df.attrs["meta"]), df.attrs["meta"])


def test_a_run_on_two_machine_kinds_reports_a_section_per_kind(serial, tmp_path):
    df = two_kinds(serial)
    assert set(df.machine) == {serial.machine.iloc[0], "cpu: Other CPU x64"}
    assert df.attrs["meta"]["cpu"] == cellrec.VARIES and "copy_bandwidth_gbps" not in df.attrs["meta"]
    titles = [t for t, _, _ in machine_sections(df) if t]
    assert titles[:1] == ["Machines"] and f"Machine kind: {serial.machine.iloc[0]}" in titles
    assert "Machine kind: cpu: Other CPU x64" in titles and machine_sections(serial) == []
    write_run_report(df, tmp_path)
    assert main(["report", str(tmp_path)]) == 0  # re-rendered: the sections once, not twice
    report = (tmp_path / "report.md").read_text()
    assert report.count("## Machines\n") == 1 and report.count("## Machine kind: ") == 2
    other = report[report.index("## Machine kind: cpu: Other CPU x64"):]
    assert "mlp_train_sgd / small" in other and "softmax / small" not in other
    assert "Machine kind: cpu: Other CPU x64" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("module", ["compare.cells", "compare.shard", "compare.distributed", "compare.machine_report"])
def test_docstring_examples_run(module):
    import doctest
    import importlib
    assert doctest.testmod(importlib.import_module(module)).failed == 0
