"""CUDA backend: the program's kernels as one CUDA C module (``cupy.RawModule``, NVRTC), matmul by cuBLAS
(``cupy.matmul``), host steps by CuPy; optionally the whole step captured in a CUDA graph and replayed.

Importing this module never imports CuPy; building an executable does, and fails clearly without it.
``simulate=True`` builds the same executable on NumPy arrays with the module compiled for the SIMT emulator
(``compiler.runtime.simt``): the generated kernels run, with the same launches, on a machine without a GPU.
"""

from __future__ import annotations

import numpy as np

from compiler.codegen import cuda as cgen
from compiler.codegen import gemm
from compiler.runtime import kernels
from compiler.runtime.executor import Executable
from compiler.runtime.kernels import GeneratedKernel
from compiler.runtime.replay import StaticReplay, rerun
from eager.backend import _cupy
from tracer.ir import CONSTANT


def generate(program) -> list[GeneratedKernel]:
    """The program's kernels rendered to CUDA C."""
    return kernels.generate(program, cgen.render_function)


def module_source(generated: list[GeneratedKernel]) -> str:
    return kernels.module_source(cgen.header(), generated)


# --fmad=false: NVRTC contracts a*b+c into an FMA by default, and whether it does can differ between two kernels
# that recompute one value; a mask like (y - max(y)) >= 0 then misses the maximum it was computed from. The C
# backend builds with -ffp-contract=off for the same reason.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")


def build_cuda(program, simulate: bool = False, static: bool = False) -> Executable:
    """The executable of ``program``; ``simulate``: on NumPy arrays with the SIMT emulator; ``static``: fixed
    buffers for a ``StaticReplay`` (``cuda_graph=True``), which it gets as ``.replay``."""
    generated = generate(program)
    xp = np if simulate else _cupy()  # _cupy raises a clear RuntimeError without CuPy or a GPU

    def load(source: str, direct: frozenset = frozenset()):
        """The compiled module: CuPy's (NVRTC) or the emulator's (``direct``: kernels that never synchronise)."""
        if simulate:
            from compiler.runtime.simt import SimtModule
            return SimtModule(source, direct)
        return xp.RawModule(code=source, options=NVRTC_OPTIONS)

    elementwise = frozenset(k.name for k in generated if not k.ir.is_row_kernel)
    module = load(module_source(generated), elementwise) if generated else None
    by_group = {k.ir.group.id: k for k in generated}

    def kernel_step(k, step, ex: Executable):  # k: the group's kernel IR
        kernel = by_group[step.group.id]
        fn = module.get_function(kernel.name)
        grid, block = cgen.launch_config(k)
        arg_index = [ex.index[n.id] for n in kernel.arg_nodes]
        pooled = [(ex.index[n.id], ex.pools[ex.index[n.id]]) for n in kernel.arg_nodes
                  if n.op != CONSTANT and program.memory.kind.get(n.id) == "output"
                  and any(s.node.id == n.id for s in k.stores)]

        if cgen.split_chunks(k):  # a few long rows: partials by many blocks first, a launch per level
            levels = [module.get_function(f"{kernel.name}_partials{n}") for n in range(len(cgen.reduction_levels(k)))]
            scratch = xp.empty(cgen.partials_bytes(k), np.uint8)

            def run(env):
                for i, pool in pooled:
                    env[i] = pool.take()
                args = tuple(env[i] for i in arg_index) + (scratch,)
                for partials in levels:  # the same (row, chunk) grid as the row kernel
                    partials((grid,), (block,), args)
                fn((grid,), (block,), args)
            return run

        def run(env):
            for i, pool in pooled:
                env[i] = pool.take()
            fn((grid,), (block,), tuple(env[i] for i in arg_index))
        return run

    ex = Executable(program, kernel_step, "simt" if simulate else "cuda", xp=xp, static=static,
                    library_step=(lambda step, ex: gemm_step(step, ex, load)) if static else None)
    ex.kernels, ex.module = generated, module
    if static:
        ex.replay = StaticReplay(ex, rerun if simulate else capture_graph)
    return ex


def gemm_step(step, ex: Executable, load):
    """A matmul as a generated kernel (``compiler.codegen.gemm``), specialised to its operands' layouts the first
    time it runs (before any capture: the replay's warm-up), since CuPy cannot capture cuBLAS."""
    node = step.node
    if node.dtype.kind != "f":  # CuPy multiplies integers and booleans with its own kernels, which capture
        return None
    i, (ia, ib) = ex.index[node.id], [ex.index[a.id] for a in node.args]
    pool = ex.pools.get(i)
    launchers: dict = {}

    def run(env):
        a, b = env[ia], env[ib]
        key = (a.strides, b.strides)
        launch = launchers.get(key)
        if launch is None:
            launch = launchers[key] = _gemm_launcher(f"gd_matmul{node.id}_{len(launchers)}", a, b, node.shape, load,
                                                     ex.xp)
        out = pool.take() if pool is not None else env[i]
        launch(a, b, out)
        env[i] = out
    return run


def _gemm_launcher(name: str, a, b, out_shape, load, xp):
    plan = gemm.plan(name, a, b, tuple(out_shape))
    if plan.grid == 0:
        return lambda a, b, out: None
    module = load(plan.source)
    fn = module.get_function(name)
    grid, block = (plan.grid,), (gemm.BLOCK,)
    if plan.splits == 1:
        return lambda a, b, out: fn(grid, block, (a, b, out))
    add = module.get_function(name + "_sum")
    # the partial products' scratch lives with the launcher, as long as the executable (and any graph of it)
    scratch = xp.empty(plan.scratch, a.dtype)
    sum_grid = (plan.sum_grid,)

    def launch(a, b, out):
        fn(grid, block, (a, b, scratch))
        add(sum_grid, block, (scratch, out))
    return launch


def capture_graph(ex: Executable, static_inputs: list, write_back):
    """Capture one run of ``ex`` on ``static_inputs``, and ``write_back`` of its outputs, into a CUDA graph;
    returns its launcher."""
    cp = _cupy()
    write_back(ex.collect(ex.execute(static_inputs)))  # warm-up outside the capture: static pools allocate
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        env = ex.execute(static_inputs)
        outputs = write_back(ex.collect(env))
        graph = stream.end_capture()

    def launch() -> list:
        graph.launch()
        return outputs
    # every buffer the captured kernels touch (host steps' results too) must outlive the graph: freed, CuPy's
    # pool would hand the memory to someone else while each replay still writes there
    launch.captured_env = env
    return launch
