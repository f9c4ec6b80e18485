"""The kernel cache and the fallback: warm processes compile nothing, broken entries are rebuilt, concurrent
writers are survived, and a machine without a C compiler still runs (NumPy backend, announced once)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import eager
from compiler.passes import optimize
from compiler.program import build
from compiler.runtime import cache, cpu, pointers
from compiler.testing import capture

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import numpy as np, eager, compiler
f = compiler.compile(lambda x: (x * 3 + 1).tanh().sum(dim=-1), eager.ones(4, 8))
out = f(eager.tensor(np.arange(32, dtype=np.float32).reshape(4, 8) / 32))
print("COMPILATIONS", compiler.cache_stats.compilations, "REBUILT", compiler.cache_stats.rebuilt_corrupt,
      "BACKEND", f.backend, "SUM", round(float(out.sum().item()), 4))
"""


def _run(cache_dir: Path, **env) -> dict:
    full = {**os.environ, "GRAPHDUEL_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=full, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1, 2)} | {"stderr": proc.stderr}


def test_second_process_compiles_nothing(tmp_path):
    first, second = _run(tmp_path), _run(tmp_path)
    assert int(first["COMPILATIONS"]) >= 1 and first["BACKEND"] == "cpu"
    assert int(second["COMPILATIONS"]) == 0
    assert first["SUM"] == second["SUM"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "sidecar"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path, damage):
    good = _run(tmp_path)
    lib = next((tmp_path / "kernels").glob("*.so"))
    if damage == "truncate":
        lib.write_bytes(lib.read_bytes()[:100])
    elif damage == "garbage":
        lib.write_bytes(b"\0not an elf" * 64)
    else:
        lib.with_suffix(".sha256").write_text("0" * 64)
    again = _run(tmp_path)
    assert again["REBUILT"] == "1" and again["COMPILATIONS"] == "1" and again["SUM"] == good["SUM"]
    assert "corrupt or truncated" in again["stderr"]
    assert _run(tmp_path)["COMPILATIONS"] == "0"  # and the rebuilt entry is good


def test_concurrent_writers_leave_a_valid_entry(tmp_path):
    env = {**os.environ, "GRAPHDUEL_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for _ in range(3)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    sums = {o.split("SUM")[1].strip() for o, _ in outs}
    assert len(sums) == 1
    assert not list((tmp_path / "kernels").glob("*.tmp"))  # no half-written files left behind
    assert _run(tmp_path)["COMPILATIONS"] == "0"


def test_no_c_compiler_falls_back_to_numpy_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/graphduel-cc")
    monkeypatch.setattr(cpu, "_warned_no_compiler", False)
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6)
    g = optimize(capture(lambda x: eager.softmax(x.exp(), dim=-1), eager.tensor(x)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = cpu.build_executable(build(g))
        ex2 = cpu.build_executable(build(g))
    messages = [str(w.message) for w in caught if "NumPy fallback" in str(w.message)]
    assert len(messages) == 1 and "C compiler" in messages[0]
    assert ex.backend == "numpy" and ex2.backend == "numpy"
    want = np.exp(np.exp(x)) / np.exp(np.exp(x)).sum(-1, keepdims=True)
    np.testing.assert_allclose(ex.run([x])[0], want, rtol=1e-5)
    assert ex.kernels  # the same groups were generated, only not built


def test_compile_error_names_the_source_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path))
    with pytest.raises(cache.CompileError, match=r"\.c"):
        cache.load_library("this is not C;")


def test_cache_location_follows_xdg_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHDUEL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "graphduel" / "kernels"
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine" / "kernels"


@pytest.mark.parametrize("make", [lambda: np.zeros(5, np.float32), lambda: np.zeros((4, 4))[1:],
                                  lambda: np.zeros(0), lambda: np.ones(()), lambda: np.zeros(3)[::1]],
                         ids=["plain", "offset-view", "empty", "0-d", "view"])
def test_kernel_argument_address_is_the_arrays_data_pointer(make):
    a = make()
    assert pointers.address(a) == a.ctypes.data
    a.setflags(write=False)  # no writable buffer to export: the slow path must give the same pointer
    assert pointers.address(a) == a.ctypes.data
