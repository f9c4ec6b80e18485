"""The workload registry: a workload is written once against the eager API and registered by a decorator.

Two decorators, one registry:

- ``@workload`` turns a plain forward function ``fn(lib, **inputs)`` into a workload. ``lib`` is the tensor
  library the function runs on (``eager`` for our modes, ``torch`` for the PyTorch peers: the names are the
  same), and inputs are drawn from the shapes given per size.
- ``@program`` is for anything with state (modules, optimizers, a train step): ``build(lib, arrays)``
  returns a :class:`Program` whose ``fn(*args)`` is what gets called, traced, compiled and timed.

    >>> @workload(sizes={"small": {"x": (4, 8)}}, register=False)
    ... def double_tanh(lib, x):
    ...     return lib.tanh(x) * 2
    >>> double_tanh.name, double_tanh.kind, list(double_tanh.sizes)
    ('double_tanh', 'forward', ['small'])
    >>> arrays = double_tanh.make_inputs("small", seed=0)
    >>> arrays["x"].shape, arrays["x"].dtype
    ((4, 8), dtype('float32'))

Peers are attached next to the workload with ``@wl.peer("numpy")`` (``fn(xp, **arrays)``, also used as the
float64 reference when no ``reference`` is given) and ``@wl.peer("jax")`` (returns a :class:`JaxStep`).
The ``torch.jit.script`` peer needs a twin TorchScript can compile (``lib`` closures it cannot):
``@wl.torchscript_twin`` attaches ``factory(torch, arrays) -> Program`` whose ``fn`` is a scriptable function or
module, built from the same arrays.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("forward", "train")
SIZES = ("small", "medium", "large")
PEER_KINDS = ("numpy", "jax")


@dataclass
class Program:
    """What one mode calls: ``fn(*args)`` returns a tensor or a tuple of tensors.

    ``state()``, when given, returns named tensors to read after a call (parameters after a train step),
    so that modes are compared on what a step changed, not only on what it returned.
    """

    fn: Callable
    args: tuple
    state: Callable[[], Mapping[str, Any]] | None = None
    # A train step's modules and optimizers, for peers that compile them apart from the step (torch.compile:
    # each module's forward and backward, and optimizer.step, with the step's backward() eager between them).
    models: tuple = ()
    optimizers: tuple = ()


@dataclass
class JaxStep:
    """A functional step for the JAX peers: ``step(carry, *args) -> (outputs, new_carry)``.

    The harness keeps ``carry`` between calls (parameters, optimizer state), so repeated calls train as the
    stateful eager step does; ``jax.jit`` compiles ``step`` itself. ``state(carry)`` names what to compare.
    """

    step: Callable
    carry: Any
    args: tuple
    state: Callable[[Any], Mapping[str, Any]] | None = None


@dataclass
class Workload:
    """One program to compare across modes, with its inputs, reference and peers."""

    name: str
    kind: str
    build: Callable[[Any, dict], Program]
    inputs: Callable[[str, np.random.Generator], dict[str, np.ndarray]]
    sizes: tuple[str, ...]
    outputs: tuple[str, ...] = ("out",)
    reference: Callable[..., dict[str, np.ndarray]] | None = None
    peers: dict[str, Callable] = field(default_factory=dict)
    expect_divergence: bool = False  # True where a static graph is expected to disagree (dynamic control flow)
    note: str = ""
    source: str = ""
    tags: tuple[str, ...] = ()
    # factory(torch, arrays) -> Program whose fn torch.jit.script compiles: the same computation on the same
    # arrays, written without the lib closures TorchScript cannot compile (Python control flow kept as is)
    torchscript: Callable[[Any, dict], Program] | None = None

    def make_inputs(self, size: str, seed: int = 0) -> dict[str, np.ndarray]:
        """Fresh input arrays (float32 unless the factory says otherwise), the same for every mode."""
        if size not in self.sizes:
            raise KeyError(f"workload {self.name!r} has no size {size!r}; it has {', '.join(self.sizes)}")
        return self.inputs(size, np.random.default_rng(seed))

    def peer(self, kind: str) -> Callable[[Callable], Callable]:
        """Decorator attaching a peer implementation (``numpy`` or ``jax``) next to the workload."""
        if kind not in PEER_KINDS:
            raise ValueError(f"peer kind {kind!r} is not one of {PEER_KINDS}; torch peers need no code: the "
                             "workload itself runs on torch")

        def attach(fn: Callable) -> Callable:
            self.peers[kind] = fn
            return fn
        return attach

    def torchscript_twin(self, factory: Callable[[Any, dict], Program]) -> Callable[[Any, dict], Program]:
        """Decorator attaching the workload's TorchScript twin, run by the ``torch.jit.script`` peer.

            >>> @workload(sizes={"small": {"x": (2, 3)}}, register=False)
            ... def twice(lib, x):
            ...     return x * 2
            >>> @twice.torchscript_twin
            ... def _(torch, arrays):
            ...     return Program(lambda x: x * 2, (torch.from_numpy(arrays["x"]),))
            >>> twice.torchscript is not None
            True
        """
        self.torchscript = factory
        return factory

    def run_reference(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The float64 NumPy truth: ``reference`` or else the NumPy peer, on float64 copies of the inputs."""
        arrays64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
        if self.reference is not None:
            return {k: np.asarray(v, dtype=np.float64) for k, v in self.reference(**arrays64).items()}
        if "numpy" in self.peers:
            outs = self.peers["numpy"](np, **arrays64)
            outs = outs if isinstance(outs, tuple) else (outs,)
            return {name: np.asarray(v, dtype=np.float64) for name, v in zip(self.outputs, outs)}
        return None


