"""``tracer.script``: Python control flow on tensors into the static graph, by rewriting the function's source.

A plain trace runs the Python once and freezes the branches it took (its guards then retrace when a frozen value
changes). ``script`` first rewrites the function's source with an AST pass, as TensorFlow's AutoGraph does, so
that control flow on tensors is recorded as one node with regions:

- ``if`` on a tensor condition becomes ``eager.cond``, ``while`` on one ``eager.while_loop``, ``for x in t`` over
  a tensor's first dimension ``eager.scan``, and ``a if t else b`` a ``cond``; ``and``/``or``/``not`` in their
  conditions become logical ops when an operand is a tensor;
- the choice is made at run time: a converted statement calls a helper that looks at the condition, and a Python
  bool (``if self.training:``) runs as plain Python;
- a variable assigned in a branch or loop body and read after it (or by the loop's next trip) is a carried value
  (an operand and a result of the node); Python numbers become 0-d tensors there;
- a Python int the function reads and writes (``self.counter += 1``, a ``global`` step count) is lifted into
  state: during each call the attribute holds a 0-d int64 tensor that the graph reads and updates in place, and
  its new value is written back as a Python int after the call, so eager code still sees ints and a branch on the
  counter is a ``cond`` on state (no retrace);
- calls into the user's own functions and modules are converted too (not into graphduel, the standard library or
  installed packages); ``%`` and ``//`` on tensors are eager's own (``remainder``, ``floor_divide``).

What it cannot convert is a ``ScriptError`` naming the file:line and the construct: when the condition turns out
to be a tensor, a ``return``/``break``/``continue`` inside the branch or loop, a loop's ``else:``, a write to a
Python object from outside the body (``outs.append(h)``, ``self.cache = h``), a variable only one branch defines,
a branch or loop trip that changes a value's structure, shape or dtype; when converting, ``yield``/``async`` and a
function whose source inspect cannot get. A ``Scripted`` is a ``tracer.Traced``: ``traced.conversions`` lists
each converted line and what it became, ``traced.source`` is the rewritten source.

    >>> import eager, tracer
    >>> def relu_or_flip(x):
    ...     if x.sum() > 0:
    ...         y = x.clamp(min=0)
    ...     else:
    ...         y = -x
    ...     return y
    >>> f = tracer.script(relu_or_flip, eager.ones(2))
    >>> f(-eager.ones(2)).tolist(), f.retrace_count
    ([1.0, 1.0], 0)
    >>> [(c.construct, c.became) for c in f.conversions]  # str(c): "model.py:12 if -> cond"
    [('if', 'cond')]

Not converted: library code called from converted code, and so the user's code it calls back (a library module
given to ``script`` itself, ``nn.Sequential``, is converted), lambdas other than the scripted function itself,
chained comparisons on tensors (``0 < t < 1``), and Python state other than ints (the trace guards it). A lifted
int is swapped into its attribute for the length of a call: code that reads it outside the converted function
sees the tensor then, and one ``Scripted`` is not safe to call from several threads at once. ``x += 1`` on a value
a converted branch or loop carries rebinds it, as for a Python number (in place, it would write to an operand).
"""

from __future__ import annotations

import ast
import builtins
import contextvars
import copy
import inspect
import itertools
import os
import sys
import sysconfig
import types
import weakref
from typing import Any, NamedTuple

import eager
from eager.autograd.mode import MODE, _package_dirs
from eager.control import ControlFlowError, cond, scan, while_loop
from eager.nn.module import Module
from eager.primitives import Aval, describe
from eager.tensor import Tensor
from tracer.traced import Traced


class ScriptError(Exception):
    """``tracer.script`` cannot convert a construct; the message names the source file:line and the construct."""


class Conversion(NamedTuple):
    """One converted statement and what it became in a run: ``cond``, ``while_loop``, ``scan`` or ``python``."""

    source: str        # file:line
    construct: str     # "if", "while", "for", "if expression"
    became: str

    def __str__(self) -> str:
        return f"{self.source} {self.construct} -> {self.became}"


class Site(NamedTuple):
    """What the converter knows about one rewritten statement, for the helper it calls and its messages."""

    file: str
    line: int
    construct: str             # "if", "while", "for", "if expression", "state"
    text: str                  # the statement's header as written (``if self.counter % 2 == 0:``)
    outputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    refusal: str = ""          # why it cannot be converted (a checked statement) or what it writes outside (one
                               # converted to a node)

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


_OPS = {"if": "cond", "if expression": "cond", "while": "while_loop", "for": "scan"}
_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("graphduel_script_log", default=None)


# ---------------------------------------------------------------- public entry point


def script(fn, *example_inputs, strict: bool = False, lower=None, cache_size: int = 8, guards: str = "retrace",
           **example_kwargs) -> Scripted:
    """Convert ``fn`` (a function, a bound method, a Module: its ``forward``, or a callable object) and trace it.

    Options as ``tracer.trace``. The result is a ``Traced`` (``compiler.compile`` compiles it), with
    ``.conversions`` (each converted line and what it became) and ``.source`` (the rewritten source).

        >>> import eager
        >>> from eager import nn
        >>> class Counter(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.calls = 0
        ...     def forward(self, x):
        ...         self.calls += 1
        ...         if self.calls % 2 == 0:
        ...             x = x * 2
        ...         return x
        >>> model = Counter()
        >>> f = script(model, eager.ones(1))
        >>> [f(eager.ones(1)).item() for _ in range(3)], model.calls, f.retrace_count
        ([1.0, 2.0, 1.0], 3, 0)
    """
    func, bound, name = _target(fn)
    compiled = _compile(func, bound=bound, lift=True)
    converted = _rebuild(compiled, func)
    if bound is not None:
        converted = types.MethodType(converted, bound)
    traced = Scripted(converted, compiled, strict=strict, lower=lower, cache_size=cache_size, guards=guards,
                      name=name)
    traced.entry_for(*example_inputs, **example_kwargs)
    return traced


def do_not_convert(fn):
    """Mark a function so that converted code calls it as it is (its Python control flow is then traced, and
    guarded, as by ``tracer.trace``)."""
    fn.__graphduel_no_convert__ = True
    return fn


class Scripted(Traced):
    """A ``Traced`` whose function was rewritten by ``tracer.script``; each call swaps the lifted Python ints for
    their state tensors, runs the traced program, and writes the new values back as ints."""

    def __init__(self, fn, compiled: _Compiled, **options):
        super().__init__(fn, **options)
        self._compiled = compiled
        self.conversions: list[Conversion] = []   # each converted line and what it became, in the order first run

    @property
    def source(self) -> str:
        """The rewritten source of the scripted function (what tracing ran)."""
        return self._compiled.source

    @property
    def lifted(self) -> list[str]:
        """The Python ints lifted into state, by the expression that names them (``self.counter``)."""
        return [lift.path for lift in self._compiled.lifts]

    def _enter(self):
        token = _LOG.set(self.conversions)
        return token, [(lift, lift.enter()) for lift in self._compiled.lifts]

    def _exit(self, state) -> None:
        token, swapped = state
        try:
            for lift, where in swapped:
                if where is not None:
                    lift.exit(where)
        finally:
            _LOG.reset(token)

    def __call__(self, *args, **kwargs):
        state = self._enter()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._exit(state)

    def entry_for(self, *args, **kwargs):
        state = self._enter()
        try:
            return super().entry_for(*args, **kwargs)
        finally:
            self._exit(state)

    def check(self, *args, rtol: float | None = None, atol: float | None = None, **kwargs):
        state = self._enter()
        try:
            return super().check(*args, rtol=rtol, atol=atol, **kwargs)
        finally:
            self._exit(state)

    def retrace_with(self, *example_inputs, lower=None, strict: bool | None = None, cache_size: int | None = None,
                     guards: str | None = None, **example_kwargs) -> Scripted:
        """A new ``Scripted`` of the same conversion (and the same lifted state) traced with other options, e.g.
        ``lower=`` the compiler's lowering: what ``compiler.compile(scripted, *inputs)`` needs."""
        other = Scripted(self.fn, self._compiled, strict=self.strict if strict is None else strict,
                         lower=lower or self.lower, cache_size=cache_size or self.cache_size,
                         guards=guards or self.guards, name=self.name)
        other.entry_for(*example_inputs, **example_kwargs)
        return other

    def __repr__(self) -> str:
        converted = sum(c.became != "python" for c in self.conversions)
        return super().__repr__()[:-1].replace("<Traced", "<Scripted", 1) + f", {converted} converted statements>"


