"""What a compile records and what reads it: the report renders from the ``Lowered`` objects without compiling
again, both native backends make one kernel type, and a backend is one row of the builder table."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import eager
from compiler import api
from compiler.runtime import cache, cpu, cuda, kernels
from compiler.runtime.executor import Executable


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graphduel-cache"))


def _mlp():
    w = eager.tensor(np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4))
    return compiler.compile(lambda x: ((x @ w) * 2 + 1).tanh().sum(dim=-1), eager.ones(3, 8))


def test_report_compiles_nothing_and_shows_what_the_compile_recorded(monkeypatch):
    f = _mlp()
    f(eager.ones(3, 8))
    lowered = f.lowered

    def no_compile(*args, **kwargs):
        raise AssertionError("the report compiled again")
    monkeypatch.setattr(api, "lower_graph", no_compile)
    monkeypatch.setattr(api, "build", no_compile)
    compilations, hits = cache.STATS.compilations, cache.STATS.hits
    df = f.report(repeat=1, show=False)
    assert (cache.STATS.compilations, cache.STATS.hits) == (compilations, hits)  # no library built or loaded

    kernel_rows = df[df["kind"] == "kernel"]
    assert list(kernel_rows["step"]) == [k.name for k in lowered.kernels]
    assert list(kernel_rows["source_lines"]) == [len(k.source.splitlines()) for k in lowered.kernels]
    assert list(df["kind"]) == [s.kind for s in lowered.program.steps]
    assert df.attrs["kernels"] == len(lowered.kernels) == 1
    assert df.attrs["eager_ops"] == len(lowered.source_graph.calls)
    assert df.attrs["ops_after_passes"] == len(lowered.graph.calls)
    assert df.attrs["compile_cold_s"] == f.compile_seconds
    assert df.attrs["compile_cached_est_s"] == lowered.cached_seconds
    assert 0 < lowered.cached_seconds <= lowered.pass_seconds + lowered.build_seconds


def test_cached_compile_time_leaves_out_the_native_compilers_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path))  # empty: this compile must build its library
    cold = _mlp().lowered
    assert cold.compilations == 1 and cold.native_seconds > 0
    assert cold.cached_seconds == pytest.approx(cold.pass_seconds + cold.build_seconds - cold.native_seconds)
    warm = _mlp().lowered  # the same source again: found in the cache
    assert warm.compilations == 0 and warm.native_seconds == 0
    assert warm.cached_seconds == warm.pass_seconds + warm.build_seconds


def test_compiles_in_other_threads_are_not_counted_in_this_ones_cached_time(tmp_path, monkeypatch):
    import threading
    monkeypatch.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path))  # cold: every thread builds its own library
    results, errors = {}, []

    def work(k):
        try:
            f = compiler.compile(lambda t: ((t * (k + 2)).exp() + 1).tanh().sum(dim=-1), eager.ones(8, 8 + k))
            results[k] = f.lowerings[-1]
        except Exception as e:  # collected and asserted below: a thread's failure must fail the test
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for lowered in results.values():
        assert lowered.compilations == 1
        assert 0 <= lowered.cached_seconds <= lowered.pass_seconds + lowered.build_seconds


def test_c_and_cuda_backends_make_the_same_kernel_type_and_arguments():
    f = _mlp()
    program = f.lowered.program
    c_kernels, cuda_kernels = cpu.generate(program), cuda.generate(program)
    assert [type(k) for k in c_kernels + cuda_kernels] == [kernels.GeneratedKernel] * 2
    assert [(k.name, k.ops, k.arg_nodes) for k in c_kernels] == [(k.name, k.ops, k.arg_nodes) for k in cuda_kernels]
    assert c_kernels[0].ops == ["mul", "add", "tanh", "sum"]
    assert "__global__" in cuda_kernels[0].source and "__global__" not in c_kernels[0].source


def test_an_in_place_store_shares_its_donors_argument():
    w = eager.ones(4, 4)
    program = compiler.compile(lambda x: ((x @ w) * 2 + 1).exp() @ w, eager.ones(4, 4)).lowered.program
    (stored, donor), = program.memory.in_place.items()
    k = next(k for k in program.kernels.values() if any(s.node.id == stored for s in k.stores))
    args = kernels.arguments(k, program.memory)
    assert args.index[stored] == args.index[donor] == 0
    assert [n.id for n in args.nodes] == [donor]


def test_a_backend_is_one_row_of_the_builder_table(monkeypatch):
    built = []

    def interpret(program, graph, device, static):
        built.append(program)
        ex = Executable(program, None, "interpreted")
        ex.kernels = []
        return ex
    monkeypatch.setitem(api.BUILDERS, "interpreted", interpret)
    f = compiler.compile(lambda x: (x * 3).exp(), eager.zeros(2), backend="interpreted")
    assert f.backend == "interpreted" and len(built) == 1 and built[0] is f.lowered.program
    assert f(eager.zeros(2)).tolist() == [1.0, 1.0]
    assert api.BACKENDS == ("c", "numpy", "cuda", "xla", "simt")


def test_unknown_backend_error_lists_the_builder_table():
    import tracer
    graph = tracer.trace(lambda x: x + 1, eager.ones(2)).graph
    with pytest.raises(ValueError, match=r"unknown backend 'fortran'; choose one of \('c', 'numpy', 'cuda'"):
        api.lower_graph(graph, backend="fortran")
