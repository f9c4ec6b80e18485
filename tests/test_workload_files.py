"""Workload files: a user's @workload/@program definitions imported from a path, scoped to the registry, and
every way a file can be bad named with its path and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compare.harness import RunConfig, run
from compare.workload_files import (
    WorkloadFileError,
    load_workload_file,
    registered,
    registered_files,
    split_spec,
    workload_spec,
)
from compare.workloads import REGISTRY

GOOD = """
import numpy as np
from compare.workloads import Program, as_lib_tensor, program, workload

@workload(sizes={"small": {"x": (4, 8)}}, reference=lambda x: {"out": np.tanh(x) * 2})
def user_double_tanh(lib, x):
    return lib.tanh(x) * 2

def _inputs(size, rng):
    return {"w": rng.standard_normal((3, 3)).astype(np.float32)}

@program(kind="forward", inputs=_inputs, size_names=("small",), reference=lambda w: {"out": w @ w})
def user_square(lib, arrays):
    return Program(lambda w: w @ w, (as_lib_tensor(lib, arrays["w"]),))

loose = workload("user_loose", sizes={"small": {"x": (2,)}}, register=False)(lambda lib, x: x + 1)
"""


def _write(tmp_path: Path, text: str, name: str = "user_workloads.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_yields_its_registered_and_unregistered_workloads_in_order_and_leaves_the_registry_alone(tmp_path):
    before = dict(REGISTRY)
    wls = load_workload_file(_write(tmp_path, GOOD))
    assert [wl.name for wl in wls] == ["user_double_tanh", "user_square", "user_loose"]
    assert [wl.kind for wl in wls] == ["forward", "forward", "forward"]
    assert wls[0].source == "user_workloads.py:5"  # the user's own file and line, as `graphduel list` shows
    assert REGISTRY == before


def test_loading_the_same_file_twice_gives_fresh_workloads_without_a_duplicate_name_error(tmp_path):
    path = _write(tmp_path, GOOD)
    first, second = load_workload_file(path), load_workload_file(path)
    assert [w.name for w in first] == [w.name for w in second]
    assert first[0] is not second[0]


def test_registered_workloads_run_through_the_harness_and_leave_with_the_block(tmp_path):
    with registered_files([_write(tmp_path, GOOD)]) as names:
        assert names == ["user_double_tanh", "user_square", "user_loose"]
        df = run(RunConfig(workloads=names[:2], modes=["eager", "traced"], sizes=["small"], repeats=3,
                           target_s=1e-3))
    ref = df[df.metric == "abs_err_vs_reference"]
    assert sorted(ref.workload.unique()) == ["user_double_tanh", "user_square"]
    assert (ref.status == "pass").all(), ref[["workload", "mode", "detail"]]
    assert "user_double_tanh" not in REGISTRY


def test_a_file_may_import_a_module_next_to_it(tmp_path):
    (tmp_path / "mymodels.py").write_text("def double(lib, x):\n    return x * 2\n")
    path = _write(tmp_path, """
        from compare.workloads import workload
        from mymodels import double
        workload("user_double", sizes={"small": {"x": (3,)}})(double)
    """)
    assert [w.name for w in load_workload_file(path)] == ["user_double"]


def test_a_syntax_error_names_the_file_line_and_text(tmp_path):
    path = _write(tmp_path, "from compare.workloads import workload\n\ndef broken(lib, x:\n    return x\n")
    with pytest.raises(WorkloadFileError, match=rf"{path}:3: syntax error: .*\n    def broken\(lib, x:"):
        load_workload_file(path)


def test_an_exception_at_import_names_the_line_that_raised_and_the_error(tmp_path):
    path = _write(tmp_path, "import numpy as np\n\nSHAPE = (4, 8)\nscale = 1 / 0\n")
    with pytest.raises(WorkloadFileError, match=rf"{path}:4: ZeroDivisionError while importing the workload file"):
        load_workload_file(path)


def test_a_missing_import_in_the_file_is_an_error_at_its_line(tmp_path):
    path = _write(tmp_path, "\nimport surely_not_installed_graphduel_xyz\n")
    with pytest.raises(WorkloadFileError, match=rf"{path}:2: ModuleNotFoundError .*surely_not_installed_graphduel_xyz"):
        load_workload_file(path)


def test_a_file_without_workloads_says_how_to_define_one(tmp_path):
    path = _write(tmp_path, "def forgot_the_decorator(lib, x):\n    return x\n")
    with pytest.raises(WorkloadFileError, match=rf"{path}: defines no workloads; decorate .*@workload"):
        load_workload_file(path)


def test_a_name_of_a_built_in_workload_is_refused_at_the_users_line(tmp_path):
    path = _write(tmp_path, """
        from compare.workloads import workload

        @workload(sizes={"small": {"x": (2,)}})
        def softmax(lib, x):
            return x
    """)
    with pytest.raises(WorkloadFileError, match=rf"{path}:4: ValueError .*'softmax' is registered twice"):
        load_workload_file(path)
    assert REGISTRY["softmax"].source.startswith("elementwise.py")


def test_registered_refuses_a_clash_and_restores_the_registry(tmp_path):
    wl = load_workload_file(_write(tmp_path, GOOD))[0]
    wl.name = "softmax"
    before = dict(REGISTRY)
    with pytest.raises(WorkloadFileError, match="'softmax' .* has the name of the workload defined at elementwise"):
        with registered([wl]):
            pass
    assert REGISTRY == before


@pytest.mark.parametrize("bad, message", [("nowhere.py", "does not exist"), (".", "expected a Python file")])
def test_a_path_that_is_not_a_python_file_is_refused(tmp_path, bad, message):
    with pytest.raises(WorkloadFileError, match=message):
        load_workload_file(tmp_path / bad)


def test_a_spec_names_a_file_and_one_of_its_workloads(tmp_path):
    path = _write(tmp_path, GOOD)
    assert split_spec(f"{path}:user_square") == (path, "user_square")
    assert split_spec("softmax") == (None, "softmax")
    with workload_spec(f"{path}:user_square") as name:
        assert REGISTRY[name].source.startswith("user_workloads.py")
    assert "user_square" not in REGISTRY
    with pytest.raises(WorkloadFileError, match="no workload named 'nope'; the file defines user_double_tanh, "):
        with workload_spec(f"{path}:nope"):
            pass
    with pytest.raises(WorkloadFileError, match="name one of the file's workloads"):
        split_spec(str(path))


def test_docstring_examples_run():
    import doctest

    import compare.workload_files as module
    assert doctest.testmod(module).failed == 0