def _target(fn) -> tuple[types.FunctionType, Any, str]:
    """The function to convert, the object it is bound to (or None), and a name for messages."""
    if isinstance(fn, Traced):
        raise TypeError(f"tracer.script: {fn.name} is traced already; pass the function or module itself.")
    if isinstance(fn, Module):
        forward = type(fn).forward
        if not isinstance(forward, types.FunctionType):
            raise TypeError(f"tracer.script: {type(fn).__name__}.forward is not a Python function; nothing to convert.")
        return forward, fn, type(fn).__name__
    if isinstance(fn, types.MethodType) and isinstance(fn.__func__, types.FunctionType):
        return fn.__func__, fn.__self__, fn.__func__.__name__
    if isinstance(fn, types.FunctionType):
        return fn, None, fn.__name__
    call = type(fn).__dict__.get("__call__") if not isinstance(fn, type) else None
    if isinstance(call, types.FunctionType):
        return call, fn, type(fn).__name__
    raise TypeError(f"tracer.script: expected a Python function, a method, a Module or a callable object, got "
                    f"{type(fn).__name__}.")


# ---------------------------------------------------------------- source -> AST -> rewritten code -> function


class _Compiled(NamedTuple):
    code: types.CodeType
    cell: Any                  # the cell holding the Runtime (bound to ``_gd`` in the rewritten code)
    source: str
    lifts: tuple


_PARSED: dict[tuple[str, int], ast.Module] = {}
_OUR_CODE: dict[int, types.CodeType] = {}              # every code object made here (kept alive: ids stay unique)
_CALLEES: dict[types.CodeType, _Compiled] = {}          # a callee's code -> its conversion (no lifted state)
_REBUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # callee function -> converted function
_GENERATOR_FLAGS = 0x20 | 0x80 | 0x200   # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR


def _compile(fn: types.FunctionType, *, bound=None, lift: bool, called_at: str | None = None) -> _Compiled:
    """Rewrite ``fn``'s source and compile it with the original file name and line numbers."""
    code = fn.__code__
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    node, cls = _find_def(fn, where, called_at)
    if isinstance(node, ast.AsyncFunctionDef) or code.co_flags & _GENERATOR_FLAGS:
        kind = "an async function" if isinstance(node, ast.AsyncFunctionDef) or code.co_flags & 0x80 else \
            "a generator (it has `yield`)"
        raise ScriptError(f"tracer.script cannot convert {fn.__qualname__} ({where}): it is {kind}; a traced "
                          "function returns its result. Collect the values and return them instead.")
    if isinstance(node, ast.Lambda):
        node = ast.copy_location(ast.FunctionDef(name="_gd_lambda", args=node.args, body=[
            ast.copy_location(ast.Return(node.body), node.body)], decorator_list=[], returns=None), node)
    _refuse_yield(node, fn, code.co_filename)
    sites: list[Site] = []
    lifts = _find_lifts(node, fn, bound) if lift else ()
    converter = _Converter(node, code.co_filename, sites, {lf.path for lf in lifts if lf.kind == "attr"},
                           {lf.path for lf in lifts if lf.kind == "global"})
    converter.function(node)
    _strip_evaluated(node)
    module = _factory(node, code.co_freevars, cls)
    source = ast.unparse(node)
    try:
        compiled = builtins.compile(module, code.co_filename, "exec")
    except SyntaxError as e:  # a bug of the converter: show what it produced
        raise ScriptError(f"tracer.script: the rewritten {fn.__qualname__} ({where}) does not compile ({e}); this "
                          f"is a bug in tracer.script. The rewritten source:\n{source}") from e
    runtime = Runtime(sites, fn.__globals__, code.co_filename, lifts)
    namespace = {"__name__": fn.__module__}
    exec(compiled, namespace)  # defines the factory; calling it builds the function (its cells are replaced)
    inner = namespace["_gd_factory"](runtime, *[None] * len(_factory_params(code.co_freevars)))
    _remember(inner.__code__)
    _debug_source(fn, source)
    return _Compiled(inner.__code__, types.CellType(runtime), source, tuple(lifts))


