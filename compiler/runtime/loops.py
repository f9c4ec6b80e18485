"""Native loops: a ``scan`` or ``while_loop`` whose regions compiled to C runs as one C call per program call.

Without this, the host calls each region's executable once per trip (a Python loop over steps, about 30 us a
trip on this machine). ``control_step`` is the C backend's step for a control-flow node: it looks at the
regions' compiled programs and, when every step of them is a C kernel or a matmul (2-D, or a vector, float32 or
float64, operands transposed in place allowed), builds the driver (``compiler.codegen.loop``) and runs it; else
it says why not (``NativeLoop.reason``) and the host loop runs as before. ``cond`` stays a host branch: it
decides once per call, not once per trip, so there is no per-trip cost to remove.

What a loop needs from each region is resolved once here: which C expression names each value (``cur[k]``,
``x[j]``, ``p[i]``), every buffer's address (the regions' constants and slots, and one fixed buffer per value a
region returns), and the kernels' function pointers in the regions' own libraries.

    >>> import eager, compiler
    >>> def cumulative(xs):
    ...     return eager.scan(lambda c, x: (c + x, c * 2.0), eager.zeros(3), xs)
    >>> c = compiler.compile(cumulative, eager.ones(4, 3))
    >>> [loop.native for loop in c.lowered.executable.loops]
    [True]
    >>> [t.tolist() for t in c(eager.ones(4, 3))][0]
    [4.0, 4.0, 4.0]
"""

from __future__ import annotations

import ctypes
import functools
import time

import numpy as np

from compiler.codegen import loop as codegen
from compiler.runtime.blas import BlasThreads, ThreadTuner, threads_for
from tracer.ir import CONSTANT, Node, regions_of


class NotNative(Exception):
    """Why a loop stays on the host (the message is shown in the compiler's report)."""


@functools.cache
def _gemm_functions() -> tuple[dict[str, int], str] | None:
    """The addresses of NumPy's OpenBLAS cblas_sgemm / cblas_dgemm and its integer type, or None."""
    from eager.blas import openblas_library
    lib = openblas_library()
    if lib is None:
        return None
    out, index = {}, "int"
    for ctype, names in (("float", ("scipy_cblas_sgemm64_", "cblas_sgemm")),
                         ("double", ("scipy_cblas_dgemm64_", "cblas_dgemm"))):
        name = next((n for n in names if hasattr(lib, n)), None)
        if name is None:
            return None
        out[ctype] = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        index = "int64_t" if name.endswith("64_") else "int"
    return out, index


def _one_step(stacked: tuple, dim: int) -> tuple:
    """The shape of one trip's y, from the stacked shape (``dim`` may count from the end)."""
    d = dim % len(stacked)
    return stacked[:d] + stacked[d + 1:]


def _nbytes(n: Node) -> int:
    return int(np.prod(n.shape, dtype=np.int64)) * n.dtype.itemsize


class _Tables:
    """The driver's two tables as they are filled: ``p`` (buffer addresses; the per-call ones first, as
    ``LoopSource`` lays them out) and ``fn`` (function addresses), plus the arrays that must stay alive."""

    def __init__(self, per_call: int):
        self.addresses: list[int] = [0] * per_call
        self.functions: list[int] = []
        self.keep: list = []

    def buffer(self, array: np.ndarray) -> str:
        self.keep.append(array)
        self.addresses.append(array.ctypes.data)
        return f"p[{len(self.addresses) - 1}]"

    def function(self, address: int) -> int:
        if address not in self.functions:
            self.functions.append(address)
        return self.functions.index(address)


class _Layout:
    """How a region's step reads a value: the C expression of its buffer, and whether it is read transposed
    (a 2-D ``permute`` the matmul reads in place)."""

    __slots__ = ("ref", "transposed")

    def __init__(self, ref: str, transposed: bool = False):
        self.ref, self.transposed = ref, transposed