REGISTRY: dict[str, Workload] = {}


def register(wl: Workload) -> Workload:
    if wl.kind not in KINDS:
        raise ValueError(f"workload {wl.name!r}: kind must be one of {KINDS}, not {wl.kind!r}")
    if wl.name in REGISTRY and REGISTRY[wl.name].source != wl.source:
        raise ValueError(f"workload {wl.name!r} is registered twice ({REGISTRY[wl.name].source} and {wl.source}); "
                         "give one of them another name=")
    REGISTRY[wl.name] = wl
    return wl


def _shapes_factory(sizes: Mapping[str, Mapping[str, tuple]], scale: float = 1.0):
    def make(size: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {k: (scale * rng.standard_normal(shape)).astype(np.float32) for k, shape in sizes[size].items()}
    return make


def _where(fn: Callable) -> str:
    try:
        return f"{os.path.basename(inspect.getsourcefile(fn))}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", "?")


def workload(name: str | None = None, *, sizes: Mapping[str, Mapping[str, tuple]] | None = None,
             inputs: Callable | None = None, size_names: tuple[str, ...] | None = None,
             outputs: tuple[str, ...] = ("out",), reference: Callable | None = None, note: str = "",
             tags: tuple[str, ...] = (), register: bool = True) -> Callable[[Callable], Workload]:
    """Register a forward workload written as ``fn(lib, **inputs)``.

    ``sizes`` maps a size name to input shapes (standard normal float32 inputs); or give ``inputs(size, rng)``
    and ``size_names``. ``reference(**float64_arrays) -> {output: array}`` is the float64 truth; without it,
    the ``numpy`` peer run in float64 is.
    """
    def wrap(fn: Callable) -> Workload:
        if inputs is None and sizes is None:
            raise TypeError(f"@workload {fn.__name__}: give sizes={{'small': {{'x': (64, 64)}}, ...}} or inputs=")
        factory = inputs or _shapes_factory(sizes)
        names = tuple(size_names or sizes)
        arg_names = list(inspect.signature(fn).parameters)[1:]

        def build(lib, arrays: dict) -> Program:
            return Program(lambda *args: fn(lib, *args), tuple(as_lib_tensor(lib, arrays[k]) for k in arg_names))
        wl = Workload(name or fn.__name__, "forward", build, factory, names, tuple(outputs), reference,
                      note=note, source=_where(fn), tags=tags)
        return _register(wl) if register else wl
    return wrap