def _rebuild(compiled: _Compiled, fn: types.FunctionType) -> types.FunctionType:
    """The rewritten code as a function with ``fn``'s globals, defaults and closure cells (so ``nonlocal`` writes and
    later rebinds of the enclosing variables are shared), plus the runtime's cell."""
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    cells["_gd"] = compiled.cell
    missing = [n for n in compiled.code.co_freevars if n not in cells]
    if missing:
        raise ScriptError(f"tracer.script: the rewritten {fn.__qualname__} needs the enclosing variables "
                          f"{missing}, which the original does not close over; this is a bug in tracer.script.")
    closure = tuple(cells[n] for n in compiled.code.co_freevars)
    new = types.FunctionType(compiled.code, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = dict(fn.__kwdefaults__) if fn.__kwdefaults__ else None
    new.__qualname__, new.__doc__, new.__module__ = fn.__qualname__, fn.__doc__, fn.__module__
    new.__annotations__ = dict(getattr(fn, "__annotations__", {}))
    new.__dict__.update(fn.__dict__)
    return new


def _source_lines(fn, where: str, called_at: str | None) -> list[str]:
    try:
        lines, _ = inspect.findsource(fn)
    except (OSError, TypeError) as e:
        via = f", called at {called_at}," if called_at else ""
        raise ScriptError(f"tracer.script cannot get the source of {fn.__qualname__} ({where}){via}: {e}. Its "
                          "control flow cannot be converted: define it in a file, or mark it with do_not_convert (from "
                          "tracer.script) to trace it as it is (frozen and guarded).") from e
    return lines


def _find_def(fn, where: str, called_at: str | None) -> tuple[ast.AST, str | None]:
    """A copy of ``fn``'s node in its file's AST, and the innermost class around it (for ``super()`` and names
    mangled by ``__x``)."""
    code = fn.__code__
    lines = _source_lines(fn, where, called_at)
    key = (code.co_filename, hash("".join(lines)))
    tree = _PARSED.get(key)
    if tree is None:
        tree = _PARSED[key] = ast.parse("".join(lines), code.co_filename)
    found = []

    def visit(node, classes):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = child.decorator_list[0].lineno if child.decorator_list else child.lineno
                if child.name == fn.__name__ and code.co_firstlineno in (first, child.lineno):
                    found.append((child, classes[-1] if classes else None))
            elif isinstance(child, ast.Lambda) and fn.__name__ == "<lambda>" and child.lineno == code.co_firstlineno:
                names = [a.arg for a in child.args.posonlyargs + child.args.args]
                if names == list(code.co_varnames[:len(names)]):
                    found.append((child, classes[-1] if classes else None))
            visit(child, classes + [child.name] if isinstance(child, ast.ClassDef) else classes)
    visit(tree, [])
    if len(found) != 1:
        what = "no definition" if not found else f"{len(found)} definitions"
        raise ScriptError(f"tracer.script cannot find the source of {fn.__qualname__} ({where}): {what} of it start "
                          "on that line. Give it a line of its own (a def, or one lambda per line).")
    node, cls = found[0]
    return copy.deepcopy(node), cls


def _refuse_yield(fdef, fn, filename: str) -> None:
    for node in _walk_scope(fdef.body):
        if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
            kind = {ast.Yield: "yield", ast.YieldFrom: "yield from", ast.Await: "await"}[type(node)]
            raise ScriptError(f"tracer.script cannot convert {fn.__qualname__}: `{kind}` at "
                              f"{os.path.basename(filename)}:{node.lineno}; a traced function returns its result.")


def _strip_evaluated(fdef) -> None:
    """Decorators, annotations and default values are evaluated where the factory runs (not the user's module):
    the function object takes them from the original instead (``_rebuild``)."""
    fdef.decorator_list = []
    fdef.returns = None
    a = fdef.args
    for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
        if arg is not None:
            arg.annotation = None
    a.defaults = [ast.copy_location(ast.Constant(None), d) for d in a.defaults]
    a.kw_defaults = [None if d is None else ast.copy_location(ast.Constant(None), d) for d in a.kw_defaults]


def _factory_params(freevars) -> list[str]:
    return [n for n in freevars if n != "__class__"]


def _factory(fdef, freevars, cls: str | None) -> ast.Module:
    """``def _gd_factory(_gd, *freevars): [class C:] def f(...): ...; return f``: compiled inside a function whose
    parameters are the original's enclosing variables (so they stay closure reads, and their cells can be put
    back), inside a class of the original's name when it is in one (``super()`` and ``__x`` names work)."""
    if cls is not None:
        keep = ast.Assign([ast.Name("_gd_out", ast.Store())], ast.Name(fdef.name, ast.Load()))
        body = [ast.ClassDef(cls, [], [], [fdef, keep], []),
                ast.Return(ast.Attribute(ast.Name(cls, ast.Load()), "_gd_out", ast.Load()))]
    else:
        body = [fdef, ast.Return(ast.Name(fdef.name, ast.Load()))]
    factory = ast.FunctionDef("_gd_factory", _args(["_gd", *_factory_params(freevars)]), body, [], None)
    return ast.fix_missing_locations(ast.Module(_located([factory], fdef), []))


def _remember(code: types.CodeType) -> None:
    _OUR_CODE[id(code)] = code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _remember(const)


def _debug_source(fn, source: str) -> None:
    """``GRAPHDUEL_DEBUG=3`` prints every rewritten function (as tracing prints the graphs at 2)."""
    try:
        level = int(os.environ.get("GRAPHDUEL_DEBUG", "0") or 0)
    except ValueError:
        return
    if level >= 3:
        print(f"[graphduel] tracer.script rewrote {fn.__qualname__}:\n{source}", file=sys.stderr)


# ---------------------------------------------------------------- lifted Python state


class _Lift:
    """A Python int the function reads and writes, lifted into a 0-d int64 tensor for the length of each call."""

    def __init__(self, path: str, kind: str, locate, device):
        self.path, self.kind, self.locate, self.device = path, kind, locate, device
        self.tensor: Tensor | None = None
        self.last: int | None = None

    def enter(self) -> tuple | None:
        """Put the state tensor where the int is; returns (container, key), or None when nothing was swapped (a
        nested call found the tensor already there, or the value is no longer an int: the trace guards it)."""
        where = self.locate()
        if where is None:
            return None
        d, key = where
        value = d.get(key)
        if type(value) is not int:
            return None
        if self.tensor is None or value != self.last:  # first call, or eager code changed the int meanwhile
            self.tensor, self.last = eager.tensor(value, dtype=eager.int64, device=self.device), value
        d[key] = self.tensor
        return where

    def exit(self, where: tuple) -> None:
        d, key = where
        value = d.get(key)
        if isinstance(value, Tensor) and value._data.ndim == 0 and value.dtype.kind in "iu":
            self.tensor, self.last = value, int(value._data.item())  # one read (a sync on a GPU)
            d[key] = self.last


def _find_lifts(fdef, fn, bound) -> list[_Lift]:
    """Attributes (``self.counter``, ``state.step``) and ``global`` names the function assigns whose value is an
    int now: the state it reads and writes."""
    params = {a.arg for a in fdef.args.posonlyargs + fdef.args.args + fdef.args.kwonlyargs}
    first = (fdef.args.posonlyargs + fdef.args.args)[0].arg if fdef.args.posonlyargs + fdef.args.args else None
    chains, declared_global = {}, set()
    for node in ast.walk(fdef):
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        for target in _targets_of(node):
            path = _dotted(target)
            if path is not None and "." in path:
                chains.setdefault(path, None)
    device = _device_of_module(bound)
    assigned = set(_assigned(fdef.body))
    lifts = []
    for path in chains:
        root, *attrs = path.split(".")
        if root == first and bound is not None:
            get_root = (lambda b: lambda: b)(bound)
        elif root in params or root in assigned:
            continue  # an argument or a local: another object on each call
        elif root in fn.__code__.co_freevars:
            cell = fn.__closure__[fn.__code__.co_freevars.index(root)]
            get_root = (lambda c: lambda: c.cell_contents)(cell)
        elif root in fn.__globals__:
            get_root = (lambda g, k: lambda: g[k])(fn.__globals__, root)
        else:
            continue
        locate = _attr_locator(get_root, attrs)
        where = locate()
        if where is not None and root == first and bound is not None and len(attrs) == 1:
            locate = (lambda w: lambda: w)(where)  # ``self.counter``: the instance dict is found once
        if where is not None and type(where[0].get(where[1])) is int:
            lifts.append(_Lift(path, "attr", locate, device))
    for name in sorted(declared_global & assigned):
        if type(fn.__globals__.get(name)) is int:
            lifts.append(_Lift(name, "global", (lambda g, k: lambda: (g, k))(fn.__globals__, name), device))
    return lifts


def _attr_locator(get_root, attrs: list[str]):
    def locate():
        try:
            obj = get_root()
            for a in attrs[:-1]:
                obj = getattr(obj, a)
        except (AttributeError, KeyError, ValueError):
            return None
        d = getattr(obj, "__dict__", None)
        return (d, attrs[-1]) if isinstance(d, dict) and attrs[-1] in d else None
    return locate


def _device_of_module(bound):
    if isinstance(bound, Module):
        for p in bound.parameters():
            return p.device
    return None


def _targets_of(node) -> list:
    if isinstance(node, ast.Assign):
        return [t for target in node.targets for t in _flat_targets(target)]
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target] if not isinstance(node, ast.AnnAssign) or node.value is not None else []
    return []


def _flat_targets(target) -> list:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [t for e in target.elts for t in _flat_targets(e)]
    if isinstance(target, ast.Starred):
        return _flat_targets(target.value)
    return [target]