def _region_steps(lowered, inputs: list[str], tables: _Tables) -> tuple[list, list[str]]:
    """The driver's steps for one compiled region, and the C expression of each value it returns."""
    ex, program = lowered.executable, lowered.program
    if lowered.backend != "cpu" or program is None or (ex.kernels and getattr(ex, "lib", None) is None):
        raise NotNative(f"the region runs on the {lowered.backend} backend, not C kernels")
    graph = program.graph
    placeholders = graph.placeholders
    if len(placeholders) != len(inputs):
        raise NotNative("the region's compiled program has another number of inputs than the loop feeds it")
    where: dict[int, _Layout] = {p.id: _Layout(ref) for p, ref in zip(placeholders, inputs)}
    memory = program.memory
    for n in graph.nodes:
        if n.op == CONSTANT or memory.kind.get(n.id) == "slot":
            where[n.id] = _Layout(tables.buffer(ex.env_template[ex.index[n.id]]))
        elif memory.kind.get(n.id) == "output":
            where[n.id] = _Layout(tables.buffer(np.empty(n.shape, n.dtype)))
    by_group = {k.ir.group.id: k for k in ex.kernels}
    kernel_reads = _kernel_reads(program)
    steps: list = []
    for step in program.steps:
        if step.kind == "kernel":
            kernel = by_group[step.group.id]
            address = ctypes.cast(getattr(ex.lib, kernel.name), ctypes.c_void_p).value
            steps.append(codegen.Kernel(tables.function(address), [_read(where, a, kernel.name) for a in
                                                                   kernel.arg_nodes]))
        elif step.kind == "library":
            steps.append(_gemm(step.node, where, tables))
        else:
            steps += _host_step(step.node, where, kernel_reads, tables)
    returned = [_read(where, n, "the region's result") for n in graph.outputs]
    return steps, returned


def _kernel_reads(program) -> set[int]:
    return {b.id for k in program.kernels.values() for b in k.buffers}


def _read(where: dict[int, _Layout], n: Node, reader: str) -> str:
    layout = where.get(n.id)
    if layout is None or layout.transposed:
        raise NotNative(f"{reader} reads %{n.id} ({n.op}, line {n.source or '?'}) in a layout the driver does "
                        "not have as a plain buffer")
    return layout.ref


def _contiguous_strides(shape: tuple, itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _view_layout(op: str, params: dict, src: Node, shape: tuple) -> tuple[int, tuple[int, ...]] | None:
    """(byte offset, byte strides) of ``op(src, **params)`` as a view of a plain buffer holding ``src``, or None
    when the op does not give a view. Worked out by running the op on a stand-in with ``src``'s strides over one
    element (NumPy only computes the view's pointer and strides; nothing is read)."""
    from eager.primitives import PRIMITIVES
    stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, src.dtype), src.shape,
                                               _contiguous_strides(src.shape, src.dtype.itemsize))
    out = np.asarray(PRIMITIVES[op].impl(np, stand_in, **params))
    if out.shape != tuple(shape) or not np.shares_memory(out, stand_in):
        return None
    return out.__array_interface__["data"][0] - stand_in.__array_interface__["data"][0], out.strides


def _host_step(n: Node, where: dict[int, _Layout], kernel_reads: set[int], tables: _Tables) -> list:
    """A host step as the driver has it: a reshape of a plain buffer is the same bytes and a 2-D transpose only
    a matmul reads is the same buffer read transposed (no step); any other view (a slice, a transpose a kernel
    reads, a broadcast, a diagonal) is gathered into a buffer of its own; a concatenation and a write through a
    basic slice (``index_put``) are copies. Anything else would need NumPy: ``NotNative``."""
    if n.op == "cond":
        return [_branch(n, where, tables)]
    if n.op == "result":  # one of a nested cond's results: its buffer
        where[n.id] = _Layout(where[n.args[0].id].ref[n.params["index"]])
        return []
    if n.shape is None:  # a nested scan or while_loop: its own native loop runs, called from the host per trip
        raise NotNative(f"a {n.op} at {n.source or '?'} is nested in the region (it runs on the host)")
    args = [a for a in n.args if hasattr(a, "id")]
    srcs = [where.get(a.id) for a in args]
    if not args or any(s is None or s.transposed for s in srcs):
        raise NotNative(f"{n.op} at {n.source or '?'} reads a value the driver does not have as a plain buffer")
    if n.op == "reshape":
        where[n.id] = _Layout(srcs[0].ref)
        return []
    if n.op == "permute" and len(n.shape) == 2 and tuple(n.params["axes"]) == (1, 0) and n.id not in kernel_reads:
        where[n.id] = _Layout(srcs[0].ref, transposed=True)
        return []
    itemsize = n.dtype.itemsize
    plain = _contiguous_strides(tuple(n.shape), itemsize)
    dst = tables.buffer(np.empty(n.shape, n.dtype))
    where[n.id] = _Layout(dst)
    if n.op == "concatenate":
        axis, start, copies = n.params["axis"] % len(n.shape), 0, []
        for a, src in zip(args, srcs):
            copies.append(codegen.Copy(src.ref, 0, _contiguous_strides(tuple(a.shape), itemsize), dst,
                                       start * plain[axis], plain, tuple(a.shape), itemsize))
            start += a.shape[axis]
        return copies
    if n.op == "index_put" and len(args) == 2:
        base, values = args
        layout = _view_layout("getitem", n.params, base, tuple(values.shape))
        if layout is not None:
            offset, strides = layout
            whole = codegen.Copy(srcs[0].ref, 0, plain, dst, 0, plain, tuple(n.shape), itemsize)
            region = codegen.Copy(srcs[1].ref, 0, _contiguous_strides(tuple(values.shape), itemsize), dst, offset,
                                  strides, tuple(values.shape), itemsize)
            return [whole, region]
    elif n.op in ("getitem", "diagonal", "unfold", "permute", "broadcast_to") and len(n.args) == 1:
        layout = _view_layout(n.op, n.params, args[0], tuple(n.shape))
        if layout is not None:
            offset, strides = layout
            return [codegen.Copy(srcs[0].ref, offset, strides, dst, 0, plain, tuple(n.shape), itemsize)]
    raise NotNative(f"{n.op} at {n.source or '?'} runs on the host (NumPy) inside the region")


