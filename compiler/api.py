"""``compiler.compile``: trace, optimise, fuse and lower a function to native kernels.

    >>> import eager, compiler
    >>> f = compiler.compile(lambda x: (x * 2).exp().sum(), eager.ones(4))
    >>> round(float(f(eager.zeros(4))), 3)
    4.0
    >>> len(f.kernels)
    1
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from compiler import debug
from compiler.passes import optimize
from compiler.program import Program, build
from tracer.ir import Graph, regions_of
from tracer.regions import lower_regions


@dataclass
class Lowered:
    """What the lowering returns to the tracer: ``run(arrays) -> outputs + new state``, plus everything the
    report shows (graph before/after passes, program, kernels, timings), recorded while compiling."""

    source_graph: Graph
    graph: Graph
    program: Program | None
    executable: object
    backend: str
    device: str
    kernels: list = field(default_factory=list)
    pass_seconds: float = 0.0
    build_seconds: float = 0.0
    compilations: int = 0      # kernel libraries the native compiler built (0: all found in the disk cache)
    native_seconds: float = 0.0  # of build_seconds, the time the native compiler ran

    example: list | None = None
    replay: object = None  # a CUDA graph runner when compiled with cuda_graph=True
    lock: object = field(default_factory=threading.Lock)  # buffers are planned once: one run at a time

    @property
    def cached_seconds(self) -> float:
        """What compiling this graph again costs once its kernels are in the disk cache: this compile's time
        without the native compiler's (NVRTC's time stays in: CuPy keeps that cache)."""
        return self.pass_seconds + self.build_seconds - self.native_seconds

    def run(self, arrays: list) -> list:
        if self.example is None:  # kept (copied) for the report's timings; later inputs are not held
            self.example = [a.copy() for a in arrays]
        with self.lock:
            if self.replay is not None:
                return self.replay.run(arrays)
            return self.executable.run(arrays)

    __call__ = run


# a backend's builder: (program, graph after passes, device, static) -> executable (``static``: fixed buffers
# for a replayed CUDA graph); the executable has ``.kernels``
Builder = Callable[[Program, Graph, str, bool], object]


def _build_c(program: Program, graph: Graph, device: str, static: bool):
    from compiler.runtime.cpu import build_executable
    return build_executable(program)


def _build_numpy(program: Program, graph: Graph, device: str, static: bool):
    from compiler.runtime.cpu import generate
    from compiler.runtime.executor import Executable
    ex = Executable(program, None, "numpy")
    ex.kernels = generate(program)  # the C the native backend would build, for reading
    return ex


def _build_cuda(program: Program, graph: Graph, device: str, static: bool):
    from compiler.runtime.cuda import build_cuda
    return build_cuda(program, static=static)


def _build_simt(program: Program, graph: Graph, device: str, static: bool):
    from compiler.runtime.cuda import build_cuda
    return build_cuda(program, simulate=True, static=static)


def _build_xla(program: Program, graph: Graph, device: str, static: bool):
    from compiler.xla import build_xla
    return build_xla(graph, device)  # jax.jit compiles the graph itself: the program's kernels go unused


BUILDERS: dict[str, Builder] = {"c": _build_c, "numpy": _build_numpy, "cuda": _build_cuda, "xla": _build_xla,
                                "simt": _build_simt}
BACKENDS = tuple(BUILDERS)


def _default_backend(device: str) -> str:
    return "cuda" if device == "cuda" else "c"


def _check(device: str, backend: str, cuda_graph: bool) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"compile: unknown device {device!r}; use 'cpu' or 'cuda'")
    if backend not in BUILDERS:
        raise ValueError(f"compile: unknown backend {backend!r}; choose one of {tuple(BUILDERS)}")
    if backend == "simt" and device != "cpu":
        raise ValueError("compile: backend 'simt' emulates the CUDA kernels on the CPU; use device='cpu'")
    if cuda_graph and backend not in ("cuda", "simt"):
        raise ValueError(f"compile: cuda_graph=True replays a captured CUDA graph; it needs device='cuda' (or "
                         f"backend='simt' to replay the same buffers on the CPU), not backend {backend!r}")


def lower_graph(graph: Graph, device: str = "cpu", backend: str | None = None, fuel: int | None = -1,
                cuda_graph: bool = False) -> Lowered:
    """The lowering ``L(graph) -> executable`` handed to ``tracer.trace``: passes, fusion, codegen, build."""
    from compiler.runtime import cache
    device = str(device)
    backend = backend or _default_backend(device)
    _check(device, backend, cuda_graph)
    if device == "cuda" and backend in ("c", "numpy"):  # C kernels cannot read GPU arrays; the CUDA ones can
        backend = "cuda"
    start = time.perf_counter()
    if any(regions_of(n) for n in graph.nodes):
        if cuda_graph:
            raise ValueError("compile(cuda_graph=True): this graph has a control-flow node (cond, while_loop or "
                             "scan) whose branch or trip count is decided on the host every call; CuPy exposes no "
                             "conditional graph nodes to capture it. Compile without cuda_graph=True.")
        if backend != "xla":  # jax.jit takes the whole graph, regions included, as lax.cond / while_loop / scan
            graph = lower_regions(graph, lambda region: lower_graph(region, device, backend, fuel))
    optimized = optimize(graph)
    passes = time.perf_counter() - start
    stats = cache.thread_stats()
    compilations, native = stats.compilations, stats.compile_seconds
    start = time.perf_counter()
    program = build(optimized, fuel)
    if cuda_graph:
        import dataclasses

        from compiler.memory import plan_memory
        program = dataclasses.replace(program, memory=plan_memory(program, donate_state=True))
    ex = BUILDERS[backend](program, optimized, device, cuda_graph)
    lowered = Lowered(graph, optimized, program, ex, ex.backend, device, ex.kernels, passes,
                      time.perf_counter() - start, stats.compilations - compilations,
                      stats.compile_seconds - native)
    if cuda_graph:
        lowered.replay = ex.replay
    debug.show(program, lowered.kernels)
    return lowered


class Compiled:
    """A traced function whose graphs run as fused native kernels. Call it like the original function.

    Signature cache, retracing and state write-back are the tracer's (``tracer.Traced``); this object adds
    ``.graph`` (after passes), ``.kernels`` (with generated ``.source``), ``.lowered`` and ``.report()``.
    """

    def __init__(self, fn, example_inputs: tuple, example_kwargs: dict, device: str, backend: str | None,
                 strict: bool, fuel: int | None, cuda_graph: bool = False, guards: str = "retrace"):
        import tracer
        self.device, self.requested_backend, self.fuel = str(device), backend, fuel
        self.lowerings: list[Lowered] = []

        def lower(graph: Graph) -> Lowered:
            lowered = lower_graph(graph, self.device, backend, fuel, cuda_graph)
            self.lowerings.append(lowered)
            del self.lowerings[:-32]  # a retrace storm must not keep every program and its kernel library
            return lowered

        start = time.perf_counter()
        if isinstance(fn, tracer.Traced) and hasattr(fn, "retrace_with"):  # tracer.script: keep its lifted state
            self.traced = fn.retrace_with(*example_inputs, strict=strict, lower=lower, guards=guards, **example_kwargs)
        else:
            if isinstance(fn, tracer.Traced):
                fn = fn.fn
            self.traced = tracer.trace(fn, *example_inputs, strict=strict, lower=lower, guards=guards,
                                       **example_kwargs)
        total = time.perf_counter() - start
        self.compile_seconds = sum(lw.pass_seconds + lw.build_seconds for lw in self.lowerings)
        self.trace_seconds = total - self.compile_seconds

    def __call__(self, *args, **kwargs):
        return self.traced(*args, **kwargs)

    @property
    def lowered(self) -> Lowered:
        """The lowering of the latest traced signature (its steady-state program)."""
        return self.traced.executable

    @property
    def graph(self) -> Graph:
        return self.lowered.graph

    @property
    def kernels(self) -> list:
        return self.lowered.kernels

    @property
    def backend(self) -> str:
        return self.lowered.backend

    def report(self, repeat: int = 5, show: bool = True):
        """Per-kernel table (ops fused, source lines, bytes, time, GB/s, % of copy bandwidth) plus totals."""
        from compiler.report import report
        return report(self, repeat=repeat, show=show)

    def __getattr__(self, name):  # assumptions, check, save, code, retrace_count, ... come from the trace
        if name == "traced":
            raise AttributeError(name)
        return getattr(self.traced, name)

    def __repr__(self) -> str:
        return (f"<Compiled {self.traced.name} on {self.device} ({self.backend}): {len(self.kernels)} kernels "
                f"for {len(self.lowered.source_graph.calls)} traced ops>")


def compile(fn, *example_inputs, device: str = "cpu", backend: str | None = None, strict: bool = False,  # noqa: A001
            fuel: int | None = -1, cuda_graph: bool = False, guards: str = "retrace", **example_kwargs) -> Compiled:
    """Trace ``fn`` (function, Module, or ``tracer.Traced``) on example inputs and compile its graph.

    ``device``: 'cpu' or 'cuda'. ``backend``: None (C on cpu, CUDA on cuda), 'c', 'numpy' (fallback), 'cuda',
    'xla' (jax.jit on the same optimised graph) or 'simt' (the CUDA kernels run on the CPU under an emulator:
    slow, for testing and reading them without a GPU). ``fuel``: fusion budget (-1 reads ``GRAPHDUEL_FUSION_FUEL``;
    None is unlimited). ``cuda_graph``: on cuda, capture the whole step in a CUDA graph on the first call and
    replay it (one launch per step; new state is written over the old in place, see ``compiler.runtime.replay``;
    with backend 'simt' the same buffers are replayed on the CPU). Training steps work as with ``tracer.trace``:
    new state is written back each call. ``guards`` is ``tracer.trace``'s: ``"retrace"`` (a value the trace froze,
    such as a Python branch on a tensor, is checked on every call and a call that sees another value compiles
    the program for it), ``"raise"`` (it raises ``tracer.GuardError`` naming the line) or ``"off"``.
    """
    return Compiled(fn, example_inputs, example_kwargs, device, backend, strict, fuel, cuda_graph, guards)