def program(name: str | None = None, *, kind: str, inputs: Callable, size_names: tuple[str, ...] = SIZES,
            outputs: tuple[str, ...] = ("out",), reference: Callable | None = None,
            expect_divergence: bool = False, note: str = "", tags: tuple[str, ...] = (),
            register: bool = True) -> Callable[[Callable], Workload]:
    """Register a workload written as ``build(lib, arrays) -> Program`` (modules, optimizers, train steps).

    ``inputs(size, rng) -> {name: array}`` draws everything the program starts from: data and initial
    parameters, so every mode (and the reference) starts from the same numbers.
    """
    def wrap(build: Callable) -> Workload:
        wl = Workload(name or build.__name__, kind, build, inputs, tuple(size_names), tuple(outputs), reference,
                      expect_divergence=expect_divergence, note=note, source=_where(build), tags=tags)
        return _register(wl) if register else wl
    return wrap


_register = register


_DEVICE: contextvars.ContextVar[str] = contextvars.ContextVar("graphduel_workload_device", default="cpu")


@contextlib.contextmanager
def on_device(device: str):
    """Build programs on ``device``: :func:`as_lib_tensor` and :func:`load_params` place tensors there."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


def as_lib_tensor(lib, array: np.ndarray, requires_grad: bool = False):
    """``array`` as a tensor of ``lib`` (eager or torch), same dtype, on the device being built for.

        >>> import eager, numpy as np
        >>> as_lib_tensor(eager, np.ones(2, np.float32)).dtype
        dtype('float32')
    """
    device = _DEVICE.get()
    if getattr(lib, "__name__", "") == "torch":
        t = lib.from_numpy(np.ascontiguousarray(array).copy()).to(device)
        return t.requires_grad_(requires_grad) if requires_grad else t
    return lib.tensor(array, device=device, requires_grad=requires_grad)


def load_params(lib, module, arrays: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Copy ``arrays[prefix + name]`` into each parameter of ``module`` (both eager and torch modules)."""
    if _DEVICE.get() != "cpu":
        module.to(_DEVICE.get())
    with lib.no_grad():
        for pname, p in module.named_parameters():
            key = prefix + pname
            if key not in arrays:
                raise KeyError(f"load_params: no initial value {key!r} in the workload's inputs "
                               f"(it has {', '.join(sorted(arrays))})")
            p.copy_(as_lib_tensor(lib, arrays[key]))


def scripted_twin(name: str, inputs: tuple[str, ...]) -> Callable[[Any, dict], Program]:
    """A TorchScript twin factory: the function ``name`` of ``compare/workloads/torchscript.py`` called on the
    workload's arrays ``inputs`` (imported when the ``torch.jit.script`` peer runs, as it needs torch).

        >>> factory = scripted_twin("softmax", ("x",))
        >>> import torch; prog = factory(torch, {"x": np.zeros((2, 3), np.float32)})
        >>> prog.fn.__name__, prog.args[0].shape
        ('softmax', torch.Size([2, 3]))
    """
    def factory(lib, arrays: dict) -> Program:
        from compare.workloads import torchscript
        return Program(getattr(torchscript, name), tuple(as_lib_tensor(lib, arrays[k]) for k in inputs))
    return factory


def param_state(module, prefix: str = "") -> Callable[[], dict]:
    """A ``Program.state`` that reads a module's parameters after a call."""
    return lambda: {f"state:{prefix}{n}": p for n, p in module.named_parameters()}


def get(name: str) -> Workload:
    """The registered workload called ``name`` (a clear error lists the known ones)."""
    from compare import workloads  # noqa: F401  (registers the built-in workloads)
    if name not in REGISTRY:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]