def _branch(n: Node, where: dict[int, _Layout], tables: _Tables) -> codegen.Branch:
    """A cond nested in a loop's region: both branches' steps, compiled like any region, and one buffer per
    result that either branch's results are copied into."""
    pred, *operands = n.args
    refs = [_read(where, a, "a nested cond") for a in operands]
    arms = [_region_steps(region._executor, refs, tables) for region in n.params["branches"]]
    outputs = [tables.buffer(np.empty(a.shape, a.dtype)) for a in n.aval]
    where[n.id] = _Layout(tuple(outputs))
    (true_steps, true_results), (false_steps, false_results) = arms
    return codegen.Branch(_read(where, pred, "a nested cond's predicate"), true_steps, true_results, false_steps,
                          false_results, outputs, [_nbytes(a) for a in n.aval])


def _gemm(n: Node, where: dict[int, _Layout], tables: _Tables) -> codegen.Gemm:
    a, b = n.args
    if n.op != "matmul" or max(len(a.shape), len(b.shape)) > 2 or n.dtype.name not in ("float32", "float64"):
        raise NotNative(f"{n.op} of {a.dtype.name}{list(a.shape)} by {b.dtype.name}{list(b.shape)} at "
                        f"{n.source or '?'} is not a 2-D float32/float64 product (batched products run on the host)")
    gemm = _gemm_functions()
    if gemm is None:
        raise NotNative("NumPy's OpenBLAS (cblas_sgemm) was not found to call from C")
    functions, _ = gemm
    m = a.shape[0] if len(a.shape) == 2 else 1
    k = a.shape[-1]
    cols = b.shape[1] if len(b.shape) == 2 else 1
    if 0 in (m, k, cols):
        raise NotNative(f"matmul at {n.source or '?'} has an empty dimension")
    la, lb = where.get(a.id), where.get(b.id)
    if la is None or lb is None or n.id not in where:
        raise NotNative(f"matmul at {n.source or '?'} reads or writes a value the driver has no buffer for")
    ctype = "float" if n.dtype.name == "float32" else "double"
    return codegen.Gemm(tables.function(functions[ctype]), ctype, m, cols, k, la.ref, la.transposed, lb.ref,
                        lb.transposed, where[n.id].ref)


