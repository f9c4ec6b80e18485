"""The compile report: what fusion did and how fast each kernel runs, as a pandas DataFrame.

Per kernel: ops fused, source lines, bytes read and written (each buffer counted once), measured time,
effective GB/s, and percent of this machine's measured copy bandwidth. Totals (``df.attrs``): kernels vs
eager ops, trace time, compile time cold and, estimated, with a warm kernel cache (``compile_cached_est_s``:
this compile without the native compiler's time; ``compare``'s harness measures a real second compile instead).
Everything but the timings is what the compile recorded (``compiler.api.Lowered``): the report compiles nothing.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time

import numpy as np

COPY_BYTES = {"cpu": 1 << 26, "cuda": 1 << 30}  # per buffer: well past the CPU's last-level cache / the GPU's L2


@functools.cache
def copy_bandwidth_gbs(device: str = "cpu", repeat: int = 10) -> float:
    """Measured memory copy bandwidth of ``device`` (read + write bytes per second), the roofline for fused
    kernels; measured once per process. On the CPU every core copies its own chunk (NumPy releases the GIL;
    one core alone copied 40-43 GB/s where two copied 45-56 on the project's machine, and our kernels use all
    cores). On cuda: a 1 GiB device-to-device copy between two synchronisations."""
    if device == "cuda":
        import cupy
        nbytes = COPY_BYTES["cuda"]
        src = cupy.ones(nbytes // 4, np.float32)
        dst = cupy.empty_like(src)
        sync = cupy.cuda.Device().synchronize
        return _best_copy(lambda: cupy.copyto(dst, src), sync, nbytes, repeat)
    from concurrent.futures import ThreadPoolExecutor
    nbytes = COPY_BYTES["cpu"]
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    workers = max(1, min(os.cpu_count() or 1, 16))
    bounds = np.linspace(0, src.size, workers + 1).astype(int)
    chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(workers) as pool:
        def copy():
            for f in [pool.submit(np.copyto, d, s) for d, s in chunks]:
                f.result()
        return _best_copy(copy, lambda: None, nbytes, repeat)


def _best_copy(copy, sync, nbytes: int, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):  # the first copy also faults pages in
        sync()
        t = time.perf_counter()
        copy()
        sync()
        times.append(time.perf_counter() - t)
    return 2 * nbytes / min(times[1:]) / 1e9


def _nbytes(n) -> int:
    return math.prod(n.shape) * n.dtype.itemsize


def kernel_bytes(k) -> tuple[int, int]:
    """Bytes read (each input buffer once) and written by one kernel."""
    return sum(_nbytes(b) for b in k.buffers), sum(_nbytes(s.node) for s in k.stores)


def report(compiled, repeat: int = 5, show: bool = True):
    """The report of ``compiled`` (a ``compiler.Compiled``) from what its compile recorded (``Lowered``): it
    compiles nothing; it runs the steps ``repeat`` times on the first call's inputs to time them."""
    import pandas as pd

    lowered = compiled.lowered
    steps = lowered.program.steps
    seconds = _step_seconds(lowered, repeat)
    bandwidth = copy_bandwidth_gbs(lowered.device)
    df = pd.DataFrame([_step_row(lowered, step, float("nan") if seconds is None else seconds[i], bandwidth)
                       for i, step in enumerate(steps)])
    df.attrs.update(_totals(compiled, df, bandwidth, timed=seconds is not None))
    if show:
        _print(df)
    return df


def _step_seconds(lowered, repeat: int) -> list[float] | None:
    """Each step's mean time over ``repeat`` timed runs on the first call's inputs; None where the executable
    cannot time its steps (XLA) or was never called."""
    ex = lowered.executable
    if lowered.example is None or not hasattr(ex, "run_timed"):
        return None
    ex.step_seconds = [0.0] * len(ex.steps)
    ex.run_timed(lowered.example, repeat=repeat)
    return [t / repeat for t in ex.step_seconds]


def _step_row(lowered, step, seconds: float, bandwidth: float) -> dict:
    if step.kind == "kernel":
        generated = next((k for k in lowered.kernels if k.ir.group.id == step.group.id), None)
        read, written = kernel_bytes(lowered.program.kernels[step.group.id])
        name = generated.name if generated else f"kernel{step.group.id}"
        ops = ", ".join(m.op for m in step.group.members)
        lines = len(generated.source.splitlines()) if generated else 0
    else:
        read = sum(_nbytes(a) for a in step.node.inputs if a.shape is not None)
        written = 0 if step.node.shape is None else _nbytes(step.node)  # a control node's results are its result nodes
        name, ops, lines = f"{step.kind}:{step.node.op}", step.node.op, 0
        loop = next((lp for lp in getattr(lowered.executable, "loops", []) if lp.node.id == step.node.id), None)
        if loop is not None and loop.native:
            name, lines = f"loop:{step.node.op}", len(loop.source.splitlines())
    gbs = (read + written) / seconds / 1e9 if seconds > 0 else float("nan")  # NaN (untimed) > 0 is False
    return {"step": name, "kind": step.kind, "ops": ops, "n_ops": len(ops.split(", ")), "source_lines": lines,
            "bytes_read": read, "bytes_written": written, "time_us": seconds * 1e6, "GB/s": gbs,
            "%copy_bw": 100 * gbs / bandwidth}


def _totals(compiled, df, bandwidth: float, timed: bool) -> dict:
    lowered = compiled.lowered
    program = lowered.program
    return {
        "kernels": sum(1 for s in program.steps if s.kind == "kernel"),
        "steps": len(program.steps),
        "eager_ops": len(lowered.source_graph.calls),
        "ops_after_passes": len(lowered.graph.calls),
        "trace_s": compiled.trace_seconds,
        "compile_cold_s": compiled.compile_seconds,
        "compile_cached_est_s": lowered.cached_seconds,
        "copy_bandwidth_GBs": bandwidth,
        "backend": lowered.backend,
        "blas_threads": _blas_threads(lowered.executable),
        "loops": [repr(loop) for loop in getattr(lowered.executable, "loops", [])],
        "total_time_us": float(np.nansum(df["time_us"])) if len(df) else 0.0,
        "median_step_us": statistics.median(df["time_us"]) if timed and len(df) else float("nan"),
    }


def _print(df) -> None:
    import pandas as pd
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    a = df.attrs
    print(f"{a['kernels']} kernels ({a['steps']} steps) for {a['eager_ops']} eager ops "
          f"({a['ops_after_passes']} after passes); trace {a['trace_s'] * 1e3:.1f} ms, compile cold "
          f"{a['compile_cold_s'] * 1e3:.1f} ms, cached (est.) {a['compile_cached_est_s'] * 1e3:.1f} ms; copy bandwidth "
          f"{a['copy_bandwidth_GBs']:.1f} GB/s; backend {a['backend']}; BLAS threads {a['blas_threads']}")
    for loop in a["loops"]:
        print(loop)


def _blas_threads(ex) -> str:
    """How the executable threads its BLAS calls, in words: "2 (tuned)", "1 (fixed)", "BLAS default"."""
    from compiler.runtime.blas import current_threads
    tuner = getattr(ex, "blas_tuner", None)
    if tuner is not None:
        if not tuner.decided:
            return "tuning"
        count = tuner.best or current_threads() or "default"
        return f"{count} (tuned)"
    mode = getattr(ex, "blas_threads", None)
    return "BLAS default" if mode is None else f"{mode} (fixed)"
