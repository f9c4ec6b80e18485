"""Test helpers: capture a pure function of tensors into a Graph without the tracer, and a float64
reference evaluator. Used by the compiler's unit tests so passes and codegen are tested on their own.

    >>> import eager
    >>> g = capture(lambda x: (x * 2).exp(), eager.ones(3))
    >>> [n.op for n in g.calls]
    ['mul', 'exp']
"""

from __future__ import annotations

import numpy as np

from eager.autograd.mode import add_recorder
from eager.primitives import PRIMITIVES, Aval
from eager.tensor import Tensor
from tracer.interpret import Rule, evaluate
from tracer.ir import Graph, Node


class _Capture:
    def __init__(self, graph: Graph, inputs):
        self.g = graph
        self.nodes: dict[int, Node] = {}
        self.keep = list(inputs)
        for i, t in enumerate(inputs):
            self.nodes[id(t)] = graph.placeholder(f"x{i}", Aval(tuple(t.shape), t.dtype))

    def node(self, x):
        if not isinstance(x, Tensor):
            return x
        if id(x) not in self.nodes:
            self.keep.append(x)
            self.nodes[id(x)] = self.g.constant(np.array(x._data))
        return self.nodes[id(x)]

    def record(self, prim, inputs, params, out):
        args = tuple(self.node(x) for x in inputs)
        self.keep.append(out)
        self.nodes[id(out)] = self.g.call(prim.name, args, params, Aval(tuple(out.shape), out.dtype))

    def mutate(self, x, new):
        self.nodes[id(x)] = self.nodes[id(new)]

    def escape(self, *a):
        pass


def capture(fn, *inputs) -> Graph:
    """Run ``fn(*inputs)`` once, recording every primitive; returns the validated graph of its outputs."""
    g = Graph()
    rec = _Capture(g, inputs)
    with add_recorder(rec):
        out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    g.outputs = [rec.node(o) for o in outs]
    return g.validate()


class _WideRule(Rule):
    """Primitive impls on NumPy with every floating value (inputs, constants, casts, fills) in ``dtype``."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def _up(self, a):
        a = np.asarray(a)
        return a.astype(self.dtype) if a.dtype.kind == "f" else a

    def placeholder(self, node: Node, value):
        return self._up(value)

    def constant(self, node: Node):
        return self._up(node.value)

    def call(self, node: Node, args: list):
        params = node.params
        if node.op in ("cast", "full") and node.dtype.kind == "f":
            params = {**params, "dtype": self.dtype}
        return np.asarray(PRIMITIVES[node.op].impl(np, *args, **params))


def reference(graph: Graph, arrays: list, dtype=np.float64) -> list[np.ndarray]:
    """Evaluate the graph with NumPy, every floating value in ``dtype`` (the float64 judge)."""
    return evaluate(graph, arrays, _WideRule(dtype))


def cuda_compilers() -> list[str]:
    """The CUDA compilers this machine has for source checks: ``nvcc`` and/or ``nvrtc`` (what CuPy uses)."""
    import shutil

    from compiler import nvrtc
    return [name for name, ok in (("nvcc", shutil.which("nvcc") is not None),
                                  ("nvrtc", nvrtc.library() is not None)) if ok]


def cuda_compile_check(sources: list[str]) -> str | None:
    """Compile CUDA sources with every compiler present: ``nvcc -c`` for sm_80, and NVRTC with the cuda backend's
    own options, as ``cupy.RawModule`` would (it rejects host headers and macros nvcc lets through). Returns the
    first error text, or None when all built (or none is installed: check ``cuda_compilers()``)."""
    import os
    import shutil
    import subprocess
    import tempfile

    from compiler import nvrtc
    from compiler.runtime.cuda import NVRTC_OPTIONS
    source = "\n".join(sources)
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "kernels.cu")
            with open(src, "w") as f:
                f.write(source)
            proc = subprocess.run([nvcc, "-c", "-arch=sm_80", "-std=c++17", "--fmad=false", src, "-o",
                                   os.path.join(d, "k.o")], capture_output=True, text=True)
            if proc.returncode != 0:
                return "nvcc: " + proc.stderr[-4000:]
    if nvrtc.library() is not None:
        try:
            nvrtc.compile_ptx(source, NVRTC_OPTIONS)
        except nvrtc.NvrtcError as e:
            return str(e)
    return None


def cuda_module_source(program) -> str:
    """The CUDA module a program would load on a GPU (for compile checks on machines without one)."""
    from compiler.runtime.cuda import generate, module_source
    return module_source(generate(program))