class NativeLoop:
    """One control-flow node run by its generated C driver; ``native`` False (and ``reason``) where it cannot
    be, and the host runs it. ``source`` is the driver's C; ``trips`` counts the trips of the last call."""

    def __init__(self, node: Node):
        self.node, self.op = node, node.op
        self.native, self.reason, self.source, self.trips = False, "", "", 0
        try:
            self._build(node)
            self.native = True
        except NotNative as e:
            self.reason = str(e)

    def __repr__(self) -> str:
        how = "native C loop" if self.native else f"host loop ({self.reason})"
        return f"<{self.op} %{self.node.id}: {how}>"

    def _build(self, node: Node) -> None:
        from compiler.runtime import cache
        p = node.params
        carry = list(node.aval[:p["n_carry"]]) if node.op == "scan" else list(node.aval)
        n_carry = len(carry)
        n_xs = p["n_xs"] if node.op == "scan" else 0
        ys = list(node.aval[n_carry:]) if node.op == "scan" else []
        name = f"loop{node.id}_{node.op}"
        per_call = 4 * n_carry + n_xs + len(ys)
        tables = _Tables(per_call)
        buffers = [np.empty(a.shape, a.dtype) for a in carry for _ in (0, 1)]  # the carry's two buffers each
        tables.keep += buffers
        for i, buf in enumerate(buffers):
            tables.addresses[i] = buf.ctypes.data
        consts = node.args[n_carry + n_xs:]
        n_consts = len(consts)
        self._const_base = len(tables.addresses)
        tables.addresses += [0] * n_consts  # captures: fed per call
        const_refs = [f"p[{self._const_base + i}]" for i in range(n_consts)]
        carry_refs = [f"cur[{k}]" for k in range(n_carry)]
        if node.op == "scan":
            body, returned = _region_steps(p["body"]._executor, carry_refs + [f"x[{j}]" for j in range(n_xs)]
                                           + const_refs, tables)
            xs_bytes = [_nbytes(x) // p["length"] if p["length"] else 0 for x in node.args[n_carry:n_carry + n_xs]]
            loop = codegen.LoopSource(name, "scan", [_nbytes(a) for a in carry], body, returned[:n_carry],
                                      xs_bytes, [_nbytes(y) // p["length"] if p["length"] else 0 for y in ys],
                                      returned[n_carry:], p["reverse"])
            programs = [p["body"]._executor.program]
        else:
            cond, pred = _region_steps(p["cond_region"]._executor, carry_refs + const_refs, tables)
            body, returned = _region_steps(p["body_region"]._executor, carry_refs + const_refs, tables)
            loop = codegen.LoopSource(name, "while_loop", [_nbytes(a) for a in carry], body, returned,
                                      cond=cond, pred=pred[0])
            programs = [p["cond_region"]._executor.program, p["body_region"]._executor.program]
        loop.blas_index = (_gemm_functions() or ({}, "int"))[1]
        loop.notes = [f"{node.op} %{node.id} at {node.source or '?'}: {len(body)} steps per trip"]
        self.source = codegen.render(loop)
        lib, _ = cache.load_library(self.source)
        self._driver = getattr(lib, name)
        self._driver.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self._driver.restype = ctypes.c_int64
        self._lib = lib
        self._fn = (ctypes.c_void_p * max(len(tables.functions), 1))(*tables.functions)
        self._p = (ctypes.c_void_p * len(tables.addresses))(*tables.addresses)
        self._keep = tables.keep
        self._carry, self._ys, self._n_xs = carry, ys, n_xs
        threads = [threads_for(prog) for prog in programs]
        self.blas_threads = next((t for t in threads if t is not None), None)
        self.blas_tuner = ThreadTuner((1, None)) if self.blas_threads == "auto" else None

    def __call__(self, xp, args: list) -> tuple:
        """The node's results for its argument arrays (carry, then xs, then captures)."""
        p, node = self._p, self.node
        n_carry, n_xs = len(self._carry), self._n_xs
        live = []
        for k, a in enumerate(args[:n_carry]):
            a = np.ascontiguousarray(a, self._carry[k].dtype)
            live.append(a)
            p[2 * n_carry + k] = a.ctypes.data
        finals = [np.empty(a.shape, a.dtype) for a in self._carry]
        for k, a in enumerate(finals):
            p[3 * n_carry + k] = a.ctypes.data
        dim = node.params.get("dim", 0)
        for j, x in enumerate(args[n_carry:n_carry + n_xs]):
            x = np.ascontiguousarray(np.moveaxis(x, dim, 0) if dim else x)
            live.append(x)
            p[4 * n_carry + j] = x.ctypes.data
        length = node.params.get("length", 0)
        stacked = [np.empty((length, *_one_step(y.shape, dim)), y.dtype) for y in self._ys]
        for j, y in enumerate(stacked):
            p[4 * n_carry + n_xs + j] = y.ctypes.data
        for i, c in enumerate(args[n_carry + n_xs:]):
            c = np.ascontiguousarray(c)
            live.append(c)
            p[self._const_base + i] = c.ctypes.data
        self.trips = self._run(length)
        return tuple(finals) + tuple(np.moveaxis(y, 0, dim) for y in stacked)

    def _run(self, length: int) -> int:
        if self.blas_tuner is None:
            with BlasThreads(self.blas_threads if self.blas_threads != "auto" else None):
                return self._driver(self._fn, self._p, length)
        n = self.blas_tuner.choice()
        t = time.perf_counter()
        with BlasThreads(n):
            trips = self._driver(self._fn, self._p, length)
        self.blas_tuner.record(n, time.perf_counter() - t)
        return trips


def control_step(step, ex):
    """The C backend's step for a control-flow node: its native loop where it has one, else None (the host
    runs it). Every loop tried is kept in ``ex.loops`` with its verdict."""
    n = step.node
    if n.op not in ("scan", "while_loop") or not regions_of(n):
        return None
    loop = NativeLoop(n)
    ex.loops.append(loop)
    if not loop.native:
        return None
    i = ex.index[n.id]
    args = [ex.index[a.id] if hasattr(a, "id") else None for a in n.args]
    xp = ex.xp

    def run(env):
        env[i] = loop(xp, [env[j] for j in args])
    return run
