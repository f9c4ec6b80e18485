"""The executable a backend builds from a Program: ``run(arrays) -> outputs + new state``.

One environment list holds every materialised value; constants and slot buffers are placed once, graph
inputs and returned values each call. Each step is a closure; only array calls run per step.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.program import build
    >>> import numpy as np
    >>> ex = Executable(build(dup_graph()), kernel_step=None)
    >>> ex.run([np.zeros(4, np.float32)])[0].tolist()
    [2.0, 2.0, 2.0, 2.0]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from compiler.fusion import VIEW_OPS
from compiler.runtime.blas import BlasThreads, ThreadTuner, threads_for
from eager.control import Results
from eager.primitives import PRIMITIVES
from tracer.ir import CONSTANT, PLACEHOLDER

_getrefcount = sys.getrefcount
_VIEW_METHODS = {"permute": "transpose", "reshape": "reshape"}


def _contiguous(xp, a):
    """C-contiguous with the same shape (``ascontiguousarray`` turns 0-d arrays into 1-d ones)."""
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a).reshape(a.shape)


class OutputPool:
    """Buffers for one returned value. A buffer is reused only when the pool holds the last reference to it
    (the caller dropped the result, or replaced the state it held), so results are never overwritten under a
    user. On NumPy each call hands out a fresh view of a private buffer: a caller who reshapes, retypes or
    freezes a result changes only that view, and a weak reference to a dropped result dies with it (the view's
    ``.base`` keeps the buffer referenced while any view of it lives)."""

    __slots__ = ("shape", "dtype", "arrays", "pointers", "xp")

    def __init__(self, shape, dtype, xp=np):
        self.shape, self.dtype, self.arrays, self.pointers, self.xp = shape, dtype, [], [], xp

    def take(self) -> np.ndarray:
        return self.take_with_pointer()[0]

    def take_with_pointer(self) -> tuple[np.ndarray, int]:
        arrays = self.arrays
        for j in range(len(arrays)):
            # held only by the list and getrefcount's argument: nobody outside sees it. (Not ``for a in``: the
            # loop variable, and enumerate's reused tuple, would each add a reference and no array would qualify.)
            if _getrefcount(arrays[j]) == 2:
                return self._hand_out(arrays[j]), self.pointers[j]
        if len(arrays) >= 3:
            arrays.pop(0)
            self.pointers.pop(0)
        a = self._allocate()
        return self._hand_out(a), self.pointers[-1]

    def _allocate(self):
        a = self.xp.empty(self.shape, self.dtype)
        self.arrays.append(a)
        self.pointers.append(a.ctypes.data if self.xp is np else a.data.ptr)
        return a

    def _hand_out(self, a):
        # CuPy arrays are handed out as they are: views there are not proven (no GPU run yet) to keep the
        # buffer object referenced, which reuse depends on
        return a.view() if self.xp is np else a


class StaticPool(OutputPool):
    """One buffer for every call: what a CUDA graph bakes in (``StaticReplay`` copies results out)."""

    __slots__ = ()

    def take_with_pointer(self) -> tuple[np.ndarray, int]:
        if not self.arrays:
            self._allocate()
        return self.arrays[0], self.pointers[0]


class Executable:
    """Runs a Program. ``kernel_step(kernel_ir, step, executable) -> callable(env)`` comes from the backend;
    None interprets each kernel with NumPy (the fallback backend). ``library_step(step, executable)``, when given,
    runs matmuls instead of the array library where it returns a step (the CUDA graph path: cuBLAS cannot be
    captured), None where the library should. ``control_step(step, executable)``, when given, runs a control-flow
    node where it returns a step (the C backend's native loops), None where the host should."""

    def __init__(self, program, kernel_step=None, name: str = "numpy", xp=np, static: bool = False,
                 library_step=None, control_step=None):
        self.program = program
        self.xp = xp
        self.graph = program.graph
        self.backend = name
        self.index = {n.id: i for i, n in enumerate(program.graph.nodes)}
        self.env_template: list = [None] * len(program.graph.nodes)
        self.slots = [xp.empty(b, np.uint8) for b in program.memory.slot_bytes]
        self.placeholders = [self.index[p.id] for p in self.graph.placeholders]
        self.pools: dict[int, OutputPool] = {}
        self.library_step = library_step  # (step, executable) -> callable(env): a backend's own matmul
        self.control_step = control_step
        self.loops: list = []  # the native loops control_step tried (compiler.runtime.loops), with their verdicts
        self.step_seconds = [0.0] * len(program.steps)
        kernel_reads = {b.id for k in program.kernels.values() for b in k.buffers}
        self.contiguous_inputs = [p.id in kernel_reads for p in self.graph.placeholders]
        for n in program.graph.nodes:
            if n.op == CONSTANT:
                self.env_template[self.index[n.id]] = _contiguous(xp, xp.asarray(n.value))
            elif program.memory.kind.get(n.id) == "slot":
                slot = self.slots[program.memory.slot_of[n.id]]
                self.env_template[self.index[n.id]] = slot[:n.dtype.itemsize * int(np.prod(n.shape))].view(
                    n.dtype).reshape(n.shape)
            elif program.memory.kind.get(n.id) == "output":
                self.pools[self.index[n.id]] = (StaticPool if static else OutputPool)(n.shape, n.dtype, xp)
        # a donated state value is written over its placeholder's array (memory.donate_state)
        self.aliases = [(self.index[n], self.index[old]) for n, old in program.memory.in_place.items()
                        if program.memory.kind.get(n) == "donated"]
        self.steps = [self._step(s, kernel_step, kernel_reads) for s in program.steps]
        self.returned = [self.index[n.id] for n in self.graph.outputs] + [self.index[v.id] for _, v in
                                                                          self.graph.updates]
        self.blas_threads = threads_for(program) if xp is np else None
        self.blas_tuner = ThreadTuner((1, None)) if self.blas_threads == "auto" else None
        owned = {self.index[n.id] for n in self.graph.nodes if program.memory.kind.get(n.id) in ("output", "donated")}
        self.copy_out = [i not in owned for i in self.returned]

    # ------------------------------------------------------------ steps
    def _step(self, step, kernel_step, kernel_reads):
        if step.kind == "kernel":
            k = self.program.kernels[step.group.id]
            return self._numpy_kernel(step, k) if kernel_step is None else kernel_step(k, step, self)
        if step.kind == "library":
            run = self.library_step(step, self) if self.library_step is not None else None
            return self._matmul_step(step) if run is None else run
        return self._host_step(step, step.node.id in kernel_reads)

    def _matmul_step(self, step):
        """A matmul by the array library, into its output pool's buffer or its slot."""
        n, xp = step.node, self.xp
        i, (a, b) = self.index[n.id], [self.index[x.id] for x in n.args]
        # np.dot takes half the time of np.matmul on small matrices (0.8 vs 1.5 us at 16x8x32: less ufunc
        # machinery) and is the same product for 2-D operands; matmul broadcasts batches, which dot does not
        two_d = len(n.args[0].shape) == 2 and len(n.args[1].shape) == 2
        matmul = np.dot if xp is np and two_d else xp.matmul
        if i in self.pools:
            pool = self.pools[i]

            def run(env):
                out = pool.take()
                matmul(env[a], env[b], out=out)
                env[i] = out
        else:
            def run(env):
                matmul(env[a], env[b], out=env[i])
        return run

    def _host_step(self, step, contiguous: bool):
        """One primitive by the array library (movement ops no kernel absorbed, ops no kernel takes);
        ``contiguous``: a kernel reads the result, so it must be C-contiguous."""
        n, xp = step.node, self.xp
        i, args = self.index[n.id], n.args
        prim, params = PRIMITIVES[n.op], n.params
        arg_index = [self.index[a.id] if hasattr(a, "id") else None for a in args]
        scalars = [None if hasattr(a, "id") else a for a in args]
        if n.op in _VIEW_METHODS and not contiguous and arg_index[0] is not None:
            return self._view_step(i, arg_index[0], getattr(xp.ndarray, _VIEW_METHODS[n.op]),
                                   params["axes" if n.op == "permute" else "shape"])

        if isinstance(n.aval, Results):  # a control-flow node: a tuple of arrays, which result nodes pick apart
            native = self.control_step(step, self) if self.control_step is not None else None
            if native is not None:
                return native

            def run_control(env):
                env[i] = prim.impl(xp, *[env[j] if j is not None else s for j, s in zip(arg_index, scalars)],
                                   **params)
            return run_control

        def run(env):
            vals = [env[j] if j is not None else s for j, s in zip(arg_index, scalars)]
            out = xp.asarray(prim.impl(xp, *vals, **params))
            if out.dtype != n.dtype:
                out = out.astype(n.dtype)
            env[i] = _contiguous(xp, out) if contiguous else out
        return run

    @staticmethod
    def _view_step(i, a, method, arg):
        """A permute or reshape no kernel reads: one array method call (the generic host step's argument lists
        and dtype checks cost more than the view itself, a few microseconds per call on small programs)."""
        def run(env):
            env[i] = method(env[a], arg)
        return run

    def _numpy_kernel(self, step, k):
        """Fallback: evaluate the group's members with NumPy, writing stores into the planned buffers."""
        group = step.group
        members = {m.id for m in group.members}
        index = self.index
        pools = self.pools
        xp = self.xp
        stores = [(index[m.id], m.id) for m in group.members if m.id in group.stores]

        def value(n, env, local):
            if n.id in local:
                return local[n.id]
            # a ``full`` is a literal to the kernel (not a buffer it reads), so memory planning may reuse its slot
            if n.id in members or n.op == "full" or (n.op in VIEW_OPS and env[index[n.id]] is None):
                vals = [value(a, env, local) if hasattr(a, "id") else a for a in n.args]
                out = xp.asarray(PRIMITIVES[n.op].impl(xp, *vals, **n.params))
                local[n.id] = out.astype(n.dtype, copy=False)
                return local[n.id]
            return env[index[n.id]]

        def run(env):
            local: dict = {}
            for m in group.members:
                value(m, env, local)
            for i, mid in stores:
                if i in pools:
                    env[i] = pools[i].take()
                xp.copyto(env[i], local[mid])
        return run

    # ------------------------------------------------------------ running
    def run(self, arrays: list) -> list:
        if self.blas_threads is None:
            return self._run(arrays)
        if self.blas_tuner is None:
            with BlasThreads(self.blas_threads):
                return self._run(arrays)
        n = self.blas_tuner.choice()
        t = time.perf_counter()
        with BlasThreads(n):
            out = self._run(arrays)
        self.blas_tuner.record(n, time.perf_counter() - t)
        return out

    def _run(self, arrays: list) -> list:
        return self.collect(self.execute(arrays))

    def execute(self, arrays: list) -> list:
        """Run every step; returns the environment (every value of the run, by node index)."""
        env = self._place(arrays, self.contiguous_inputs)
        for step in self.steps:
            step(env)
        return env

    def _place(self, arrays: list, contiguous: list) -> list:
        """A fresh environment holding the inputs (C-contiguous where asked) and the donated aliases."""
        env = list(self.env_template)
        for i, a, c in zip(self.placeholders, arrays, contiguous):
            env[i] = a if not c or a.flags.c_contiguous else _contiguous(self.xp, a)
        for i, j in self.aliases:
            env[i] = env[j]
        return env

    def collect(self, env: list) -> list:
        """The outputs and new state of a run, from its environment."""
        out, seen = [], set()
        for i, copy in zip(self.returned, self.copy_out):
            x = env[i]
            if copy or i in seen:
                x = self.xp.array(x, copy=True)
            seen.add(i)
            out.append(x)
        return out

    def run_timed(self, arrays: list, repeat: int = 1) -> list:
        """Like ``run``, accumulating the wall time of each step into ``step_seconds`` (for the report)."""
        # the count the tuner settled on (not choice(): that may start a re-check with the losing count)
        tuner = self.blas_tuner
        with BlasThreads(self.blas_threads if tuner is None else tuner.best):
            self._timed(arrays, repeat)
        return self.run(arrays)

    def _timed(self, arrays: list, repeat: int) -> None:
        # on a GPU a step only enqueues work: wait for it, or the time is the launch's, not the kernel's
        sync = self.xp.cuda.Device().synchronize if self.xp is not np else (lambda: None)
        for _ in range(repeat):
            env = self._place(arrays, [True] * len(arrays))
            sync()
            for j, step in enumerate(self.steps):
                t = time.perf_counter()
                step(env)
                sync()
                self.step_seconds[j] += time.perf_counter() - t

    __call__ = run

    @property
    def placeholder_ops(self) -> list[str]:
        return [n.op for n in self.graph.nodes if n.op == PLACEHOLDER]
