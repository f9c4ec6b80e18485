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

from compiler.codegen import c as cgen
from compiler.runtime import cache, kernels
from compiler.runtime.executor import Executable
from compiler.runtime.kernels import GeneratedKernel
from compiler.runtime.pointers import address
from tracer.ir import CONSTANT

_warned_no_compiler = False


def generate(program) -> list[GeneratedKernel]:
    """The program's kernels rendered to C."""
    return kernels.generate(program, cgen.render_function)


def module_source(generated: list[GeneratedKernel]) -> str:
    return kernels.module_source(cgen.header(), generated)


def _announce_fallback(reason: str) -> None:
    global _warned_no_compiler
    if not _warned_no_compiler:
        _warned_no_compiler = True
        warnings.warn(f"graphduel.compiler: {reason}; running fused kernels with the NumPy fallback backend "
                      "(same fusion groups, preallocated buffers, no native code). Install a C compiler "
                      "(gcc/clang) or set CC to use native kernels.", RuntimeWarning, stacklevel=4)


def build_executable(program, fallback_ok: bool = True) -> Executable:
    """The executable of ``program`` on native C kernels; without a C compiler, on the NumPy fallback (unless
    ``fallback_ok`` is False: then ``cache.NoCompiler`` is raised)."""
    from compiler.runtime.loops import control_step
    generated = generate(program)
    if not generated:
        ex = Executable(program, None, "cpu", control_step=control_step)
        ex.kernels, ex.library, ex.lib = [], None, None
        return ex
    try:
        lib, path = cache.load_library(module_source(generated))
    except cache.NoCompiler as e:
        if not fallback_ok:
            raise
        _announce_fallback(str(e))
        ex = Executable(program, None, "numpy")
        ex.kernels, ex.library = generated, None
        return ex
    by_group = {k.ir.group.id: k for k in generated}

    def kernel_step(k, step, ex: Executable):  # k: the group's kernel IR
        kernel = by_group[step.group.id]
        fn = getattr(lib, kernel.name)
        fn.argtypes = [ctypes.c_void_p]
        fn.restype = None
        ptrs = (ctypes.c_void_p * len(kernel.arg_nodes))()
        dynamic, pooled = [], []
        memory = program.memory
        for pos, n in enumerate(kernel.arg_nodes):
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

    ex = Executable(program, kernel_step, "cpu", control_step=control_step)
    ex.kernels, ex.library, ex.lib = generated, path, lib
    return ex
