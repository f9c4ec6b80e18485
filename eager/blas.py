"""NumPy's own BLAS, for the one call NumPy does not expose: axpy (``y += a * x`` in one pass over y's memory).

Found in the OpenBLAS NumPy loaded (the library whose thread pool NumPy's matmul uses, so ``BlasThreads`` governs it
too; SciPy's BLAS is a second OpenBLAS with a pool of its own, which spins against NumPy's). Without it (another
BLAS vendor) ``axpy`` returns False and callers use two NumPy calls.

    >>> import numpy as np
    >>> y = np.ones(3, np.float32)
    >>> axpy(-0.5, np.full(3, 2.0, np.float32), y), y.tolist()
    (True, [0.0, 0.0, 0.0])
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np


@functools.cache
def openblas_library() -> ctypes.CDLL | None:
    """The OpenBLAS shared library NumPy loaded (from /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: ("numpy" not in p, p)):  # NumPy's, not SciPy's own copy
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@functools.cache
def _axpy_functions() -> dict:
    lib = openblas_library()
    out = {}
    for dtype, ctype, names in ((np.dtype(np.float32), ctypes.c_float, ("scipy_cblas_saxpy64_", "cblas_saxpy")),
                                (np.dtype(np.float64), ctypes.c_double, ("scipy_cblas_daxpy64_", "cblas_daxpy"))):
        name = next((n for n in names if lib is not None and hasattr(lib, n)), None)
        if name is not None:
            fn = getattr(lib, name)
            index = ctypes.c_int64 if name.endswith("64_") else ctypes.c_int  # OpenBLAS's ILP64 build: 64-bit sizes
            fn.argtypes = [index, ctype, ctypes.c_void_p, index, ctypes.c_void_p, index]
            fn.restype = None
            out[dtype] = fn
    return out


def axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> bool:
    """``y += alpha * x`` in y's memory (both C-contiguous, one float dtype, one size); False when not available."""
    fn = _axpy_functions().get(y.dtype)
    if fn is None or x.dtype != y.dtype or x.size != y.size or not (x.flags.c_contiguous and y.flags.c_contiguous):
        return False
    fn(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
    return True
