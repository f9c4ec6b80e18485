"""Thread control for NumPy's BLAS (OpenBLAS) around small matmuls.

A small matmul (a 64x784x256 layer) gains little from a second BLAS thread and loses a lot when the other core
is busy: OpenBLAS threads wait on each other (measured on a loaded 2-core machine: the MLP train step took
12-40 ms with 2 BLAS threads, 1.4 ms with one). Programs whose matmuls are all small run their BLAS calls on
one thread; ``GRAPHDUEL_BLAS_SMALL_FLOPS`` moves the threshold (0 disables the control).

    >>> small_matmul_flops() > 0
    True
"""

from __future__ import annotations

import ctypes
import functools
import os

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


def small_matmul_flops() -> int:
    return int(os.environ.get("GRAPHDUEL_BLAS_SMALL_FLOPS", 1 << 26))


@functools.cache
def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy loaded, or None."""
    import numpy  # noqa: F401  (loads its BLAS)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
            return setter, getter
    return None


class BlasThreads:
    """``with BlasThreads(1): ...`` runs BLAS calls on one thread, restoring the count after (no-op without
    OpenBLAS or with ``n=None``)."""

    __slots__ = ("n", "saved", "api")

    def __init__(self, n: int | None):
        self.api = _openblas() if n is not None else None
        self.n, self.saved = n, None

    def __enter__(self):
        if self.api is not None:
            self.saved = self.api[1]()
            if self.saved != self.n:
                self.api[0](self.n)
        return self

    def __exit__(self, *exc):
        if self.api is not None and self.saved != self.n:
            self.api[0](self.saved)
        return False


def threads_for(program) -> int | None:
    """1 when every matmul of the program is small (see module docstring), else None (BLAS decides)."""
    limit = small_matmul_flops()
    flops = [2 * n.args[0].shape[-1] * _numel(n.shape) for s in program.steps if s.kind == "library"
             for n in [s.node]]
    return 1 if flops and limit and max(flops) < limit else None


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
