"""NVRTC, CUDA's runtime compiler, called directly: CUDA source to PTX as ``cupy.RawModule`` builds it, on a
machine without a GPU (NVRTC needs no device; only loading the PTX would).

nvcc accepts things NVRTC does not (host headers such as ``<cmath>``, macros like ``INFINITY`` that come from
them), so a kernel that nvcc builds can still fail in CuPy on its first GPU. The tests compile every generated
module through NVRTC with the backend's own options; the library comes from the ``nvidia-cuda-nvrtc`` wheel (the
``test`` extra on Linux) or a CUDA toolkit.

    >>> ptx = compile_ptx('extern "C" __global__ void k(float* p) { p[threadIdx.x] = expf(1.0f); }')  # doctest: +SKIP
    >>> ".entry k" in ptx  # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import os

ARCH = "compute_90"  # the H100's; CuPy passes the device's own


class NvrtcError(RuntimeError):
    """NVRTC rejected a source; the message holds its log."""


@functools.cache
def library() -> ctypes.CDLL | None:
    """The NVRTC library, or None where it is not installed."""
    candidates = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
    for home in filter(None, [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]):
        candidates += sorted(glob.glob(os.path.join(home, "lib*", "libnvrtc.so*")))
    candidates = [c for c in candidates if "builtins" not in c and ".alt." not in c]
    for path in candidates:
        try:
            # NVRTC dlopens its builtins library by name at the first compile: load it from beside it first
            for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))):
                if ".alt." not in builtins:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, c, i, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(p), c, c, i, ctypes.POINTER(c), ctypes.POINTER(c)]
    lib.nvrtcCompileProgram.argtypes = [p, i, ctypes.POINTER(c)]
    lib.nvrtcGetProgramLogSize.argtypes = [p, ctypes.POINTER(sz)]
    lib.nvrtcGetProgramLog.argtypes = [p, c]
    lib.nvrtcGetPTXSize.argtypes = [p, ctypes.POINTER(sz)]
    lib.nvrtcGetPTX.argtypes = [p, c]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(p)]
    lib.nvrtcGetErrorString.restype = c


def compile_ptx(source: str, options: tuple[str, ...] = ("--std=c++17",), arch: str = ARCH,
                name: str = "graphduel.cu") -> str:
    """PTX of ``source`` compiled by NVRTC with ``options`` (plus ``-arch``); NvrtcError with the log otherwise."""
    lib = library()
    if lib is None:
        raise NvrtcError("NVRTC is not installed (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None), "create")
    try:
        opts = [f"-arch={arch}".encode(), *(o.encode() for o in options)]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        if status != 0:
            raise NvrtcError(f"NVRTC rejected the source ({lib.nvrtcGetErrorString(status).decode()}):\n"
                             f"{_log(lib, prog)}")
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, ptx), "PTX")
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _log(lib, prog) -> str:
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    return log.value.decode(errors="replace")[-4000:]


def _check(lib, status: int, what: str) -> None:
    if status != 0:
        raise NvrtcError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(status).decode()}")
