"""The fake CuPy's own specification: the CuPy rules it exists to enforce. Runs in the child pytest of
tests/test_fake_gpu.py, where ``import cupy`` finds the fake; skipped anywhere else."""

from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
pytestmark = [pytest.mark.fakegpu,
              pytest.mark.skipif(not getattr(cupy, "IS_FAKE", False), reason="runs against the fake CuPy only")]


def _capture(work):
    """Run ``work()`` while a fresh stream captures; returns the graph and what ``work`` returned."""
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        result = work()
        return stream.end_capture(), result


def test_device_arrays_never_cross_to_the_host_implicitly():
    a = cupy.arange(4, dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(4, np.float32)
    assert (a + np.float32(1)).get().tolist() == [1, 2, 3, 4]  # scalars are fine
    assert cupy.asarray(np.ones(2)).get().tolist() == [1, 1] and cupy.asnumpy(a).tolist() == [0, 1, 2, 3]


def test_numpy_functions_on_device_arrays_run_on_the_device():
    a = cupy.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.sum(a, axis=0)
    assert isinstance(s, cupy.ndarray) and s.get().tolist() == [3, 5, 7]
    assert isinstance(cupy.ndarray.transpose(a, (1, 0)), cupy.ndarray)


def test_fresh_memory_is_garbage_not_zeros():
    assert np.isnan(cupy.empty(3, np.float32).get()).all()


def test_capture_records_work_and_the_graph_runs_it():
    x = cupy.ones(3, np.float32)
    def work():
        y = x * 2
        np.add(x, 1, out=x)  # in place: recorded, not run
        return y
    graph, y = _capture(work)
    assert np.isnan(y.get()).all() and x.get().tolist() == [1, 1, 1]
    graph.launch()
    assert y.get().tolist() == [2, 2, 2] and x.get().tolist() == [2, 2, 2]
    graph.launch()
    assert y.get().tolist() == [4, 4, 4] and x.get().tolist() == [3, 3, 3]


def test_what_cupy_refuses_while_capturing_is_an_error():
    a, host = cupy.ones((2, 2), np.float32), np.ones(2, np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            with pytest.raises(RuntimeError, match="capturing, so D2H"):
                float(a.sum())
            with pytest.raises(RuntimeError, match="capturing, so H2D"):
                cupy.asarray(host)
            with pytest.raises(RuntimeError, match="capturing, so D2H"):
                a[a > 0]  # the result's size depends on the data
            with pytest.raises(NotImplementedError, match="cuBLAS"):
                a @ a
            with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="capturing"):
                cupy.cuda.Device().synchronize()
        finally:
            stream.end_capture()


def test_host_arrays_fill_device_arrays_only_where_cupy_allows():
    a = cupy.zeros(3, np.float32)
    with pytest.raises(ValueError, match="fill"):
        a[...] = np.ones(3, np.float32)
    a[np.array([0, 2])] = np.array([1.0, 2.0], np.float32)  # an advanced index copies the values over
    assert a.get().tolist() == [1, 0, 2]
    with pytest.raises(ValueError):
        cupy.copyto(a, np.ones(3, np.float32))


def test_capturing_needs_its_own_stream_for_all_work():
    with pytest.raises(cupy.cuda.runtime.CUDARuntimeError):
        cupy.cuda.Stream.null.begin_capture()
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.begin_capture()  # not made current: work below goes to the default stream
    try:
        with pytest.raises(cupy.cuda.runtime.CUDARuntimeError, match="another stream"):
            cupy.ones(2) * 2
    finally:
        stream.end_capture()


def test_launching_a_graph_whose_memory_was_released_is_an_error():
    x = cupy.ones(3, np.float32)
    graph, (y, z) = _capture(lambda: (lambda y: (y, y + 1))(x * 2))
    graph.launch()
    assert z.get().tolist() == [3, 3, 3]
    del y  # the pool may now hand y's memory to someone else, while each launch still writes it
    with pytest.raises(RuntimeError, match="released"):
        graph.launch()


def test_kernels_run_under_the_emulator_and_are_recorded_when_capturing():
    src = ('extern "C" __global__ void twice(const float* __restrict__ a, float* __restrict__ b) {'
           '  b[threadIdx.x] = 2 * a[threadIdx.x]; }')
    kernel = cupy.RawModule(code=src, options=("--std=c++17", "--fmad=false")).get_function("twice")
    a, b = cupy.arange(4, dtype=np.float32), cupy.zeros(4, np.float32)
    kernel((1,), (4,), (a, b))
    assert b.get().tolist() == [0, 2, 4, 6]
    with pytest.raises(TypeError, match="CuPy array"):
        kernel((1,), (4,), (np.zeros(4, np.float32), b))
    with pytest.raises(ValueError, match="NVRTC option"):
        cupy.RawModule(code=src, options=("--fast-math-typo",))


def test_out_of_range_index_arrays_wrap_around_as_on_cupy():
    a = cupy.arange(3, dtype=np.float32)
    assert a[cupy.asarray(np.array([5, -4]))].get().tolist() == [2, 2]
    b = cupy.zeros(3, np.float32)
    cupy.add.at(b, cupy.asarray(np.array([4, 4])), cupy.ones(2, np.float32))
    assert b.get().tolist() == [0, 2, 0]


def test_writes_without_out_keyword_are_recorded_not_run_while_capturing():
    x, o = cupy.ones(3, np.float32), cupy.zeros(3, np.float32)
    graph = _capture(lambda: cupy.multiply(x, 2, o))[0]  # a positional out
    assert o.get().tolist() == [0, 0, 0]
    graph.launch()
    assert o.get().tolist() == [2, 2, 2]


@pytest.mark.parametrize("workload", ["mlp_train_adam", "gan_step", "classifier_train", "attention_block"])
@pytest.mark.parametrize("mode", ["traced", "compiled", "compiled+graph"])
def test_static_cuda_steps_neither_copy_to_the_host_nor_wait_per_call(workload, mode):
    """A traced or compiled step on cuda enqueues work and returns: no device-to-host copy, no host-to-device
    copy, no synchronisation per call (each would stall the GPU pipeline and distort every GPU timing); found:
    an index bounds check that synced 4 times per compiled train step."""
    import compare.workloads  # noqa: F401  (registers the workloads)
    from compare.modes import MODES
    from compare.workloads.registry import REGISTRY
    wl = REGISTRY[workload]
    runner = MODES[mode].prepare(wl, wl.make_inputs("small"), "cuda")
    run = runner.program.fn if mode == "eager" else runner.handle
    args = runner.program.args
    for _ in range(2):
        run(*args)
    before = dict(cupy._device.TRANSFERS)
    for _ in range(3):
        run(*args)
    assert cupy._device.TRANSFERS == before, {k: cupy._device.TRANSFERS[k] - v for k, v in before.items()}


def test_a_graph_needs_the_memory_it_uses_from_before_its_capture_too():
    x = cupy.ones(3, np.float32)
    held = [cupy.empty(3, np.float32)]  # allocated before the capture
    graph = _capture(lambda: cupy.multiply(x, 2, out=held[0]))[0]
    graph.launch()
    held.clear()
    with pytest.raises(RuntimeError, match="released"):
        graph.launch()


def test_every_host_device_copy_and_wait_is_counted_once():
    x = cupy.arange(5, dtype=np.float32)
    counts = cupy._device.TRANSFERS

    def delta(fn):
        before = dict(counts)
        fn()
        return {k: counts[k] - v for k, v in before.items() if counts[k] != v}
    assert delta(lambda: cupy.nonzero(x > 2)) == {"D2H": 1}  # its result's size is on the device
    assert delta(lambda: cupy.unique(x)) == {"D2H": 1}
    assert delta(lambda: cupy.array([1.0, 2.0])) == {"H2D": 1}
    assert delta(lambda: cupy.asarray(3.0)) == {"H2D": 1}
    assert delta(lambda: x[np.array([0, 1])]) == {"H2D": 1}
    assert delta(lambda: float(x[0])) == {"D2H": 1}
    assert delta(lambda: x * 2 + 1) == {}
