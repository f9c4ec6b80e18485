"""The ways a workload runs: our modes (eager, traced, compiled, and on cuda compiled+graph) and the peers
(NumPy, JAX, PyTorch eager, torch.jit.trace, torch.jit.script on a workload's TorchScript twin, torch.compile, and
our traced graph exported to ONNX and run by ONNX Runtime).

A mode is a name plus ``prepare(workload, arrays, device) -> Runner``. ``prepare`` raises :class:`Skip`
with a reason when the mode cannot run this workload here (an optional peer package not installed, a
forward-only peer on a train step, no GPU); the harness records the reason instead of failing. Anything else
that goes wrong, our own packages failing to import included, is an error row, never a skip.

    >>> from compare.modes import MODES
    >>> list(MODES)[:3]
    ['eager', 'traced', 'compiled']
    >>> MODES["numpy"].family
    'peer'
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compare.workloads.registry import JaxStep, Program, Workload, on_device


class Skip(Exception):
    """This mode does not run this workload here; the message says why (and what would make it run)."""


@dataclass
class Runner:
    """A prepared mode: ``call()`` runs once and returns when the result is ready (device synchronised)."""

    call: Callable[[], Any]
    state: Callable[[], dict[str, Any]] = dict
    setup: dict[str, float] = field(default_factory=dict)     # seconds: trace, compile_cold, compile_cached
    structure: dict[str, Any] = field(default_factory=dict)  # ir_nodes, kernels, fusion_groups, source_hash
    handle: Any = None                                        # the Traced / Compiled object, for check/explain
    program: Program | None = None
    clock: str = "host"                                       # "host" (perf_counter) or "cuda" (CUDA events)


@dataclass(frozen=True)
class Mode:
    name: str
    family: str  # "ours" or "peer"
    prepare: Callable[[Workload, dict, str], Runner]
    quick: bool = True  # part of the default selection
    why_not_quick: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")  # elsewhere it is neither run nor listed by default


def to_numpy(x) -> np.ndarray | None:
    """A float copy of any framework's array (eager, torch, jax, numpy); ``None`` stays ``None``."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.array(x, copy=True)


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


OUR_PACKAGES = ("eager", "tracer", "compiler", "compare")


def _import(name: str, why: str = ""):
    """Import a package a mode needs. An optional peer that is not installed raises :class:`Skip` saying ``why``
    (how to install it); anything else raises: our own packages must import (a failure there is a bug in
    graphduel, reported as an error), and so must a peer that is installed but broken.

        >>> _import("surely_not_a_module_graphduel", "pip install it")
        Traceback (most recent call last):
        compare.modes.Skip: surely_not_a_module_graphduel is not installed; pip install it
    """
    if name.split(".")[0] in OUR_PACKAGES:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"graphduel's own module {name} failed to import ({type(e).__name__}: {e}): a bug in "
                              "graphduel or a missing required dependency (pip install -e .), not a skip") from e
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not _names_the_package(e.name, name):
            raise ImportError(f"{name} is installed but does not import ({e}); repair the install "
                              f"({why}) or leave its modes out") from e
        raise Skip(f"{name} is not installed; {why}") from e


def _names_the_package(missing: str | None, name: str) -> bool:
    """Whether a ModuleNotFoundError for ``missing`` means ``name`` itself is absent (not one of its imports)."""
    return missing is not None and (name == missing or name.startswith(missing + "."))


def _eager_lib(device: str):
    eager = _import("eager")
    if device == "cuda" and not eager.cuda.is_available():
        raise Skip("--device cuda: eager needs CuPy and a visible GPU (pip install graphduel[gpu])")
    return eager


def _build(wl: Workload, lib, arrays: dict, device: str) -> Program:
    with on_device(device):
        return wl.build(lib, arrays)


def _state_of(program: Program) -> Callable[[], dict]:
    return program.state if program.state is not None else dict


def _clock(device: str) -> str:
    return "cuda" if device == "cuda" else "host"


def _sync_eager(device: str) -> Callable[[], None]:
    if device != "cuda":
        return lambda: None
    import cupy
    return cupy.cuda.Device().synchronize


# ------------------------------------------------------------------ ours
def prepare_eager(wl: Workload, arrays: dict, device: str) -> Runner:
    eager = _eager_lib(device)
    prog = _build(wl, eager, arrays, device)
    sync = _sync_eager(device)

    def call():
        out = prog.fn(*prog.args)
        sync()
        return out
    return Runner(call, _state_of(prog), program=prog, clock=_clock(device))