def _dotted(node) -> str | None:
    """``a.b.c`` for an attribute chain on a name (None for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


# ---------------------------------------------------------------- analysis: names assigned, read, live


def _walk_scope(stmts):
    """Every node of these statements, not descending into nested functions, lambdas or classes."""
    todo = list(stmts)
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                todo.append(child)


def _assigned(stmts) -> list[str]:
    """Names these statements bind in their scope, in order of first appearance."""
    out: dict[str, None] = {}

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.setdefault(child.name)
            elif isinstance(child, ast.Lambda):
                continue
            elif isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                for n in ast.walk(child):  # only an assignment expression binds outside a comprehension
                    if isinstance(n, ast.NamedExpr):
                        out.setdefault(n.target.id)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                out.setdefault(child.id)
            elif isinstance(child, ast.alias):
                out.setdefault((child.asname or child.name).split(".")[0])
            else:
                if isinstance(child, ast.ExceptHandler) and child.name:
                    out.setdefault(child.name)
                if isinstance(child, (ast.MatchAs, ast.MatchStar)) and child.name:
                    out.setdefault(child.name)
                if isinstance(child, ast.MatchMapping) and child.rest:
                    out.setdefault(child.rest)
                visit(child)
    visit(ast.Module(list(stmts), []))
    return list(out)


def _reads(node) -> set[str]:
    """Names read anywhere in ``node`` (nested scopes included: conservative)."""
    if node is None:
        return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Load, ast.Del))}


def _stores(target) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _walrus(node) -> set[str]:
    return {n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr)}


def _uses(stmts, defined=()) -> set[str]:
    return _flow(stmts, set(defined))[0]


def _flow(stmts, defined: set) -> tuple[set, set]:
    """(names these statements may read before they surely assign them, names surely assigned after them)."""
    uses: set[str] = set()
    for s in stmts:
        u, defined = _flow_stmt(s, defined)
        uses |= u
    return uses, defined


def _flow_stmt(s, defined: set) -> tuple[set, set]:  # noqa: C901  (one case per statement kind)
    def reads(*nodes):
        return set().union(*(_reads(n) for n in nodes)) - defined
    if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return reads(*s.body, *s.decorator_list), defined | {s.name}
    if isinstance(s, ast.Assign):
        return reads(s.value, *s.targets), defined | set().union(*map(_stores, s.targets)) | _walrus(s)
    if isinstance(s, ast.AugAssign):
        own = _stores(s.target) - defined  # ``x += 1`` reads x
        return reads(s.value, s.target) | own, defined | _stores(s.target)
    if isinstance(s, ast.AnnAssign):
        bound = _stores(s.target) if s.value is not None else set()
        return reads(s.value, s.target), defined | bound
    if isinstance(s, ast.If):
        ub, db = _flow(s.body, defined)
        uo, do = _flow(s.orelse, defined)
        return reads(s.test) | ub | uo, (db & do) | _walrus(s.test)
    if isinstance(s, ast.While):
        return reads(s.test) | _flow(s.body, defined)[0] | _flow(s.orelse, defined)[0], defined | _walrus(s.test)
    if isinstance(s, (ast.For, ast.AsyncFor)):
        ub = _flow(s.body, defined | _stores(s.target))[0]
        return reads(s.iter) | ub | _flow(s.orelse, defined)[0], defined
    if isinstance(s, (ast.With, ast.AsyncWith)):
        u = reads(*[item.context_expr for item in s.items])
        inner = defined | set().union(*(_stores(i.optional_vars) for i in s.items if i.optional_vars))
        ub, after = _flow(s.body, inner)
        return u | ub, after
    if isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
        ub, db = _flow(s.body, defined)
        u = set(ub)
        for h in s.handlers:
            u |= reads(h.type) | _flow(h.body, defined | ({h.name} if h.name else set()))[0]
        u |= _flow(s.orelse, db)[0]
        uf, df = _flow(s.finalbody, defined)
        return u | uf, df
    if isinstance(s, ast.Match):
        u = reads(s.subject)
        for case in s.cases:
            u |= reads(case.guard) | _flow(case.body, defined | set(_assigned([case.pattern])))[0]
        return u, defined
    if isinstance(s, (ast.Import, ast.ImportFrom)):
        return set(), defined | set(_assigned([s]))
    if isinstance(s, ast.Delete):
        return reads(*s.targets), defined - set().union(*map(_reads, s.targets))
    if isinstance(s, (ast.Global, ast.Nonlocal)):
        return set(), defined
    return reads(s), defined | _walrus(s)


def _live_after(stmts, live_out: set) -> list[set]:
    """For each statement, the names that may be read after it (before being assigned again)."""
    after: list[set] = [set()] * len(stmts)
    live = set(live_out)
    for i in range(len(stmts) - 1, -1, -1):
        after[i] = live
        uses, defs = _flow([stmts[i]], set())
        live = (live - defs) | uses
    return after


def _exits(stmts) -> str:
    """The first ``return``, ``break`` or ``continue`` that would leave these statements (a ``break`` of a loop
    nested in them does not), in words; "" if none."""
    def visit(node, in_loop: bool) -> str:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Return):
                return f"a `return` (line {child.lineno})"
            if isinstance(child, (ast.Break, ast.Continue)) and not in_loop:
                return f"a `{'break' if isinstance(child, ast.Break) else 'continue'}` (line {child.lineno})"
            if isinstance(child, (ast.While, ast.For, ast.AsyncFor)):  # its own break/continue stay inside it
                found = visit(ast.Module(child.body, []), True) or visit(ast.Module(child.orelse, []), in_loop)
            else:
                found = visit(child, in_loop)
            if found:
                return found
        return ""
    return visit(ast.Module(list(stmts), []), False)


_MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault", "add", "discard",
             "popitem", "sort", "reverse"}


def _outer_writes(stmts, local: set, declared: set) -> str:
    """The first write to a Python object from outside these statements, in words ("" if none): an attribute or
    item assigned on an outside name, a list/dict/set mutator called on one, or a global/nonlocal assigned."""
    for node in _walk_scope(stmts):
        targets = _targets_of(node) + ([t for t in node.targets] if isinstance(node, ast.Delete) else [])
        for t in targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)):
                root = _root_name(t)
                if root is None or root not in local:
                    return f"`{ast.unparse(t)} = ...` (line {node.lineno})"
            elif isinstance(t, ast.Name) and t.id in declared:
                return f"`{t.id} = ...` assigns a global/nonlocal variable (line {node.lineno})"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
            root = _root_name(node.func.value)
            if root is not None and root not in local:
                return f"`{ast.unparse(node.func)}(...)` (line {node.lineno})"
    return ""


def _root_name(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


# ---------------------------------------------------------------- the rewrite


_FRAME_BUILTINS = {"super", "locals", "globals", "vars", "eval", "exec", "dir", "breakpoint"}


def _gd(attr: str, *args, keywords=()) -> ast.Call:
    """``_gd.attr(*args)``: a call of the runtime (constants for ints and strings)."""
    nodes = [ast.Constant(a) if isinstance(a, (int, str)) or a is None else a for a in args]
    return ast.Call(ast.Attribute(ast.Name("_gd", ast.Load()), attr, ast.Load()), nodes, list(keywords))


def _args(names) -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in names], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])


def _lambda(body) -> ast.Lambda:
    return ast.Lambda(_args([]), body)


def _load(name: str) -> ast.Call:
    return _gd("load", _lambda(ast.Name(name, ast.Load())), name)


def _located(nodes: list, like) -> list:
    """Generated nodes get the first line of the statement they replace (its header: a span would make Python
    attribute a generated call to the statement's last line)."""
    for stmt in nodes:
        for node in ast.walk(stmt):
            if "lineno" in node._attributes and not hasattr(node, "lineno"):
                node.lineno = node.end_lineno = like.lineno
                node.col_offset = node.end_col_offset = like.col_offset
    return nodes


class _Converter:
    """Rewrites one function's body (and the functions nested in it, each as its own scope)."""

    def __init__(self, fdef, filename: str, sites: list, lifted_attrs: set, lifted_globals: set):
        self.file, self.sites = filename, sites
        self.lifted_attrs, self.lifted_globals = lifted_attrs, lifted_globals
        self.declared = {n for node in _walk_scope(fdef.body) if isinstance(node, (ast.Global, ast.Nonlocal))
                         for n in node.names}
        self.globals = {n for node in _walk_scope(fdef.body) if isinstance(node, ast.Global) for n in node.names}
        positional = fdef.args.posonlyargs + fdef.args.args
        self.first = positional[0].arg if positional else None
        self.carried: set[str] = set()   # parameters of the generated function being written (its carried values)
        self.count = itertools.count()
        self.exprs = _Exprs(self)

    def function(self, fdef) -> None:
        nested = {n for node in ast.walk(fdef) if isinstance(node, (ast.FunctionDef, ast.Lambda))
                  and node is not fdef for n in _reads(node)}
        fdef.body = self.block(fdef.body, nested) or [ast.Pass()]

    def site(self, node, construct: str, text: str, outputs=(), inputs=(), refusal: str = "") -> int:
        self.sites.append(Site(self.file, node.lineno, construct, text, tuple(outputs), tuple(inputs), refusal))
        return len(self.sites) - 1

    def block(self, stmts, live_out: set) -> list:
        out = []
        for s, live in zip(stmts, _live_after(stmts, live_out)):
            out.extend(_located(self.stmt(s, live), s))
        return out

    def stmt(self, s, live: set) -> list:  # noqa: C901  (one case per statement kind)
        if isinstance(s, ast.AugAssign) and isinstance(s.target, ast.Name) and s.target.id in self.carried:
            # ``i += 1`` on a carried value rebinds it (as for a Python number): in place it would write to an
            # operand of the node, which a region refuses
            s = ast.copy_location(ast.Assign([s.target], ast.BinOp(ast.Name(s.target.id, ast.Load()), s.op,
                                                                    s.value)), s)
        if isinstance(s, ast.If):
            return self.if_(s, live)
        if isinstance(s, ast.While):
            return self.while_(s, live)
        if isinstance(s, ast.For):
            return self.for_(s, live)
        if isinstance(s, ast.FunctionDef):
            child = _Converter(s, self.file, self.sites, self._visible_attrs(s), self.lifted_globals)
            s.decorator_list = [self.exprs.visit(d) for d in s.decorator_list]
            child.function(s)
            return [s]
        if isinstance(s, (ast.AsyncFunctionDef, ast.ClassDef)):
            return [s]
        if isinstance(s, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and any(
                self._lifted(t) for t in _targets_of(s)):
            return self.state_write(s)
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                item.context_expr = self.exprs.visit(item.context_expr)
            s.body = self.block(s.body, live) or [ast.Pass()]
            return [s]
        if isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            inner = live | _uses([s])
            s.body = self.block(s.body, inner) or [ast.Pass()]
            for h in s.handlers:
                h.type = self.exprs.visit(h.type) if h.type is not None else None
                h.body = self.block(h.body, live) or [ast.Pass()]
            s.orelse = self.block(s.orelse, live)
            s.finalbody = self.block(s.finalbody, live)
            return [s]
        if isinstance(s, ast.Match):
            s.subject = self.exprs.visit(s.subject)
            for case in s.cases:
                case.body = self.block(case.body, live) or [ast.Pass()]
            return [s]
        return [self.exprs.visit(s)]

    def _visible_attrs(self, fdef) -> set:
        """Lifted chains a nested function sees: those whose root it does not rebind."""
        own = {a.arg for a in fdef.args.posonlyargs + fdef.args.args + fdef.args.kwonlyargs} | set(
            _assigned(fdef.body))
        return {p for p in self.lifted_attrs if p.split(".")[0] not in own}

    def _lifted(self, target) -> bool:
        path = _dotted(target)
        return path is not None and (path in self.lifted_attrs or (path in self.lifted_globals and
                                                                  path in self.globals))

    def test(self, node):
        return _bool_ops(self.exprs.visit(node))

    # -------------------------------------------------------- if
    def if_(self, s, live: set) -> list:
        text = f"if {ast.unparse(s.test)}:"
        reason = _exits(s.body + s.orelse)
        if reason:
            i = self.site(s, "if", text, refusal=reason)
            s.test = _gd("check", i, self.test(s.test))
            s.body = self.block(s.body, live) or [ast.Pass()]
            s.orelse = self.block(s.orelse, live)
            return [s]
        assigned = [n for n in _assigned(s.body + s.orelse) if n not in self.declared]
        exposed = _uses(s.body) | _uses(s.orelse)
        outputs = [n for n in assigned if n in live]
        inputs = outputs + [n for n in assigned if n not in live and n in exposed]
        writes = _outer_writes(s.body + s.orelse, set(assigned), self.declared)
        i = self.site(s, "if", text, outputs, inputs, writes)
        k = next(self.count)
        test = self.test(s.test)
        true_def = self.branch(f"_gd_if_true_{s.lineno}_{k}", inputs, s.body, outputs)
        false_def = self.branch(f"_gd_if_false_{s.lineno}_{k}", inputs, s.orelse, outputs)
        call = _gd("if_", i, test, ast.Name(true_def.name, ast.Load()), ast.Name(false_def.name, ast.Load()),
                   ast.Tuple([_load(n) for n in inputs], ast.Load()))
        return [true_def, false_def, *self.assign(outputs, call)]

    def branch(self, name: str, params: list[str], body: list, outputs: list[str], first=()) -> ast.FunctionDef:
        """``def name(*params): body; return (*outputs,)`` (with the enclosing ``global``/``nonlocal``
        declarations the body needs)."""
        outer, self.carried = self.carried, self.carried | set(params)
        try:
            converted = self.block(list(first) + list(body), set(outputs))
        finally:
            self.carried = outer
        needs = [n for n in _assigned(body) if n in self.declared]
        decls = []
        if [n for n in needs if n in self.globals]:
            decls.append(ast.Global([n for n in needs if n in self.globals]))
        if [n for n in needs if n not in self.globals]:
            decls.append(ast.Nonlocal([n for n in needs if n not in self.globals]))
        ret = ast.Return(ast.Tuple([ast.Name(n, ast.Load()) for n in outputs], ast.Load()))
        fdef = ast.FunctionDef(name, _args(params), decls + converted + [ret], [], None)
        return _rewrite_super(fdef, self.first)

    def assign(self, outputs: list[str], call) -> list:
        if not outputs:
            return [ast.Expr(call)]
        return [ast.Assign([ast.Tuple([ast.Name(n, ast.Store()) for n in outputs], ast.Store())], call),
                *_undefine(outputs)]

    # -------------------------------------------------------- while
    def while_(self, s, live: set) -> list:
        text = f"while {ast.unparse(s.test)}:"
        reason = _exits(s.body) or ("an `else:` clause" if s.orelse else "")
        if reason:
            i = self.site(s, "while", text, refusal=reason)
            s.test = _gd("check", i, self.test(s.test))
            s.body = self.block(s.body, live | _uses([s])) or [ast.Pass()]
            s.orelse = self.block(s.orelse, live)
            return [s]
        assigned = [n for n in _assigned(s.body) if n not in self.declared]
        needed = live | _reads(s.test) | _uses(s.body)
        carried = [n for n in assigned if n in needed]
        i = self.site(s, "while", text, carried, carried, _outer_writes(s.body, set(assigned), self.declared))
        k = next(self.count)
        test_def = ast.FunctionDef(f"_gd_while_test_{s.lineno}_{k}", _args(carried),
                                   [ast.Return(self.test(s.test))], [], None)
        test_def = _rewrite_super(test_def, self.first)
        body_def = self.branch(f"_gd_while_body_{s.lineno}_{k}", carried, s.body, carried)
        call = _gd("while_", i, ast.Name(test_def.name, ast.Load()), ast.Name(body_def.name, ast.Load()),
                   ast.Tuple([_load(n) for n in carried], ast.Load()))
        return [test_def, body_def, *self.assign(carried, call)]

    # -------------------------------------------------------- for
    def for_(self, s, live: set) -> list:
        text = f"for {ast.unparse(s.target)} in {ast.unparse(s.iter)}:"
        targets = _stores(s.target)
        plain = all(isinstance(t, (ast.Name, ast.Starred, ast.Tuple, ast.List, ast.expr_context))
                    for t in ast.walk(s.target))
        body_assigned = [n for n in _assigned(s.body) if n not in self.declared]
        reason = _exits(s.body) or ("an `else:` clause" if s.orelse else "") or (
            "" if plain else f"its target `{ast.unparse(s.target)}` is not a plain variable") or (
            next((f"the loop variable `{n}` is assigned in the body and read after the loop" for n in targets
                  if n in body_assigned and n in live), ""))
        if reason:
            i = self.site(s, "for", text, refusal=reason)
            s.iter = _gd("check_iter", i, self.exprs.visit(s.iter))
            s.body = self.block(s.body, live | _uses([s])) or [ast.Pass()]
            s.orelse = self.block(s.orelse, live)
            return [s]
        assigned = [n for n in body_assigned if n not in targets]
        needed = live | _uses(s.body, targets)
        carried = [n for n in assigned if n in needed]
        i = self.site(s, "for", text, carried, carried, _outer_writes(s.body, set(assigned) | targets,
                                                                       self.declared))
        k = next(self.count)
        item, last = f"_gd_item_{k}", f"_gd_last_{k}"
        first = [ast.copy_location(ast.Assign([s.target], ast.Name(item, ast.Load())), s)]
        body_def = self.branch(f"_gd_for_body_{s.lineno}_{k}", carried + [item], s.body, carried, first)
        call = _gd("for_", i, self.exprs.visit(s.iter), ast.Name(body_def.name, ast.Load()),
                   ast.Tuple([_load(n) for n in carried], ast.Load()))
        unpack = ast.Assign([ast.Tuple([ast.Name(n, ast.Store()) for n in carried + [last]], ast.Store())], call)
        stmts = [body_def, unpack, *_undefine(carried)]
        if targets & live:  # Python leaves the loop variable at the last item
            stmts.append(ast.If(ast.UnaryOp(ast.Not(), _gd("undefined", ast.Name(last, ast.Load()))),
                                [ast.Assign([copy.deepcopy(s.target)], ast.Name(last, ast.Load()))], []))
        return stmts

    # -------------------------------------------------------- lifted state
    def state_write(self, s) -> list:
        """``self.counter = v`` -> ``_gd.set_state(i, self, "counter", v)`` (an in-place write of the state tensor
        while it is lifted; a plain setattr otherwise)."""
        if isinstance(s, ast.AugAssign):
            value = ast.BinOp(_as_load(s.target), s.op, s.value)
            return [self.exprs.visit(ast.Expr(self._set(s.target, value)))]
        if isinstance(s, ast.AnnAssign):
            return [self.exprs.visit(ast.Expr(self._set(s.target, s.value)))]
        if len(s.targets) == 1 and self._lifted(s.targets[0]):
            return [self.exprs.visit(ast.Expr(self._set(s.targets[0], s.value)))]
        temps, after = {}, []

        def replace(t):
            if isinstance(t, (ast.Tuple, ast.List)):
                t.elts = [replace(e) for e in t.elts]
                return t
            if isinstance(t, ast.Starred):
                t.value = replace(t.value)
                return t
            if self._lifted(t):
                name = f"_gd_state_{next(self.count)}"
                temps[name] = t
                after.append(ast.Expr(self._set(t, ast.Name(name, ast.Load()))))
                return ast.Name(name, ast.Store())
            return t
        s.targets = [replace(t) for t in s.targets]
        return [self.exprs.visit(s), *[self.exprs.visit(a) for a in after]]

    def _set(self, target, value) -> ast.Call:
        path = _dotted(target)
        i = self.site(target, "state", path)
        if isinstance(target, ast.Name):
            return _gd("set_global", i, target.id, value)
        return _gd("set_state", i, _as_load(target.value), target.attr, value)


def _undefine(names: list[str]) -> list:
    """``if _gd.undefined(n): del n``: a name the run did not define stays undefined (reading it after the statement
    is a NameError, as in the original)."""
    return [ast.If(_gd("undefined", ast.Name(n, ast.Load())), [ast.Delete([ast.Name(n, ast.Del())])], [])
            for n in names]


def _as_load(node):
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        if hasattr(n, "ctx"):
            n.ctx = ast.Load()
    return node


def _rewrite_super(fdef, first: str | None):
    """A zero-argument ``super()`` in a generated function would take that function's first argument: make it
    ``super(__class__, self)`` of the method it was written in."""
    if first is None:
        return fdef
    for node in ast.walk(fdef):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super" and \
                not node.args and not node.keywords:
            node.args = [ast.Name("__class__", ast.Load()), ast.Name(first, ast.Load())]
    return fdef


def _bool_ops(node):
    """``a and b``, ``a or b``, ``not a`` in a condition -> runtime helpers that use logical ops on tensors."""
    if any(isinstance(n, ast.NamedExpr) for n in ast.walk(node)):
        return node  # a lambda would bind the name in its own scope
    if isinstance(node, ast.BoolOp):
        helper = "and_" if isinstance(node.op, ast.And) else "or_"
        return ast.copy_location(_gd(helper, *[_lambda(_bool_ops(v)) for v in node.values]), node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.copy_location(_gd("not_", _bool_ops(node.operand)), node)
    return node


class _Exprs(ast.NodeTransformer):
    """Expressions: calls through ``_gd.call`` (to convert the user's callees), ``a if t else b`` through
    ``_gd.if_exp``. Nested functions are left to ``_Converter`` (each is a scope of its own)."""

    def __init__(self, converter: _Converter):
        self.converter = converter

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Name) and func.id in _FRAME_BUILTINS:
            return node
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "_gd":
            return node
        return ast.copy_location(ast.Call(ast.Attribute(ast.Name("_gd", ast.Load()), "call", ast.Load()),
                                          [ast.Constant(node.lineno), func, *node.args], node.keywords), node)

    def visit_IfExp(self, node):
        text = ast.unparse(node)
        self.generic_visit(node)
        if any(isinstance(n, ast.NamedExpr) for n in ast.walk(node)):
            return node
        i = self.converter.site(node, "if expression", text if len(text) <= 60 else text[:57] + "...", ("value",))
        return ast.copy_location(_gd("if_exp", i, _bool_ops(node.test), _lambda(node.body), _lambda(node.orelse)),
                                 node)


# ---------------------------------------------------------------- the runtime the rewritten code calls


class Undefined:
    """The value of a variable that was not defined where a converted statement read it."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<undefined {self.name}>"

    def _fail(self, *args, **kwargs):
        raise NameError(f"name {self.name!r} is not defined (tracer.script passed it through a converted "
                        "statement that did not assign it)")

    __bool__ = __call__ = __iter__ = __len__ = __getitem__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __matmul__ = _fail
    __neg__ = __lt__ = __le__ = __gt__ = __ge__ = _fail

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._fail()


class Runtime:
    """What rewritten code calls, bound to ``_gd`` in its closure: one per converted function. The ``i`` arguments
    index ``sites``."""

    def __init__(self, sites: list[Site], globals_: dict, filename: str, lifts=()):
        self.sites = sites
        self.globals = globals_
        self.filename = filename
        self.lifts = tuple(lifts)

    # -------------------------------------------------------- plumbing
    @staticmethod
    def load(thunk, name: str):
        try:
            return thunk()
        except NameError:
            return Undefined(name)

    @staticmethod
    def undefined(value) -> bool:
        return isinstance(value, Undefined)

    def _log(self, site: Site, became: str) -> None:
        log = _LOG.get()
        if log is not None:
            c = Conversion(site.where, site.construct, became)
            if c not in log:
                log.append(c)

    def check(self, i: int, test):
        """The condition of an ``if``/``while`` that cannot be converted: a Python value runs as Python, a tensor is
        a ScriptError naming the line and the construct."""
        site = self.sites[i]
        if isinstance(test, Tensor):
            raise ScriptError(_refusal(site, "condition"))
        self._log(site, "python")
        return test

    def check_iter(self, i: int, iterable):
        site = self.sites[i]
        if isinstance(iterable, Tensor):
            raise ScriptError(_refusal(site, "sequence"))
        self._log(site, "python")
        return iterable

    def call(self, line: int, f, /, *args, **kwargs):
        target = _converted(f, self, line)
        return (f if target is None else target)(*args, **kwargs)

    # -------------------------------------------------------- if
    def if_(self, i: int, test, true_fn, false_fn, inputs: tuple):
        site = self.sites[i]
        if not isinstance(test, Tensor):
            self._log(site, "python")
            return (true_fn if test else false_fn)(*inputs)
        _refuse_writes(site)
        self._log(site, "cond")
        return _cond(site, _pred(site, test), true_fn, false_fn, inputs)

    def if_exp(self, i: int, test, true_thunk, false_thunk):
        site = self.sites[i]
        if not isinstance(test, Tensor):
            self._log(site, "python")
            return true_thunk() if test else false_thunk()
        self._log(site, "cond")
        return _cond(site, _pred(site, test), lambda: (true_thunk(),), lambda: (false_thunk(),), ())[0]

    # -------------------------------------------------------- loops
    def while_(self, i: int, test_fn, body_fn, inputs: tuple):
        site = self.sites[i]
        values = tuple(inputs)
        while True:
            test = test_fn(*values)
            if isinstance(test, Tensor):
                break
            self._log(site, "python")
            if not test:
                return values
            values = tuple(body_fn(*values))
        _refuse_writes(site)
        self._log(site, "while_loop")
        return _while(site, values, test_fn, body_fn)

    def for_(self, i: int, iterable, body_fn, inputs: tuple):
        site = self.sites[i]
        values = tuple(inputs)
        if not isinstance(iterable, Tensor):
            self._log(site, "python")
            last = Undefined("the loop variable")
            for item in iterable:
                values, last = tuple(body_fn(*values, item)), item
            return values + (last,)
        _refuse_writes(site)
        if iterable.ndim == 0:
            raise TypeError(f"{site.where}: iteration over a 0-d tensor ({site.text})")
        self._log(site, "scan")
        n = iterable.shape[0]
        if n == 0:  # Python runs no trip
            return values + (Undefined("the loop variable"),)
        return _for(site, values, iterable, body_fn) + (iterable.select(0, n - 1),)

    # -------------------------------------------------------- conditions
    @staticmethod
    def and_(*thunks):
        value = thunks[0]()
        for thunk in thunks[1:]:
            if isinstance(value, Tensor):
                value = eager.logical_and(_as_bool(value), _as_bool(thunk(), value))
            elif not value:
                return value
            else:
                value = thunk()
        return value

    @staticmethod
    def or_(*thunks):
        value = thunks[0]()
        for thunk in thunks[1:]:
            if isinstance(value, Tensor):
                value = eager.logical_or(_as_bool(value), _as_bool(thunk(), value))
            elif value:
                return value
            else:
                value = thunk()
        return value

    @staticmethod
    def not_(value):
        return eager.logical_not(_as_bool(value)) if isinstance(value, Tensor) else not value

    # -------------------------------------------------------- lifted state
    def _lifted(self, value) -> bool:
        """Whether ``value`` is the state tensor a call swapped in for a lifted int (written in place)."""
        return isinstance(value, Tensor) and any(value is lift.tensor for lift in self.lifts)

    def set_state(self, i: int, owner, name: str, value) -> None:
        d = getattr(owner, "__dict__", None)
        current = d.get(name) if isinstance(d, dict) else None
        if self._lifted(current):
            _write_state(self.sites[i], current, value)
        else:
            setattr(owner, name, value)

    def set_global(self, i: int, name: str, value) -> None:
        current = self.globals.get(name)
        if self._lifted(current):
            _write_state(self.sites[i], current, value)
        else:
            self.globals[name] = value


def _refusal(site: Site, what: str) -> str:
    op = _OPS[site.construct]
    if site.construct == "if":
        advice = ("Assign the results to variables in both branches and use them after the if, or select with "
                  "eager.where.")
    else:
        advice = ("Put the exit test in the loop's condition, assign what the loop computes and use it after the "
                  "loop, or write the loop with eager.while_loop / eager.scan yourself.")
    return (f"{site.where}: tracer.script cannot convert `{site.text}` into eager.{op}: its {what} is a tensor and "
            f"the {'branch' if site.construct == 'if' else 'loop'} has {site.refusal}, which a traced {op} cannot "
            f"express. {advice}")


def _refuse_writes(site: Site) -> None:
    if site.refusal:
        op = _OPS[site.construct]
        raise ScriptError(f"{site.where}: tracer.script cannot convert `{site.text}` into eager.{op}: its "
                          f"{'branches write' if site.construct == 'if' else 'body writes'} to a Python object from "
                          f"outside ({site.refusal}); a traced {op} runs its regions once while tracing, so the write "
                          f"would happen once instead of on every {'call' if site.construct == 'if' else 'trip'}. "
                          "Assign the new value to a variable instead (it becomes a result of the node).")


def _write_state(site: Site, current: Tensor, value) -> None:
    """Write ``value`` into the lifted state tensor in place (the trace records it as an update of state)."""
    if isinstance(value, Tensor):
        if value is current:
            return
        if value.shape != () or value.dtype.kind not in "iub":
            got = describe(Aval(tuple(value.shape), value.dtype))
            raise ScriptError(f"{site.where}: `{site.text}` held a Python int, lifted into a 0-d int64 tensor for the "
                              f"traced call; this line assigns it a {got} tensor. Keep it a 0-d integer (.long(), "
                              ".sum()), or make it a tensor attribute yourself.")
        current.copy_(value)
    elif type(value) in (int, bool):
        current.fill_(int(value))
    else:
        raise ScriptError(f"{site.where}: `{site.text}` held a Python int, lifted into a 0-d int64 tensor for the "
                          f"traced call; this line assigns it a {type(value).__name__}. Keep it an int.")


def _as_bool(value, like: Tensor | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value if value.dtype == eager.bool_ else value != 0
    return eager.tensor(bool(value), device=like.device if like is not None else None)


def _pred(site: Site, test: Tensor) -> Tensor:
    """A tensor condition as the 0-d bool ``cond`` takes: a one-element tensor reshaped, a number compared with 0."""
    if test.numel() != 1:
        raise ScriptError(f"{site.where}: the condition of `{site.text}` is a tensor of shape {list(test.shape)}; its "
                          "truth value is ambiguous: reduce it first (.any(), .all(), .sum() > 0).")
    if test.shape != ():
        test = test.reshape(())
    return test if test.dtype == eager.bool_ else test != 0


# ---------------------------------------------------------------- values through a node: flatten, check, rebuild


_T = ("tensor",)


def _flatten(value, out: list, numbers: bool, device=None):
    """The structure of ``value`` (a spec) and its tensors appended to ``out``; Python numbers become 0-d tensors
    when ``numbers``; anything else is a static part of the structure."""
    if isinstance(value, Tensor):
        out.append(value)
        return _T
    if numbers and type(value) in (int, float, bool):
        out.append(eager.tensor(value, device=device))
        return _T
    if type(value) in (tuple, list):
        return (type(value), tuple(_flatten(v, out, numbers, device) for v in value))
    return ("static", value)


def _unflatten(spec, tensors: list, position: list | None = None):
    position = position if position is not None else [0]
    if spec is _T or spec == _T:
        t = tensors[position[0]]
        position[0] += 1
        return t
    if spec[0] == "static":
        return spec[1]
    return spec[0](_unflatten(s, tensors, position) for s in spec[1])


def _render(spec, tensors: list, position: list) -> str:
    """A value's structure in words: ``f32[3]``, ``(f32[3], None)``, ``'mode'``."""
    if spec == _T:
        t = tensors[position[0]]
        position[0] += 1
        return describe(Aval(tuple(t.shape), t.dtype))
    if spec[0] == "static":
        text = repr(spec[1])
        return text if len(text) <= 40 else text[:37] + "..."
    inner = ", ".join(_render(s, tensors, position) for s in spec[1])
    return f"({inner})" if spec[0] is tuple else f"[{inner}]"


def _same_static(a, b) -> bool:
    return a is b or (type(a) is type(b) and type(a) in (str, bytes, int, float, bool, complex) and a == b)


def _same_spec(a, b) -> bool:
    if a == _T or b == _T:
        return a == b
    if a[0] == "static" or b[0] == "static":
        return a[0] == b[0] and _same_static(a[1], b[1])
    return a[0] is b[0] and len(a[1]) == len(b[1]) and all(_same_spec(x, y) for x, y in zip(a[1], b[1]))


def _device(tensors) -> Any:
    for t in tensors:
        if isinstance(t, Tensor):
            return t.device
    return None


def _outputs(site: Site, label: str, values, device) -> tuple[list, list]:
    """A branch's results (one per output name), flattened: (per-name specs, tensors)."""
    flat: list[Tensor] = []
    specs = []
    for name, v in zip(site.outputs, values):
        if isinstance(v, Undefined):
            raise ScriptError(f"{site.where}: `{name}` is assigned in only one branch of `{site.text}` (the {label} "
                              "branch leaves it undefined) and is read after it; eager.cond needs both branches to "
                              f"define it: assign `{name}` before the if, or in both branches.")
        specs.append(_flatten(v, flat, numbers=True, device=device))
    return specs, flat


def _cond(site: Site, pred: Tensor, true_fn, false_fn, inputs: tuple):
    operands: list[Tensor] = []
    in_spec = _flatten(tuple(inputs), operands, numbers=False)
    device = pred.device
    seen: dict[str, tuple] = {}

    def branch(label: str, fn):
        def run(*tensors):
            values = fn(*_unflatten(in_spec, list(tensors)))
            specs, flat = _outputs(site, label, values, device)
            seen[label] = (specs, flat)
            other = seen.get("false" if label == "true" else "true")
            if other is not None:
                _same_outputs(site, seen["true"], seen["false"])
            return _recorded(flat)
        return run
    try:
        flat = cond(pred, branch("true", true_fn), branch("false", false_fn), tuple(operands))
    except ControlFlowError as e:
        raise ScriptError(f"{site.where}: `{site.text}` as eager.cond: {e}") from e
    specs = next(iter(seen.values()))[0]
    tensors, position = list(flat), [0]
    return tuple(_unflatten(s, tensors, position) for s in specs)


def _same_outputs(site: Site, a: tuple, b: tuple) -> None:
    """Both branches give every output the same structure, shapes and dtypes; else a ScriptError naming it."""
    (specs_a, flat_a), (specs_b, flat_b) = a, b
    pos_a, pos_b = [0], [0]
    for name, sa, sb in zip(site.outputs, specs_a, specs_b):
        ra, rb = _render(sa, flat_a, pos_a), _render(sb, flat_b, pos_b)
        if ra != rb or not _same_spec(sa, sb):
            what = "value" if site.construct == "if expression" else f"`{name}`"
            raise ScriptError(f"{site.where}: `{site.text}` as eager.cond: {what} is {ra} in the true branch but {rb} "
                              "in the false branch; both branches must give the same structure, shapes and dtypes. "
                              "Cast or reshape so they agree.")


def _recorded(flat) -> tuple:
    """Make the region's recorder see every result now. Workaround: ``tracer.regions`` gathers a region's captures
    before it looks up its results, so a branch returning an outside tensor it did not use (``else: y = x`` with
    ``x`` from outside) had it baked in as a constant."""
    recorders = MODE.get().recorders
    if recorders and hasattr(recorders[-1], "vid_after"):
        for t in flat:
            recorders[-1].vid_after(t)
    return tuple(flat)


def _carry_in(site: Site, values: tuple) -> tuple[list, list[Tensor]]:
    """A loop's carried values, flattened (Python numbers become 0-d tensors); undefined ones are refused."""
    flat: list[Tensor] = []
    specs = []
    device = _device(v for v in values)
    loop = "loop" if site.construct == "while" else "for loop"
    for name, v in zip(site.outputs, values):
        if isinstance(v, Undefined):
            raise ScriptError(f"{site.where}: `{name}` is carried by `{site.text}` (assigned in its body and read by "
                              f"the next trip or after the {loop}) but is not defined before it; a traced "
                              f"eager.{_OPS[site.construct]} needs its initial value: assign `{name}` before the "
                              f"{loop}.")
        specs.append(_flatten(v, flat, numbers=True, device=device))
    return specs, flat


def _carry_out(site: Site, specs: list, init: list[Tensor], values) -> tuple:
    """A trip's carried values, flattened like the carry (Python numbers take the carry's dtype); a change of
    structure, shape or dtype is a ScriptError naming the variable."""
    out: list[Tensor] = []
    position = [0]
    for name, spec, v in zip(site.outputs, specs, values):
        start = position[0]
        ok = _flatten_like(spec, v, init, position, out)
        before = _render(spec, init, [start])
        after = _render(spec, out, [start]) if ok else _describe_value(v)
        if before == after:
            continue
        raise ScriptError(f"{site.where}: `{name}` is {before} entering `{site.text}` but {after} after a trip of its "
                          f"body; a loop carry keeps its structure, shape and dtype (jax.lax's rule). Cast, reshape "
                          "or initialise it so they agree.")
    return tuple(out)


def _describe_value(v) -> str:
    if isinstance(v, Tensor):
        return describe(Aval(tuple(v.shape), v.dtype))
    if type(v) in (tuple, list):
        inner = ", ".join(map(_describe_value, v))
        return f"({inner})" if type(v) is tuple else f"[{inner}]"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten_like(spec, value, init: list[Tensor], position: list, out: list) -> bool:
    if spec == _T:
        like = init[position[0]]
        position[0] += 1
        if isinstance(value, Tensor):
            out.append(value)
            return True
        if type(value) in (int, float, bool):
            out.append(eager.tensor(value, dtype=like.dtype, device=like.device))
            return True
        return False
    if spec[0] == "static":
        return _same_static(spec[1], value)
    if type(value) is not spec[0] or len(value) != len(spec[1]):
        return False
    return all(_flatten_like(s, v, init, position, out) for s, v in zip(spec[1], value))


def _while(site: Site, values: tuple, test_fn, body_fn) -> tuple:
    specs, init = _carry_in(site, values)
    if not init:
        raise ScriptError(f"{site.where}: `{site.text}` has a tensor condition but carries no tensor (no variable of "
                          "its body is read by the next trip or after it); as eager.while_loop it would never stop "
                          "or never start. Assign the values the condition reads in the body.")

    def rebuild(flat):
        tensors, position = list(flat), [0]
        return tuple(_unflatten(s, tensors, position) for s in specs)

    def cond_fn(*flat):
        test = test_fn(*rebuild(flat))
        return _pred(site, test if isinstance(test, Tensor) else eager.tensor(bool(test)))

    def body(*flat):
        return _recorded(_carry_out(site, specs, init, body_fn(*rebuild(flat))))
    try:
        out = while_loop(cond_fn, body, tuple(init))
    except ControlFlowError as e:
        raise ScriptError(f"{site.where}: `{site.text}` as eager.while_loop: {e}") from e
    return rebuild(out)


def _for(site: Site, values: tuple, xs: Tensor, body_fn) -> tuple:
    specs, init = _carry_in(site, values)

    def rebuild(flat):
        tensors, position = list(flat), [0]
        return tuple(_unflatten(s, tensors, position) for s in specs)

    def step(carry, x):
        return _recorded(_carry_out(site, specs, init, body_fn(*rebuild(carry), x))), ()
    try:
        carry, _ = scan(step, tuple(init), xs)
    except ControlFlowError as e:
        raise ScriptError(f"{site.where}: `{site.text}` as eager.scan: {e}") from e
    return rebuild(carry)


# ---------------------------------------------------------------- converting the functions converted code calls


def _converted(f, runtime: Runtime, line: int):
    """The converted version of a callee from the user's code (None: call it as it is)."""
    if isinstance(f, Module):
        forward = getattr(type(f), "forward", None)
        g = _convert_callee(forward, runtime, line) if isinstance(forward, types.FunctionType) else None
        return None if g is None else types.MethodType(g, f)
    if isinstance(f, types.MethodType):
        g = _convert_callee(f.__func__, runtime, line) if isinstance(f.__func__, types.FunctionType) else None
        return None if g is None else types.MethodType(g, f.__self__)
    if isinstance(f, types.FunctionType):
        return _convert_callee(f, runtime, line)
    return None


def _convert_callee(func: types.FunctionType, runtime: Runtime, line: int):
    code = func.__code__
    if id(code) in _OUR_CODE or func.__name__ == "<lambda>" or code.co_flags & _GENERATOR_FLAGS or \
            getattr(func, "__graphduel_no_convert__", False) or not _is_user_code(code.co_filename):
        return None
    done = _REBUILT.get(func)
    if done is not None:
        return done
    compiled = _CALLEES.get(code)
    if compiled is None:
        site = f"{os.path.basename(runtime.filename)}:{line}"
        compiled = _CALLEES[code] = _compile(func, lift=False, called_at=site)
    new = _REBUILT[func] = _rebuild(compiled, func)
    return new


_LIBRARY_DIRS: tuple[str, ...] | None = None


def _is_user_code(filename: str) -> bool:
    """Whether code from ``filename`` is the user's (converted) rather than graphduel's, the standard library's or
    an installed package's (called as it is)."""
    global _LIBRARY_DIRS
    if _LIBRARY_DIRS is None:
        paths = sysconfig.get_paths()
        dirs = {os.path.join(os.path.realpath(paths[k]), "") for k in ("stdlib", "platstdlib", "purelib", "platlib")
                if k in paths}
        _LIBRARY_DIRS = tuple(dirs) + _package_dirs()
    if filename.startswith("<frozen") or "site-packages" in filename or "dist-packages" in filename:
        return False
    return not (filename.startswith(_LIBRARY_DIRS) or os.path.realpath(filename).startswith(_LIBRARY_DIRS))


__all__ = ["Conversion", "ScriptError", "Scripted", "do_not_convert", "script"]
