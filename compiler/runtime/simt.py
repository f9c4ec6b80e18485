"""Run generated CUDA on the CPU: a stand-in for ``cupy.RawModule`` built by the host C++ compiler against a
SIMT emulator (``simt.h``: each block's threads are fibers, switched at ``__syncthreads`` and warp shuffles).

It executes the very source the cuda backend would hand to NVRTC, launched with the same grid and block, so the
kernels' indexing, grid-stride loops, block reductions and float4 paths are checked on machines without a GPU
(CI). A barrier or shuffle in divergent code is reported as the deadlock it would be; running the threads in
reverse order exposes shared-memory races. It is slow (a context switch per thread per barrier): for tests and
for reading kernels, not for timing. What it cannot prove: NVRTC itself, the GPU's math library, timing.

    >>> src = 'extern "C" __global__ void twice(const float* __restrict__ a, float* __restrict__ b) {' \\
    ...       '  b[threadIdx.x] = 2 * a[threadIdx.x]; }'
    >>> import numpy as np
    >>> a, b = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    >>> SimtModule(src).get_function("twice")((1,), (4,), (a, b))
    >>> b.tolist()
    [0.0, 2.0, 4.0, 6.0]
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
from pathlib import Path

from compiler.runtime import cache
from compiler.runtime.pointers import address

FLAGS = ["-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing"]
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


class SimtError(RuntimeError):
    """A kernel did something a GPU would hang or misbehave on (divergent barrier or shuffle)."""


@functools.cache
def runtime_source() -> str:
    """simt.h with its ``using std::`` line generated from the op table (every C function a CUDA template calls)."""
    from compiler.codegen.dialect import CUDA, cxx_using_line
    return (Path(__file__).with_name("simt.h")).read_text().replace("GD_USING_STD", cxx_using_line(CUDA), 1)


def cxx_compiler() -> str | None:
    """The C++ compiler: ``$CXX`` (may be a full path) or ``c++``; None when it cannot be found."""
    return shutil.which(os.environ.get("CXX") or "c++")


class SimtModule:
    """Compiles CUDA ``code`` for the emulator. ``direct``: names of kernels that never synchronise, run one
    thread after another without fibers (much faster; reaching a barrier is then an error). ``reverse``: run
    each block's threads last to first."""

    def __init__(self, code: str, direct: frozenset[str] | set[str] = frozenset(), reverse: bool = False):
        self.names = _KERNEL.findall(code)
        self.direct, self.reverse = frozenset(direct), reverse
        launchers = "\n".join(f"GD_SIMT_LAUNCHER({name})" for name in self.names)
        cxx = cxx_compiler()
        if cxx is None:
            raise cache.NoCompiler(f"simt: no C++ compiler found (CXX={os.environ.get('CXX') or 'c++'})")
        self.library, self.path = cache.load_library(runtime_source() + "\n" + code + "\n" + launchers + "\n", FLAGS,
                                                     cxx, suffix=".cpp")
        self.library.gd_simt_error.restype = ctypes.c_char_p

    def get_function(self, name: str) -> SimtFunction:
        if name not in self.names:
            raise KeyError(f"simt: no kernel {name!r} in this module (it has {self.names})")
        return SimtFunction(self, name)


class SimtFunction:
    """Called like a ``cupy.RawKernel``: ``fn(grid, block, args)`` with 1-D grid and block tuples and NumPy
    arrays (C-contiguous) as arguments."""

    def __init__(self, module: SimtModule, name: str):
        self.module, self.name = module, name
        self.launch = getattr(module.library, f"gd_launch_{name}")
        self.launch.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.launch.restype = ctypes.c_int
        self.fibers = name not in module.direct

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        if len(grid) != 1 or len(block) != 1:
            raise ValueError(f"simt: kernel {self.name} launched with grid {grid} and block {block}; only 1-D "
                             "launches are emulated")
        if int(grid[0]) < 1 or int(block[0]) < 1:
            raise SimtError(f"simt: kernel {self.name} launched with grid {grid} and block {block}: CUDA rejects "
                            "an empty launch (CUDA_ERROR_INVALID_VALUE)")
        pointers = (ctypes.c_void_p * max(1, len(args)))(*[address(a) for a in args])
        if self.launch(int(grid[0]), int(block[0]), pointers, int(self.module.reverse), int(self.fibers)):
            raise SimtError(f"simt: kernel {self.name}: {self.module.library.gd_simt_error().decode()}")
