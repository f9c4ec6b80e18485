"""Timelines: where one call's time goes, per op (eager), per IR node (traced) and per kernel and host step
(compiled), as a Chrome trace event file (Perfetto, chrome://tracing) and as a matplotlib picture.

One call of a workload is profiled after warm-up calls, in each mode as the harness prepares it:

- **eager**: a slice per op (the primitive's array computation, with input shapes, params and the user's source
  line), per backward node (``MulBackward``: its VJP, containing the ops it ran), and for ``backward()``,
  each module's forward, ``zero_grad`` and ``optimizer.step``. The white space between op slices is what a static
  graph removes: Python, dispatch and autograd bookkeeping;
- **traced**: a slice per IR node of the replayed graph (run through the tracer's IR interpreter, the same
  primitive calls as the generated source), plus the host work around it (guards, gathering inputs, write-back);
- **compiled**: a slice per step of the compiled program (fused kernels, library matmuls, host steps), plus the
  same host work.

On a GPU every slice ends with a device synchronisation, so a slice is its work's time (this serialises what
would overlap). The profiler's own bookkeeping (source lines, shapes) is subtracted from the clock.

How it hooks in: a recorder (``eager.autograd.mode``) is not used for eager, because attaching one switches
eager off its fast paths (Adam's array update, in-place arithmetic in memory, plain array backward formulas), so
the profile would not be eager's real path. Instead, for the profiled call only, the primitives' ``impl``,
``Node.backward``, ``Tensor.backward``, ``Module.__call__`` and the optimizers' ``step``/``zero_grad`` are
wrapped, and the wrappers pass straight through in any other thread or context; traced and compiled programs are
timed by replacing their executable's ``run`` on the instance for that call.

    >>> tl = profile("softmax", "eager", "small")
    >>> [s.name for s in tl.slices if s.cat == "op"][:3]
    ['max', 'stop_gradient', 'sub']
    >>> sorted({e["ph"] for e in tl.to_chrome()["traceEvents"]})
    ['M', 'X']
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compare.modes import MODES
from compare.workloads.registry import Workload

OURS = ("eager", "traced", "compiled")
# slices that compute (the work lane), with their plural for summaries
WORK = {"op": "ops", "node": "IR nodes", "kernel": "kernels", "library": "library calls", "host": "host steps",
        "program": "whole programs"}
# slices that group others or are Python glue (the phase lane)
PHASES = ("call", "module", "autograd", "backward", "optimizer", "graph", "glue")
COLORS = {"op": "#4C72B0", "node": "#55A868", "kernel": "#C44E52", "library": "#8172B2", "host": "#CCB974",
          "program": "#64B5CD", "module": "#BBBBBB", "autograd": "#DD8452", "backward": "#F2B880",
          "optimizer": "#937860", "graph": "#D0E4F5", "glue": "#E5D8B0"}


@dataclass
class Slice:
    """One span of the profiled call: seconds from the call's start; ``cat`` is one of WORK or PHASES."""

    name: str
    cat: str
    start: float
    dur: float
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.dur