def prepare_traced(wl: Workload, arrays: dict, device: str) -> Runner:
    eager = _eager_lib(device)
    tracer = _import("tracer")
    prog = _build(wl, eager, arrays, device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen values come back as traced.assumptions, shown with a divergence
        traced = (tracer.script if "script" in wl.tags else tracer.trace)(prog.fn, *prog.args)
    trace_s = time.perf_counter() - t0
    sync = _sync_eager(device)

    def call():
        out = traced(*prog.args)
        sync()
        return out
    return Runner(call, _state_of(prog), {"trace_time": trace_s}, structure_of(traced), traced, prog, _clock(device))


def _scripted(wl: Workload, prog):
    """What the compiled modes compile: the program itself, or its ``tracer.script`` conversion (tag "script")."""
    import tracer
    return tracer.script(prog.fn, *prog.args) if "script" in wl.tags else prog.fn


def prepare_compiled(wl: Workload, arrays: dict, device: str, cuda_graph: bool = False) -> Runner:
    eager = _eager_lib(device)
    compiler = _import("compiler")
    prog = _build(wl, eager, arrays, device)
    with warnings.catch_warnings(), _fresh_kernel_cache():
        warnings.simplefilter("ignore")  # as for tracing: assumptions are reported with the divergence
        compiled = compiler.compile(_scripted(wl, prog), *prog.args, device=device, cuda_graph=cuda_graph)
        # The same program compiled again, on a fresh copy so no state is shared: kernels now come from cache.
        again = _build(wl, eager, arrays, device)
        second = compiler.compile(_scripted(wl, again), *again.args, device=device, cuda_graph=cuda_graph)
    sync = _sync_eager(device)

    def call():
        out = compiled(*prog.args)
        sync()
        return out
    # the compiler splits its wall time into tracing and compiling (passes and kernel builds)
    setup = {"trace_time": compiled.trace_seconds, "compile_cold": compiled.compile_seconds,
             "compile_cached": second.compile_seconds}
    return Runner(call, _state_of(prog), setup, structure_of(compiled), compiled, prog, _clock(device))


def prepare_compiled_graph(wl: Workload, arrays: dict, device: str) -> Runner:
    """The compiled step captured once as a CUDA graph and replayed (``compile(..., cuda_graph=True)``): one
    launch per call besides copying the batch in and the outputs out; state is updated in place."""
    if device != "cuda":
        raise Skip("CUDA graph replay runs on --device cuda only")
    try:
        return prepare_compiled(wl, arrays, device, cuda_graph=True)
    except ValueError as e:  # the compiler's refusal of a branch decided on the host, passed on as the reason
        if "control-flow" in wl.tags:
            raise Skip(f"compile(cuda_graph=True) refuses it: {e}") from e
        raise


@contextlib.contextmanager
def _fresh_kernel_cache():
    """Point the compiler's kernel cache (``$GRAPHDUEL_CACHE_DIR``) and CuPy's on-disk one (``$CUPY_CACHE_DIR``,
    where NVRTC's results go) at an empty directory, so the first compile is really cold and the second really
    cached; removed when the process exits."""
    path = tempfile.mkdtemp(prefix="graphduel-cold-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    names = ("GRAPHDUEL_CACHE_DIR", "CUPY_CACHE_DIR")
    old = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ[name] = os.path.join(path, name.lower())
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def structure_of(handle) -> dict[str, Any]:
    """Deterministic facts about a Traced/Compiled object: IR nodes, kernels, fusion groups, source hash."""
    out: dict[str, Any] = {}
    graph = getattr(handle, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):
        out["ir_nodes"] = len(graph.nodes)
    kernels = getattr(handle, "kernels", None)
    if kernels is not None:
        out["kernels"] = len(kernels)
    groups = getattr(handle, "fusion_groups", None)
    if groups is not None:
        out["fusion_groups"] = groups if isinstance(groups, int) else len(groups)
    code = getattr(handle, "code", None)
    if callable(code):
        code = code()
    if isinstance(code, str):
        out["source_hash"] = hashlib.sha256(code.encode()).hexdigest()[:12]
    return out


# ------------------------------------------------------------------ peers
def prepare_numpy(wl: Workload, arrays: dict, device: str) -> Runner:
    if device != "cpu":
        raise Skip("NumPy runs on the CPU only")
    if "numpy" not in wl.peers:
        raise Skip("NumPy peer is forward only (it has no autograd)" if wl.kind == "train"
                   else "no NumPy peer is written for this workload")
    fn = wl.peers["numpy"]
    return Runner(lambda: fn(np, **arrays))


def _jax_step(wl: Workload, jnp, arrays: dict) -> JaxStep:
    if "jax" in wl.peers:
        return wl.peers["jax"](jnp, arrays)
    if "numpy" in wl.peers and wl.kind == "forward":  # written with an array namespace: runs on jax.numpy too
        fn = wl.peers["numpy"]
        return JaxStep(lambda carry, a: (as_tuple(fn(jnp, **a)), carry), None,
                       ({k: jnp.asarray(v) for k, v in arrays.items()},))
    raise Skip("no JAX peer is written for this workload")


def _prepare_jax(jit: bool) -> Callable[[Workload, dict, str], Runner]:
    def prepare(wl: Workload, arrays: dict, device: str) -> Runner:
        jax = _import("jax", "pip install jax")
        if device == "cuda" and not any(d.platform == "gpu" for d in jax.devices()):
            raise Skip("--device cuda: this JAX has no GPU backend (pip install jax[cuda12])")
        js = _jax_step(wl, jax.numpy, arrays)
        step = jax.jit(js.step) if jit else js.step
        box = [js.carry]

        def call():
            outs, box[0] = step(box[0], *js.args)
            return jax.block_until_ready(outs)
        state = (lambda: js.state(box[0])) if js.state else dict
        return Runner(call, state)
    return prepare


def _torch(device: str):
    torch = _import("torch", "pip install graphduel[peers]")
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("--device cuda: this PyTorch has no CUDA device")
    return torch


def _torch_runner(torch, fn, prog: Program, device: str, setup: dict | None = None) -> Runner:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        out = fn(*prog.args)
        sync()
        return out
    # the same dict, not a copy: torch.compile's runner fills it in its first calls, before the harness reads it
    return Runner(call, _state_of(prog), {} if setup is None else setup, program=prog, clock=_clock(device))


def prepare_torch(wl: Workload, arrays: dict, device: str) -> Runner:
    torch = _torch(device)
    prog = _build(wl, torch, arrays, device)
    return _torch_runner(torch, prog.fn, prog, device)


def prepare_torch_jit_trace(wl: Workload, arrays: dict, device: str) -> Runner:
    torch = _torch(device)
    if wl.kind != "forward":
        raise Skip("torch.jit.trace records a forward pass; it cannot trace backward() or optimizer.step()")
    if "control-flow" in wl.tags:  # measured: "Detected that you are using FX to torch.jit.trace a dynamo-optimized
        # function. This is not supported at the moment."
        raise Skip("torch.jit.trace cannot record torch.cond / while_loop / scan (PyTorch runs them through Dynamo)")
    prog = _build(wl, torch, arrays, device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings are the point of DynamicNet, reported as a divergence
        traced = torch.jit.trace(prog.fn, prog.args, check_trace=False)
    return _torch_runner(torch, traced, prog, device, {"trace_time": time.perf_counter() - t0})


def prepare_torch_jit_script(wl: Workload, arrays: dict, device: str) -> Runner:
    """The workload's TorchScript twin (``Workload.torchscript``, built from the same arrays) compiled by
    ``torch.jit.script``: Python ``if``/``while``/``for`` on tensors stay control flow in the graph (``prim::If``,
    ``prim::Loop``). The one-time cost is the scripting (``compile_cold``); TorchScript's profiling executor
    specialises the graph over the first calls, which the harness's warm-up and first_call see."""
    torch = _torch(device)
    if wl.torchscript is None:
        why = ("a train step's loss.backward() and optimizer.step() are Python, not TorchScript" if wl.kind == "train"
               else "torch.jit.script cannot compile the lib-generic closures it is written with")
        raise Skip(f"no TorchScript twin written for this workload: {why} (attach one with "
                   "@workload.torchscript_twin, compare/workloads/torchscript.py)")
    with on_device(device):
        prog = wl.torchscript(torch, arrays)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated; it is the seed's peer
        scripted = torch.jit.script(prog.fn)
    return _torch_runner(torch, scripted, prog, device, {"compile_cold": time.perf_counter() - t0})


def prepare_torch_compile(wl: Workload, arrays: dict, device: str) -> Runner:
    """``torch.compile`` on a forward workload's function; on a train step as PyTorch's docs recommend: each
    module the step calls compiled (its forward, and its backward through AOTAutograd), ``optimizer.step``
    compiled, and the step's own ``loss.backward()`` and ``zero_grad()`` eager between them (a step that names no
    module or optimizer, ``Program.models`` / ``optimizers``, is compiled whole: Dynamo splits it at
    ``backward()``). Compiling happens in the first call, in an empty Inductor cache after ``torch._dynamo.reset``
    (the process's one-off Inductor start-up paid before, :func:`_start_inductor`): that call's extra time over a
    steady call is ``compile_cold``. A Dynamo or Inductor failure there on a train
    or control-flow workload is a :class:`Skip` carrying the measured error."""
    torch = _torch(device)
    prog = _build(wl, torch, arrays, device)
    _start_inductor(torch, device)
    torch._dynamo.reset()  # no frames compiled for an earlier cell: the first call compiles from nothing
    try:
        fn = _compile_train_step(torch, prog) if wl.kind == "train" else torch.compile(prog.fn)
    except Exception as e:  # noqa: BLE001  (torch.compile's failures vary by platform; report and move on)
        raise Skip(f"torch.compile is unavailable here: {type(e).__name__}: {e}") from e
    setup: dict[str, float] = {}
    skips = wl.kind == "train" or "control-flow" in wl.tags
    return _torch_runner(torch, _timed_first_calls(torch, fn, wl, setup, skips), prog, device, setup)


_INDUCTOR_STARTED: set[str] = set()  # devices whose Inductor start-up this process has paid


def _start_inductor(torch, device: str) -> None:
    """Compile and run a tiny function with a backward once per process and device, outside any measurement:
    the first torch.compile of a process also pays 5-10 s of one-off start-up (imports, Inductor's compile
    workers and precompiled headers), which would otherwise land in whichever cell came first."""
    if device in _INDUCTOR_STARTED:
        return
    from torch._inductor.utils import fresh_cache
    x = torch.ones(4, device=device, requires_grad=True)
    try:
        with fresh_cache():
            torch.compile(lambda v: (v.sin() * 2).sum())(x).backward()
        _INDUCTOR_STARTED.add(device)
    except Exception:  # noqa: BLE001, S110  (a broken torch.compile is reported by the workload's own compile)
        pass
    torch._dynamo.reset()


def _compile_train_step(torch, prog: Program) -> Callable:
    """The step, its modules compiled in place (``Module.compile``) and each optimizer's ``step`` replaced by a
    compiled function that calls it (PyTorch's recipe for compiling the optimizer)."""
    if not prog.models and not prog.optimizers:
        return torch.compile(prog.fn)
    for model in prog.models:
        model.compile()
    for opt in prog.optimizers:
        opt.step = _compiled_optimizer_step(torch, opt.step)
    return prog.fn


def _compiled_optimizer_step(torch, step: Callable) -> Callable:
    @torch.compile
    def compiled_step():
        step()
    return compiled_step


def _timed_first_calls(torch, fn: Callable, wl: Workload, setup: dict, skips: bool) -> Callable:
    """``fn`` whose first call (where torch.compile compiles) runs in a fresh Inductor cache and is timed:
    ``setup["compile_cold"]`` is that call's time less the second call's (a steady call: the step itself), or the
    whole first call until a second has run. With ``skips``, a Dynamo or Inductor failure in the first call is a
    :class:`Skip` (:func:`_compile_failure_skips`)."""
    from torch._inductor.utils import fresh_cache
    first = _compile_failure_skips(torch, fn, wl) if skips else fn
    calls = [0]
    seconds: list[float] = []

    def call(*args):
        calls[0] += 1
        if calls[0] > 2:
            return fn(*args)
        t0 = time.perf_counter()
        with fresh_cache() if calls[0] == 1 else contextlib.nullcontext():
            out = first(*args) if calls[0] == 1 else fn(*args)
        seconds.append(time.perf_counter() - t0)
        setup["compile_cold"] = seconds[0] - (seconds[1] if len(seconds) > 1 else 0.0)
        return out
    return call


def _compile_failure_skips(torch, compiled: Callable, wl: Workload) -> Callable:
    """``compiled`` whose first call (where torch.compile compiles) turns a failure of Dynamo or Inductor into a
    :class:`Skip` carrying the measured error: the same program runs in the ``torch`` peer, so a failure here is
    torch.compile's limit on ``torch.cond`` / ``while_loop`` / ``scan`` or on a train step on this platform, not a
    wrong answer.
    Later calls, and errors of any other kind, raise as usual."""
    from torch._dynamo.exc import TorchDynamoException
    compiled_once = []

    def call(*args):
        if compiled_once:
            return compiled(*args)
        try:
            out = compiled(*args)
        except TorchDynamoException as e:
            raise Skip(f"torch.compile fails on this {_control_op(wl)} (torch {torch.__version__}): "
                       f"{_first_line(e)}{_deepest_frame(e)}") from e
        compiled_once.append(True)
        return out
    return call


def _control_op(wl: Workload) -> str:
    ops = [t for t in wl.tags if t in ("cond", "while_loop", "scan")]
    what = "/".join(f"torch.{op}" if op != "scan" else "torch._higher_order_ops.scan" for op in ops)
    if wl.kind == "train":
        return f"train step{' with ' + what if what else ''}"
    return what or "control flow"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _deepest_frame(e: BaseException) -> str:
    """Where in Dynamo or Inductor it failed: the deepest compiler file, with the chain of its functions that
    led there (e.g. Inductor's ``post_grad_passes > decompose_scan_to_while_loop > ... > body_fn``)."""
    import traceback
    tb = traceback.extract_tb(e.__traceback__)
    frames = [f for f in tb if "torch/_inductor/" in f.filename] or \
        [f for f in tb if "torch/_dynamo/" in f.filename and not f.filename.endswith("eval_frame.py")]
    if not frames:
        return ""
    last = frames[-1]
    chain = " > ".join(f.name for f in frames if f.filename == last.filename)
    return f" (in {chain}, {last.filename.rsplit('site-packages/', 1)[-1]}:{last.lineno})"


def prepare_onnxruntime(wl: Workload, arrays: dict, device: str) -> Runner:
    """The graph our traced mode runs (``tracer.script``'s for a workload tagged "script"), exported to ONNX
    (``traced.export_onnx``) and run by ONNX Runtime's CPU provider: the deployment path of a static graph
    (trace, export, run elsewhere) beside our own executors. The one-time
    costs are the trace (``trace_time``) and the export, check and session build (``compile_cold``)."""
    if device != "cpu":
        raise Skip("the onnxruntime peer runs ONNX Runtime's CPU provider (onnxruntime-gpu is not a dependency)")
    if wl.kind != "forward":
        raise Skip("the onnxruntime peer runs forward workloads: ONNX is the deployment path of inference, and a "
                   "train step's backward() and optimizer.step() are not what a deployed model runs")
    _import("onnxruntime", "pip install graphduel[onnx]")
    _import("onnx", "pip install graphduel[onnx]")
    eager, tracer = _eager_lib(device), _import("tracer")
    onnx_export = _import("tracer.onnx_export")
    prog = _build(wl, eager, arrays, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what the model froze is the point of DynamicNet: reported as a divergence
        t0 = time.perf_counter()
        traced = (tracer.script if "script" in wl.tags else tracer.trace)(prog.fn, *prog.args)  # as traced mode
        t1 = time.perf_counter()
        try:
            exported = onnx_export.export(traced)
        except onnx_export.UnsupportedOpError as e:  # a primitive ONNX has no operator for, named with its line
            raise Skip(str(e)) from e
    exported.session  # noqa: B018  (built now, so the first timed call does not pay for it)
    setup = {"trace_time": t1 - t0, "compile_cold": time.perf_counter() - t1}
    return Runner(lambda: exported(*prog.args), setup=setup, handle=exported, program=prog)


MODES: dict[str, Mode] = {m.name: m for m in [
    Mode("eager", "ours", prepare_eager),
    Mode("traced", "ours", prepare_traced),
    Mode("compiled", "ours", prepare_compiled),
    Mode("compiled+graph", "ours", prepare_compiled_graph, devices=("cuda",)),
    Mode("numpy", "peer", prepare_numpy),
    Mode("jax", "peer", _prepare_jax(jit=False)),
    Mode("jax.jit", "peer", _prepare_jax(jit=True)),
    Mode("torch", "peer", prepare_torch),
    Mode("torch.jit.trace", "peer", prepare_torch_jit_trace),
    Mode("torch.jit.script", "peer", prepare_torch_jit_script),  # scripting a twin takes milliseconds
    Mode("torch.compile", "peer", prepare_torch_compile, quick=False,
         why_not_quick="torch.compile takes 15-60 s per workload and size on a small CPU (a train step compiles "
                       "its modules' forward and backward and optimizer.step); ask for it with --peers torch.compile"),
    Mode("onnxruntime", "peer", prepare_onnxruntime, devices=("cpu",)),
]}
OURS = [m for m in MODES if MODES[m].family == "ours"]


def default_modes(device: str, family: str = "ours") -> list[str]:
    """The modes of ``family`` that run on ``device`` by default."""
    return [m for m, spec in MODES.items() if spec.family == family and device in spec.devices]
PEERS = [m for m in MODES if MODES[m].family == "peer"]
