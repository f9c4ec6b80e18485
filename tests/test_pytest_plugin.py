"""The pytest plugin: compare() on a user's function, module and train step; the result's helpers; the pytest11
entry point; and the worked example in examples/ run as CI runs it (save a baseline, gate against it, and fail
with the gate's table when compiled mode is planted 2x slower)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

import eager
from compare.pytest_plugin import DuelResult, compare

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/test_tiny_classifier.py"
FAST = {"repeats": 3, "warmup": 1, "target_s": 1e-3}


def test_a_function_is_compared_in_every_mode_against_its_float64_reference():
    x = eager.tensor(np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6))
    r = compare(lambda x: (x.tanh() * 2 + 1).exp().sum(dim=1), x, reference=lambda x: np.exp(np.tanh(x) * 2 + 1)
                .sum(axis=1), **FAST)
    assert isinstance(r, DuelResult) and r.modes == ["eager", "traced", "compiled"]
    assert all(r.correct(m) for m in r.modes), r.table()
    assert r.kernels("compiled") == 1  # tanh, mul, add, exp and the row sum fuse into one kernel
    ref = r.df[r.df.metric == "abs_err_vs_reference"]
    assert list(ref.status) == ["pass"] * 3 and (ref.value < 1e-4).all()
    assert r.speedup("compiled") == pytest.approx(r.time("eager") / r.time("compiled"))
    assert r.speedup("eager") == 1.0


def test_a_wrong_reference_makes_every_mode_incorrect_and_speedup_refuses():
    x = eager.ones(3)
    r = compare(lambda x: x * 2, x, reference=lambda x: x * 3, modes=["eager", "compiled"], **FAST)
    assert not r.correct("eager") and not r.correct("compiled")
    assert "elements beyond rtol" in r.why("compiled")
    with pytest.raises(AssertionError, match="compiled gives a wrong answer, so it has no speedup"):
        r.speedup("compiled")


def test_a_module_gets_its_own_copy_per_mode_and_the_result_names_what_it_lacks():
    eager.manual_seed(0)
    model = eager.nn.Sequential(eager.nn.Linear(8, 16), eager.nn.ReLU(), eager.nn.Linear(16, 4))
    before = model[0].weight.detach().numpy().copy()
    r = compare(model, eager.randn(5, 8), **FAST)
    assert r.correct("traced") and r.correct("compiled") and r.correct("eager")
    assert r.ir_nodes("traced") > 0 and r.kernels("compiled") >= 1
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), before)
    with pytest.raises(AssertionError, match="eager launches no kernels of its own"):
        r.kernels("eager")
    with pytest.raises(KeyError, match="mode 'torch' was not compared; this compare ran eager, traced, compiled"):
        r.time("torch")


def _make_step():
    model = eager.nn.Linear(6, 3)
    opt = eager.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss
    return step, model


def test_a_train_step_factory_trains_one_copy_per_mode_and_parameters_are_compared():
    x, y = eager.randn(8, 6), eager.randn(8, 3)
    r = compare(_make_step, x, y, kind="train", **FAST)
    assert r.correct("traced") and r.correct("compiled"), r.why("compiled")
    wl = r.df.attrs["workload"]
    a, b = wl.build(eager, wl.make_inputs("user")), wl.build(eager, wl.make_inputs("user"))
    assert sorted(a.state()) == ["state:bias", "state:weight"]  # the parameters after a step are compared too
    np.testing.assert_array_equal(a.state()["state:weight"].detach().numpy(),  # each mode: the same start
                                  b.state()["state:weight"].detach().numpy())
    a.fn(*a.args)
    assert not np.array_equal(a.state()["state:weight"].detach().numpy(), b.state()["state:weight"].detach().numpy())


def test_a_train_step_that_is_not_a_factory_is_an_error_row_saying_what_to_pass():
    r = compare(lambda: 3, eager.ones(1, 2), kind="train", modes=["eager"], **FAST)
    run = r.df[r.df.metric == "run"].iloc[0]
    assert run.status == "error" and "the factory must return step or (step, module), got int" in run.detail
    assert not r.ran("eager")
    with pytest.raises(AssertionError, match="no time for eager: it did not run \\(error: TypeError"):
        r.time("eager")


def test_a_lib_function_runs_on_the_torch_peer_and_an_eager_only_one_is_skipped_with_how_to_fix():
    pytest.importorskip("torch")
    x = eager.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    r = compare(lambda lib, x: lib.tanh(x) * 2, x, modes=["eager"], peers=["torch"], **FAST)
    assert r.correct("torch"), r.why("torch")
    r2 = compare(lambda x: x.tanh() * 2, x, modes=["eager"], peers=["torch"], **FAST)
    run = r2.df[(r2.df["mode"] == "torch") & (r2.df.metric == "run")].iloc[0]
    assert run.status == "skip" and "write it as fn(lib, *inputs)" in run.detail


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown mode\\(s\\) torch.fast; choose from eager, traced"):
        compare(lambda x: x, eager.ones(1), peers=["torch.fast"])
    with pytest.raises(ValueError, match="kind must be 'forward' or 'train', not 'backward'"):
        compare(lambda x: x, eager.ones(1), kind="backward")
    with pytest.raises(TypeError, match="must be a function, a Module .* not int"):
        compare(3, eager.ones(1))


# ------------------------------------------------------------------ pytest itself, in a child process
def _installed() -> bool:
    return any(ep.value == "compare.pytest_plugin" for ep in entry_points(group="pytest11"))


def _pytest(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """pytest in a child, with the plugin: from its entry point once installed, else with -p (as the entry point
    in pyproject.toml would load it)."""
    plugin = [] if _installed() else ["-p", "compare.pytest_plugin"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_the_pytest11_entry_point_loads_the_plugin_without_p(tmp_path):
    dist = tmp_path / "graphduel_entry_point_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: graphduel-entry-point-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\ngraphduel = compare.pytest_plugin\n")
    (tmp_path / "test_probe.py").write_text("def test_probe(graphduel):\n    assert graphduel.results == []\n")
    path = os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py",
                          "--graphduel-threshold", "0.5"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_a_missing_baseline_file_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    out = _pytest("test_x.py", "--graphduel-baseline", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert out.returncode == 4, out.stdout + out.stderr
    assert f"--graphduel-baseline: baseline/current file {tmp_path / 'nope.json'} does not exist" in out.stderr


def test_a_compare_missing_from_the_baseline_is_listed_and_not_gated(tmp_path):
    (tmp_path / "test_y.py").write_text(textwrap.dedent("""
        import eager
        def test_y(graphduel):
            assert graphduel.compare(lambda x: x + 1, eager.ones(2), modes=["eager"], repeats=3).correct("eager")
    """))
    (tmp_path / "base.json").write_text(json.dumps({"meta": {}, "rows": []}))
    out = _pytest("test_y.py", "--graphduel-baseline", "base.json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not in the baseline (not gated; save a new baseline to include it): test_y.py::test_y" in out.stdout


@pytest.fixture(scope="module")
def example_baseline(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("example") / "base.json"
    out = _pytest(EXAMPLE, "--graphduel-save", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"baseline written to {path}" in out.stdout
    return path


def test_the_example_saves_a_baseline_of_each_compare(example_baseline):
    data = json.loads(example_baseline.read_text())
    names = {r["workload"] for r in data["rows"]}
    assert names == {f"{EXAMPLE}::test_forward_matches_float64_and_fuses_into_few_kernels",
                     f"{EXAMPLE}::test_compiled_train_step_agrees_with_eager_and_is_faster"}
    times = [r for r in data["rows"] if r["metric"] == "time"]
    assert {r["mode"] for r in times} == {"eager", "traced", "compiled"} and all(len(r["samples"]) == 15
                                                                                 for r in times)


def test_the_example_passes_its_own_baseline(example_baseline):
    # a wider threshold than the default: this machine is shared, and the test must not fail on another's load
    out = _pytest(EXAMPLE, "--graphduel-baseline", str(example_baseline), "--graphduel-threshold", "0.5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"gated 2 against {example_baseline}: none regressed" in out.stdout


def test_a_planted_2x_slowdown_of_compiled_mode_fails_each_test_with_the_gates_table(example_baseline):
    # the gate's default threshold (30%): a 2x slowdown is far past it, so the confidence test is sure of it
    out = _pytest(EXAMPLE, "--graphduel-baseline", str(example_baseline), env={"GRAPHDUEL_EXAMPLE_SLOWDOWN": "2"})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 failed" in out.stdout
    for test in ("test_forward_matches_float64_and_fuses_into_few_kernels",
                 "test_compiled_train_step_agrees_with_eager_and_is_faster"):
        assert f"graphduel: {EXAMPLE}::{test} regressed against the baseline" in out.stdout
    # with CI set, pytest repeats each failure's whole message in its short summary: judge each table row once
    table = sorted({line for line in out.stdout.splitlines()
                    if line.startswith("timing ") and "compiled/eager" in line})
    assert len(table) == 2 and all("regressed" in line and "Mann-Whitney p=" in line for line in table), out.stdout
    changes = [float(line.split("x  regressed")[0].split()[-1]) for line in table]
    assert all(c >= 1.5 for c in changes), changes
    structure = [line for line in out.stdout.splitlines() if line.startswith("structure ")]
    assert structure == []  # the same kernels: only the timing tier catches it


def test_docstring_examples_run():
    import doctest

    import compare.pytest_plugin as module
    assert doctest.testmod(module).failed == 0