@dataclass
class Timeline:
    """The slices of one profiled call of ``workload`` in ``mode``."""

    workload: str
    mode: str
    size: str
    device: str
    slices: list[Slice]
    overhead: float = 0.0   # seconds of profiler bookkeeping taken off the clock

    @property
    def duration(self) -> float:
        """Seconds the call took (its ``call`` slice)."""
        return next(s.dur for s in self.slices if s.cat == "call")

    def work(self) -> list[Slice]:
        """Slices that compute: ops, nodes, kernels, steps, and the backward nodes and optimizer steps that
        contain no op (eager runs those formulas on arrays directly when nothing records a graph)."""
        ops = sorted((s.start, s.end) for s in self.slices if s.cat == "op")
        starts = [a for a, _ in ops]

        def holds_an_op(s: Slice) -> bool:
            i = bisect.bisect_left(starts, s.start)
            return i < len(ops) and ops[i][0] < s.end
        return [s for s in self.slices
                if s.cat in WORK or (s.cat in ("backward", "optimizer") and not holds_an_op(s))]

    def busy(self) -> float:
        """Seconds covered by work slices (their union): the rest of the call is Python and glue."""
        spans = sorted((s.start, s.end) for s in self.work())
        total, reach = 0.0, -np.inf
        for a, b in spans:
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.slices:
            if s.cat in WORK:
                counts[s.cat] = counts.get(s.cat, 0) + 1
        parts = ", ".join(f"{n} {WORK[cat]}" for cat, n in counts.items())
        return (f"{self.mode}: {self.duration * 1e3:.3f} ms, {parts}; work covers "
                f"{100 * self.busy() / self.duration:.0f}%")

    def to_chrome(self, pid: int = 1) -> dict:
        """Chrome trace event format (``ph: X`` complete events in microseconds, one process per mode)."""
        events = [{"ph": "M", "pid": pid, "tid": 1, "name": "process_name",
                   "args": {"name": f"{self.mode}: {self.workload} ({self.size}, {self.device})"}},
                  {"ph": "M", "pid": pid, "tid": 1, "name": "process_sort_index", "args": {"sort_index": pid}},
                  {"ph": "M", "pid": pid, "tid": 1, "name": "thread_name", "args": {"name": "host thread"}}]
        for s in sorted(self.slices, key=lambda s: (s.start, -s.dur)):
            events.append({"ph": "X", "pid": pid, "tid": 1, "name": s.name, "cat": s.cat,
                           "ts": round(s.start * 1e6, 3), "dur": round(s.dur * 1e6, 3),
                           "args": {k: _jsonable(v) for k, v in s.args.items()}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"workload": self.workload, "mode": self.mode, "size": self.size,
                              "device": self.device, "summary": self.summary(),
                              "profiler_overhead_us": round(self.overhead * 1e6, 1)}}


def _jsonable(v):
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


