"""CPU backend: every kernel of a program rendered to C, built into one shared library (cached on disk),
called through ctypes with one ``void**`` argument (pointers that never change are filled in once).

Without a C compiler the NumPy fallback runs the same groups with the same preallocated buffers; that is
announced once per process.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.program import build
    >>> import numpy as np
    >>> ex = build_executable(build(dup_graph()))
    >>> ex.run([np.zeros(4, np.float32)])[0].tolist()
    [2.0, 2.0, 2.0, 2.0]
"""

from __future__ import annotations

import ctypes
import warnings
from dataclasses import dataclass

from compiler.codegen import c as cgen
from compiler.runtime import cache
from compiler.runtime.executor import Executable
from tracer.ir import CONSTANT

_warned_no_compiler = False
_from_buffer, _addressof = ctypes.c_byte.from_buffer, ctypes.addressof


def address(a) -> int:
    """The data pointer of a C-contiguous array. Through the buffer protocol it costs 0.3 us against 0.9 us for
    ``a.ctypes.data``, which adds up over the few arguments of each of a step's kernels; read-only and empty
    arrays export no writable buffer and take the slow path."""
    try:
        return _addressof(_from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data


@dataclass
class CKernel:
    """One generated kernel: its name, C source, and the IR nodes it fuses."""

    name: str
    source: str
    ir: object
    arg_nodes: list

    @property
    def ops(self) -> list[str]:
        return [m.op for m in self.ir.group.members]


def arg_map(k, memory) -> tuple[dict[int, int], list]:
    """One argument per distinct buffer: an in-place store shares its donor's argument."""
    arg_of: dict[int, int] = {}
    nodes = []
    for n in k.buffers:
        arg_of[n.id] = len(nodes)
        nodes.append(n)
    for s in k.stores:
        donor = memory.in_place.get(s.node.id)
        if donor is not None and donor in arg_of:
            arg_of[s.node.id] = arg_of[donor]
        else:
            arg_of[s.node.id] = len(nodes)
            nodes.append(s.node)
    return arg_of, nodes


def render_kernels(program, render_function, make) -> list:
    """One generated kernel per fused group of ``program``, named after its ops (shared by the C and CUDA
    backends, which differ only in ``render_function`` and the kernel class ``make``)."""
    kernels = []
    for step in program.steps:
        if step.kind != "kernel":
            continue
        k = program.kernels[step.group.id]
        name = f"k{step.group.id}_" + "_".join(dict.fromkeys(m.op for m in step.group.members))[:48]
        arg_of, nodes = arg_map(k, program.memory)
        kernels.append(make(name, render_function(k, name, arg_of), k, nodes))
    return kernels


def generate(program) -> list[CKernel]:
    return render_kernels(program, cgen.render_function, CKernel)


def module_source(kernels: list[CKernel]) -> str:
    return cgen.header() + "\n" + "\n".join(k.source for k in kernels)


def _announce_fallback(reason: str) -> None:
    global _warned_no_compiler
    if not _warned_no_compiler:
        _warned_no_compiler = True
        warnings.warn(f"graphduel.compiler: {reason}; running fused kernels with the NumPy fallback backend "
                      "(same fusion groups, preallocated buffers, no native code). Install a C compiler "
                      "(gcc/clang) or set CC to use native kernels.", RuntimeWarning, stacklevel=4)


def build_executable(program, fallback_ok: bool = True) -> Executable:
    kernels = generate(program)
    if not kernels:
        ex = Executable(program, None, "cpu")
        ex.kernels, ex.library = [], None
        return ex
    try:
        lib, path = cache.load_library(module_source(kernels))
    except cache.NoCompiler as e:
        if not fallback_ok:
            raise
        _announce_fallback(str(e))
        ex = Executable(program, None, "numpy")
        ex.kernels, ex.library = kernels, None
        return ex
    by_group = {k.ir.group.id: k for k in kernels}

    def kernel_step(k, step, ex: Executable):
        ck = by_group[step.group.id]
        fn = getattr(lib, ck.name)
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = None
        ptrs = (ctypes.c_void_p * len(ck.arg_nodes))()
        dynamic, pooled = [], []
        memory = program.memory
        for pos, n in enumerate(ck.arg_nodes):
            i = ex.index[n.id]
            if n.op == CONSTANT or memory.kind.get(n.id) == "slot":
                ptrs[pos] = ex.env_template[i].ctypes.data
            elif memory.kind.get(n.id) == "output" and any(s.node.id == n.id for s in k.stores):
                pooled.append((pos, i, ex.pools[i]))
            else:
                dynamic.append((pos, i))
        call = fn

        def run(env):
            for pos, i in dynamic:
                ptrs[pos] = address(env[i])
            for pos, i, pool in pooled:
                env[i], ptrs[pos] = pool.take_with_pointer()
            call(ptrs)
        return run

    ex = Executable(program, kernel_step, "cpu")
    ex.kernels, ex.library = kernels, path
    return ex