# ------------------------------------------------------------------ the clock and the slices
class _Profile:
    """Collects slices on a clock that stops while the profiler does its own bookkeeping."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.slices: list[Slice] = []
        self.overhead = 0.0
        self.origin = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.origin - self.overhead

    @contextlib.contextmanager
    def bookkeeping(self) -> Iterator[None]:
        raw = time.perf_counter()
        try:
            yield
        finally:
            self.overhead += time.perf_counter() - raw

    def add(self, name: str, cat: str, start: float, end: float, args: dict | None = None) -> None:
        self.slices.append(Slice(name, cat, start, end - start, args or {}))

    @contextlib.contextmanager
    def span(self, name: str, cat: str, args: dict | None = None) -> Iterator[None]:
        start = self.now()
        try:
            yield
        finally:
            self.sync()
            end = self.now()
            with self.bookkeeping():
                self.add(name, cat, start, end, args)


_ACTIVE: contextvars.ContextVar[_Profile | None] = contextvars.ContextVar("graphduel_profile", default=None)


def _describe(x) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None:
        return repr(x)
    return f"{np.dtype(dtype).name}{list(shape)}"


def _params_text(params: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return text if len(text) <= 120 else text[:117] + "..."


# ------------------------------------------------------------------ eager: wrappers, for one call only
@functools.cache
def _not_user_code() -> tuple[str, ...]:
    """Where ``user_source`` must not stop: the engine's packages and this profiler's wrappers."""
    from eager.autograd.mode import _package_dirs
    return (*_package_dirs(), str(Path(__file__).resolve()))


def _timed_impl(prim, impl: Callable) -> Callable:
    from eager.autograd.mode import user_source

    @functools.wraps(impl)  # keeps the impl's attributes (eager reads ``impl.ufunc`` for in-place arithmetic)
    def timed(xp, *arrays, **params):
        prof = _ACTIVE.get()
        if prof is None:
            return impl(xp, *arrays, **params)
        start = prof.now()
        out = impl(xp, *arrays, **params)
        prof.sync()
        end = prof.now()
        with prof.bookkeeping():
            args = {"inputs": ", ".join(_describe(a) for a in arrays), "output": _describe(out),
                    "source": user_source(_not_user_code())}
            if params:
                args["params"] = _params_text(params)
            prof.add(prim.name, "op", start, end, args)
        return out
    timed._graphduel_profiled = True
    return timed


def _timed_method(method: Callable, cat: str, label: Callable[[Any], str]) -> Callable:
    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        prof = _ACTIVE.get()
        if prof is None:
            return method(self, *args, **kwargs)
        with prof.span(label(self), cat):
            return method(self, *args, **kwargs)
    return timed


def _timed_backward_node(method: Callable) -> Callable:
    @functools.wraps(method)
    def timed(node, grad):
        prof = _ACTIVE.get()
        if prof is None:
            return method(node, grad)
        with prof.bookkeeping():
            args = {"grad": _describe(grad), "inputs": ", ".join(_describe(x) for x in node.inputs or ())}
        with prof.span(node.name(), "backward", args):
            return method(node, grad)
    return timed


def _optimizer_classes() -> list[type]:
    from eager.optim import Optimizer
    seen, todo = [], [Optimizer]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


@contextlib.contextmanager
def _patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set ``obj.name = value`` for each patch (frozen dataclasses too), restoring the originals on exit."""
    saved = [(obj, name, vars(obj)[name] if isinstance(obj, type) else getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            _setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            _setattr(obj, name, value)
        _forget_cached_impls()


def _setattr(obj, name: str, value) -> None:
    if isinstance(obj, type):
        setattr(obj, name, value)
    else:
        object.__setattr__(obj, name, value)  # Primitive rows are frozen dataclasses (with slots)


def _forget_cached_impls() -> None:
    """Generated code looks ``P.add`` up once and caches it: never let it keep a profiling wrapper."""
    from tracer.codegen import P
    for name, value in list(vars(P).items()):
        if getattr(value, "_graphduel_profiled", False):
            delattr(P, name)


def _eager_patches() -> list[tuple[Any, str, Any]]:
    from eager.autograd.engine import Node
    from eager.nn import Module
    from eager.primitives import PRIMITIVES
    from eager.tensor import Tensor
    patches: list[tuple[Any, str, Any]] = [(p, "impl", _timed_impl(p, p.impl)) for p in PRIMITIVES.values()]
    patches.append((Node, "backward", _timed_backward_node(Node.backward)))
    patches.append((Tensor, "backward", _timed_method(Tensor.backward, "autograd", lambda t: "backward()")))
    patches.append((Module, "__call__", _timed_method(Module.__call__, "module", lambda m: type(m).__name__)))
    for cls in _optimizer_classes():
        for name in ("step", "zero_grad"):
            if name in cls.__dict__:
                patches.append((cls, name, _timed_method(cls.__dict__[name], "optimizer",
                                                         lambda o, n=name: f"{type(o).__name__}.{n}")))
    return patches


# ------------------------------------------------------------------ traced and compiled: their executables
class _GeneratedCode:
    """Times the calls a traced graph's generated source makes (``P.<op>(xp, ...)``, one per IR node, in node
    order), each labelled with the node it computes: the real replay path, not an interpreter of it."""

    def __init__(self, prof: _Profile):
        self.prof = prof
        self.nodes: Iterator = iter(())
        self.depth = 0  # a control-flow node's impl runs its regions: those calls belong to its slice

    def patches(self) -> list[tuple[Any, str, Any]]:
        from eager.primitives import PRIMITIVES
        from tracer.codegen import P
        return [(P, name, self._timed(name, prim.impl)) for name, prim in PRIMITIVES.items()]

    def _timed(self, name: str, impl: Callable) -> Callable:
        prof = self.prof

        @functools.wraps(impl)
        def timed(xp, *args, **params):
            if self.depth or _ACTIVE.get() is not prof:
                return impl(xp, *args, **params)
            self.depth += 1
            start = prof.now()
            try:
                out = impl(xp, *args, **params)
            finally:
                self.depth -= 1
            prof.sync()
            end = prof.now()
            with prof.bookkeeping():
                node = self._node(name)
                args_ = {"node": node.format(), "source": node.source or ""} if node is not None else {}
                prof.add(name, "node", start, end, args_)
            return out
        return timed

    def _node(self, op: str):
        """The next node of the running graph computing ``op`` (nodes the source computes without a primitive
        call, if any, are passed over)."""
        for node in self.nodes:
            if node.op == op:
                return node
        return None

    def run_of(self, exe) -> Callable:
        """``run`` of a tracer ``StaticExecutor`` that times its generated source node by node."""
        def run(arrays: list) -> list:
            self.nodes = iter(exe.graph.calls)
            with self.prof.span("generated code", "graph", {"nodes": len(exe.graph.calls)}):
                return type(exe).run(exe, arrays)
        return run


def _step_labels(lowered) -> list[tuple[str, str, dict]]:
    """(name, category, args) of each step of a compiled program, as the compile report names them."""
    from compiler.report import kernel_bytes
    names = {k.ir.group.id: k.name for k in lowered.kernels}
    out = []
    for step in lowered.program.steps:
        if step.kind == "kernel":
            read, written = kernel_bytes(lowered.program.kernels[step.group.id])
            ops = [m.op for m in step.group.members]
            sources = sorted({m.source for m in step.group.members if m.source})
            out.append((names.get(step.group.id, f"kernel{step.group.id}"), "kernel",
                        {"ops": ", ".join(ops), "fused ops": len(ops), "bytes read": read, "bytes written": written,
                         "source": "; ".join(sources)}))
        else:
            n = step.node
            out.append((f"{step.kind}:{n.op}", "library" if step.kind == "library" else "host",
                        {"node": n.format(), "source": n.source or ""}))
    return out


def _timed_steps(prof: _Profile, lowered) -> Callable:
    """``run`` of a compiled ``Lowered``: each step of its executable timed (a CUDA graph replay or an XLA
    program, which have no steps to time from the host, is one slice)."""
    from compiler.runtime.blas import BlasThreads
    ex = lowered.executable
    plain = lowered.replay is not None or not hasattr(ex, "steps")
    labels = [] if plain else _step_labels(lowered)

    def run(arrays: list) -> list:
        if plain:
            what = "CUDA graph replay" if lowered.replay is not None else f"{lowered.backend} program"
            with prof.span(what, "program"):
                return type(lowered).run(lowered, arrays)
        tuner = ex.blas_tuner
        with lowered.lock, BlasThreads(ex.blas_threads if tuner is None else tuner.best), \
                prof.span(f"compiled program ({lowered.backend})", "graph", {"steps": len(ex.steps)}):
            env = ex._place(arrays, ex.contiguous_inputs)  # as Executable.execute, one step at a time
            for step, (name, cat, args) in zip(ex.steps, labels):
                with prof.span(name, cat, args):
                    step(env)
            return ex.collect(env)
    return run


def _executable_patches(prof: _Profile, handle) -> tuple[list, list]:
    """(patches of executable instances, patches of the generated code's ``P``) for one traced/compiled call."""
    from compiler.api import Lowered
    from tracer.executor import StaticExecutor
    from tracer.traced import RunOnceFirst
    patches, generated = [], _GeneratedCode(prof)
    for entry in handle.entries:
        exe = entry.exe
        if isinstance(exe, RunOnceFirst) and exe.lowered is not None:
            exe = exe.lowered
        if isinstance(exe, Lowered):
            patches.append((exe, "run", _timed_steps(prof, exe)))
        elif isinstance(exe, StaticExecutor):
            patches.append((exe, "run", generated.run_of(exe)))
        elif exe is not None:
            run = type(exe).run
            patches.append((exe, "run", lambda arrays, exe=exe, run=run: _plain(prof, exe, run, arrays)))
    return patches, generated.patches()


def _plain(prof: _Profile, exe, run, arrays):
    with prof.span(f"{type(exe).__name__}.run", "program"):
        return run(exe, arrays)


@contextlib.contextmanager
def _instance_patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set an instance attribute for each patch (shadowing the class's method, or ``P``'s cached impl), putting
    back what was there (or nothing) on exit."""
    missing = object()
    saved = [(vars(obj), name, vars(obj).get(name, missing)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            vars(obj)[name] = value
        yield
    finally:
        for d, name, old in reversed(saved):
            if old is missing:
                d.pop(name, None)
            else:
                d[name] = old


def _host_glue(prof: _Profile, call: Slice) -> None:
    """The host work of a traced/compiled call around its one program run: guards and gathering the inputs
    before it, writing state back and wrapping the outputs after."""
    programs = [s for s in prof.slices if s.cat in ("graph", "program")]
    if len(programs) != 1:
        return
    p = programs[0]
    prof.add("guards + gather inputs", "glue", call.start, p.start)
    prof.add("write back state + wrap outputs", "glue", p.end, call.end)


# ------------------------------------------------------------------ profiling one call
def _workload(workload: Workload | str) -> Workload:
    if isinstance(workload, Workload):
        return workload
    from compare.workloads import get
    return get(workload)


def _sync(device: str) -> Callable[[], None]:
    if device != "cuda":
        return lambda: None
    import cupy
    return cupy.cuda.Device().synchronize


def profile(workload: Workload | str, mode: str = "eager", size: str = "small", device: str = "cpu",
            warmup: int = 2, seed: int = 0) -> Timeline:
    """Profile one call of ``workload`` in ``mode`` (eager, traced or compiled) after ``warmup`` calls."""
    wl = _workload(workload)
    if mode not in OURS:
        raise ValueError(f"profile: mode must be one of {', '.join(OURS)} (peers have their own profilers), "
                         f"not {mode!r}")
    runner = MODES[mode].prepare(wl, wl.make_inputs(size, seed), device)
    for _ in range(warmup):
        runner.call()
    prof = _Profile(_sync(device))
    hooks = contextlib.ExitStack()
    if mode == "eager":
        hooks.enter_context(_patched(_eager_patches()))
    else:
        instances, generated = _executable_patches(prof, runner.handle)
        hooks.enter_context(_instance_patched(instances))
        hooks.enter_context(_instance_patched(generated))
    token = _ACTIVE.set(prof)
    try:
        with hooks:
            prof.origin, prof.overhead = time.perf_counter(), 0.0
            with prof.span(f"{wl.name} call", "call"):
                runner.call()
    finally:
        _ACTIVE.reset(token)
    call = next(s for s in prof.slices if s.cat == "call")
    if mode != "eager":
        _host_glue(prof, call)
    slices = sorted(prof.slices, key=lambda s: (s.start, -s.dur))  # start order; a parent before its children
    return Timeline(wl.name, mode, size, device, slices, prof.overhead)


def write_trace(workload: Workload | str, mode: str | Sequence[str], size: str, out_path: str | Path,
                device: str = "cpu") -> Path:
    """Write a Chrome trace event JSON file of one call in ``mode`` (or several modes, one process each, on one
    time axis starting at each call's start); open it in https://ui.perfetto.dev or chrome://tracing."""
    modes = [mode] if isinstance(mode, str) else list(mode)
    timelines = [profile(workload, m, size, device) for m in modes]
    trace: dict = {"traceEvents": [], "displayTimeUnit": "ms", "otherData": {}}
    for pid, tl in enumerate(timelines, start=1):
        part = tl.to_chrome(pid)
        trace["traceEvents"] += part["traceEvents"]
        trace["otherData"][tl.mode] = part["otherData"]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(trace))
    return out


# ------------------------------------------------------------------ the picture
def timeline_figure(workload: Workload | str, size: str = "small", device: str = "cpu",
                    modes: Sequence[str] = ("eager", "compiled"), timelines: Sequence[Timeline] | None = None):
    """One call per mode on one time axis (milliseconds): a lane of phases (modules, backward, optimizer) above
    a lane of work (ops, IR nodes, kernels, host steps); the white between work slices is Python and glue."""
    import matplotlib
    matplotlib.use("Agg")  # before pyplot: reports are written on headless machines
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    timelines = list(timelines) if timelines is not None else [profile(workload, m, size, device) for m in modes]
    fig, ax = plt.subplots(figsize=(12, 1.3 * len(timelines) + 1.4))
    used: set[str] = set()
    for row, tl in enumerate(timelines):
        y = (len(timelines) - 1 - row) * 2.0
        work = {id(s) for s in tl.work()}
        for s in sorted(tl.slices, key=lambda s: -s.dur):  # the longest first: what they contain draws on top
            if s.cat == "call":
                ax.broken_barh([(s.start * 1e3, s.dur * 1e3)], (y - 0.05, 1.6), facecolor="none", edgecolor="#999")
                continue
            span = [(s.start * 1e3, max(s.dur * 1e3, 1e-4))]
            if s.cat in PHASES:
                ax.broken_barh(span, (y + 0.95, 0.5), facecolor=COLORS[s.cat], linewidth=0)
            if id(s) in work:
                ax.broken_barh(span, (y + 0.05, 0.8), facecolor=COLORS[s.cat], linewidth=0)
            used.add(s.cat)
        ax.text(tl.duration * 1e3, y + 0.8, "  " + tl.summary(), va="center", fontsize=7)
    ax.set_yticks([(len(timelines) - 1 - r) * 2.0 + 0.8 for r in range(len(timelines))],
                  [tl.mode for tl in timelines])
    ax.set_xlabel("milliseconds from the start of the call (white: Python, dispatch and autograd bookkeeping)")
    name = timelines[0].workload if timelines else str(workload)
    ax.set_title(f"{name} ({size}, {device}): one call per mode")
    ax.set_xlim(0, max(tl.duration for tl in timelines) * 1e3 * 1.55)
    ax.legend(handles=[Patch(color=COLORS[c], label=c) for c in COLORS if c in used], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.005, 1.0))  # beside the lanes, never over a slice
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def write_timeline_figures(df, out_dir: str | Path, skip_existing: bool = True) -> dict[str, Path | str]:
    """For each train workload of a results table whose eager and compiled runs succeeded, draw
    :func:`timeline_figure` (smallest size of the run, its device) to ``timeline_<workload>.png``. Returns, per
    train workload, the PNG's path or why it was not drawn (a failure to profile is reported there, not raised,
    so a report is never lost to its picture). ``skip_existing`` keeps a picture drawn by an earlier run."""
    import matplotlib.pyplot as plt

    from compare.plots import SIZE_ORDER
    from compare.workloads import REGISTRY
    out_dir = Path(out_dir)
    result: dict[str, Path | str] = {}
    train = df[(df.kind == "train") & (df.metric == "run")]
    for name in dict.fromkeys(train.workload):
        runs = train[train.workload == name]
        ok = set(runs[runs.status == "ok"]["mode"])
        path = out_dir / f"timeline_{name}.png"
        if not {"eager", "compiled"} <= ok:
            result[name] = "not drawn: eager and compiled did not both run"
        elif name not in REGISTRY:
            result[name] = "not drawn: not a registered workload (load its file with --workloads-from)"
        elif skip_existing and path.exists():
            result[name] = path
        else:
            sizes = [s for s in SIZE_ORDER if s in set(runs["size"])] or list(runs["size"])
            try:
                fig = timeline_figure(name, sizes[0], str(runs.device.iloc[0]))
            except Exception as e:  # noqa: BLE001  (reported in the result, as the harness reports errors)
                result[name] = f"not drawn: {type(e).__name__}: {e}"
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
            result[name] = path
    return result
