"""The assumption ledger: every place where a trace froze something that could change on a later call.

Two sources:

- a tensor value left the graph (``bool(t)``, ``if t > 0:``, ``float(t)``, ``.item()``, ``.tolist()``,
  ``.numpy()``, boolean-mask indexing): the Python code after it ran with the value seen while tracing;
- Python-side state (``self.counter += 1``, a Python step count) changed while tracing: control flow that
  reads it is frozen at the value it had.

Each site is recorded once, with its source line and the value seen, and a ``TracerWarning`` is emitted once
per site.

With guards on (``trace(..., guards="retrace")``, the default) an assumption is also checked on every call:
the escaped tensor value is an extra graph output compared after the call with the value seen while tracing
(``outcome``), and changed Python state is compared on entry. Only what may have decided control flow or
been baked into the graph is guarded: ``escape_use`` reads the escape's source statement and leaves out a
value that only leaves for logging (``print(loss.item())``) or is returned (``return loss.item()``), and a
scalar whose one use is an operand of ``+ - * /`` (``x / x.max().item()``) is read from the tensor in the
graph instead of baked in (``tracer.build``), so it needs no guard either.

    >>> a = Assumption("bool", "model.py:12", True)
    >>> print(a)
    model.py:12: bool(tensor) was True while tracing; Python control flow that depends on it is frozen
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eager.backend import to_numpy
from tracer.conversions import convert


class TracerWarning(UserWarning):
    """A trace froze a value that may differ on a later call (see ``Traced.assumptions``)."""


class GuardError(RuntimeError):
    """A guard of a trace made with ``guards="raise"`` failed: a value the trace froze differs on this call.

    The message names the source line, the value seen while tracing and the value now.
    """


_WHAT = {
    "bool": "bool(tensor) was {value!r} while tracing; Python control flow that depends on it is frozen",
    "float": "float(tensor) was {value!r} while tracing; it is baked into the graph as a constant",
    "int": "int(tensor) was {value!r} while tracing; it is baked into the graph as a constant",
    "item": "tensor.item() was {value!r} while tracing; it is baked into the graph as a constant",
    "tolist": "tensor.tolist() was {value!r} while tracing; it is baked into the graph as constants",
    "numpy": "tensor.numpy() left the graph while tracing; what Python did with it is frozen",
    "nonzero": "a boolean mask selected {value} elements while tracing; the selected positions are baked in",
    "python_state": "{value}; control flow that reads it is frozen",
}

# how a call treats an assumption (``Assumption.use``)
_USE = {
    "guard": " (guarded: a call that sees another value {action})",
    "in graph": " (its one use reads the tensor in the graph, a 0-d value each call recomputes: not guarded)",
    "logged": " (only logged: not guarded; a traced call does not run this line)",
    "returned": " (the returned value is recomputed by each call; it decides nothing else: not guarded)",
}
_ACTION = {"retrace": "retraces for it", "raise": "raises GuardError"}


@dataclass
class Assumption:
    """One frozen site: ``kind``, ``source`` (file:line), the first ``value`` seen, and how often it was hit."""

    kind: str
    source: str
    value: Any
    values: list = field(default_factory=list)
    count: int = 1
    node: str | None = None      # the IR value whose data left the graph, e.g. "%7"
    name: str | None = None      # for Python state: the attribute, e.g. "model.counter"
    before: Any = None           # for Python state: the value when tracing started
    after: Any = None            # ... and when it ended
    broken: str | None = None    # set by check(): why this assumption no longer holds
    returned: bool = False       # the value is also returned: calls recompute that, other uses stay frozen
    use: str | None = None       # "guard" | "logged" | "returned" (escape_use); None: not guarded (guards="off")
    guards: str = "off"          # the trace's guard mode, for the message

    def __post_init__(self):
        if not self.values:
            self.values = [self.value]

    @property
    def message(self) -> str:
        value = self.value
        if isinstance(value, list) and len(repr(value)) > 60:
            value = f"<list of {len(value)}>"
        if self.use == "in graph":
            what = {"item": "tensor.item()", "float": "float(tensor)", "int": "int(tensor)"}.get(self.kind, self.kind)
            return f"{what} was {value!r} while tracing"
        default = f"a tensor value left the graph ({self.kind}) while tracing" + " ({value!r}); what Python did with " \
            "it is frozen"
        return _WHAT.get(self.kind, default).format(value=value)

    def __repr__(self) -> str:
        return f"<Assumption {self}>"

    def __str__(self) -> str:
        where = f" (node {self.node})" if self.node else ""
        if self.use in _USE and (self.use != "guard" or self.guards in _ACTION):
            how = _USE[self.use].format(action=_ACTION.get(self.guards, ""))
            if self.use == "guard" and self.kind == "python_state":
                how = f" (guarded: checked on entry, {self.after!r} written back after the call; another value " \
                      f"{_ACTION[self.guards]})"
        else:
            how = " (the returned value is recomputed by each call; other Python uses of it are frozen)" \
                if self.returned else ""
        broken = f"; broken: {self.broken}" if self.broken else ""
        return f"{self.source}: {self.message}{where}{how}{broken}"


class Ledger:
    """Assumptions by site; warns once per site for the lifetime of the ledger (one per Traced)."""

    def __init__(self, guards: str = "off"):
        self.by_site: dict[tuple, Assumption] = {}
        self._warned: set[tuple] = set()
        self.guards = guards

    def add_escape(self, esc, node: str | None = None, use: str | None = None) -> Assumption:
        key = (esc.source, "escape")
        a = self.by_site.get(key)
        use = use if self.guards != "off" else None
        if a is None:
            a = self.by_site[key] = Assumption(esc.kind, esc.source, esc.value, node=node, returned=esc.returned,
                                               use=use, guards=self.guards)
        else:
            a.count += 1
            if len(a.values) < 16:
                a.values.append(esc.value)
            if use == "guard" or a.use is None:  # one site used two ways: the guard wins
                a.use = use
        if a.use != "in graph":  # nothing frozen there: the graph reads the tensor
            self._warn(key, a, esc.filename, esc.lineno)
        return a

    def add_python_state(self, name: str, before, after, where: tuple[str, str, int] | None) -> Assumption:
        source, filename, lineno = where or ("<python state>", "<python state>", 0)
        key = (name, "python_state")
        text = f"Python state {name} changed {before!r} -> {after!r} during tracing"
        a = self.by_site.get(key)
        if a is None:
            a = self.by_site[key] = Assumption("python_state", source, text, name=name, before=before, after=after,
                                               use="guard" if self.guards != "off" else None, guards=self.guards)
        self._warn(key, a, filename, lineno)
        return a

    def _warn(self, key, a: Assumption, filename: str, lineno: int) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn_explicit(f"tracing froze a value: {a}. Check later calls with traced.check(...).",
                               TracerWarning, filename, lineno or 1)

    def __iter__(self):
        return iter(self.by_site.values())

    def __len__(self) -> int:
        return len(self.by_site)


def python_state_site(obj, attr: str) -> tuple[str, str, int] | None:
    """Where ``obj``'s class changes ``attr`` (``self.attr += ...`` / ``self.attr = ...`` outside __init__)."""
    import os
    pattern = re.compile(rf"\bself\.{re.escape(attr)}\s*(\+|-|\*|/|//|%)?=(?!=)")
    for klass in type(obj).__mro__:
        if klass is object or klass.__module__.startswith(("eager.", "tracer.")):
            continue
        try:
            lines, start = inspect.getsourcelines(klass)
            filename = inspect.getsourcefile(klass) or "<unknown>"
        except (OSError, TypeError):
            continue
        in_init = False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("def "):
                in_init = stripped.startswith("def __init__")
            if not in_init and pattern.search(line):
                lineno = start + i
                return f"{os.path.basename(filename)}:{lineno}", filename, lineno
    return None


# ---------------------------------------------------------------- guards: what a call must reproduce

_SCALAR_KINDS = ("bool", "item", "float", "int")


def outcome(kind: str, array) -> Any:
    """What a call must reproduce of an escaped value (hashable; equal outcomes mean Python saw the same thing):
    the Python value for ``bool``/``item``/``float``/``int`` (NaN equals NaN), the exact array for the rest (a
    list, a mask's selected positions, a NumPy copy).

        >>> outcome("bool", np.array(2.0)), outcome("float", np.array([float("nan")])) == outcome("float", np.nan)
        (True, True)
    """
    if kind in _SCALAR_KINDS:
        v = convert(array, kind)
        return ("nan",) if isinstance(v, float) and math.isnan(v) else v
    a = np.ascontiguousarray(to_numpy(array))
    return ("array", a.shape, a.dtype.str, hashlib.sha1(a.tobytes()).hexdigest() if a.nbytes > 64 else a.tobytes())


def describe_outcome(kind: str, value) -> str:
    """An outcome in words, for messages."""
    if kind == "nonzero" and isinstance(value, tuple):
        return "other positions selected"
    if isinstance(value, tuple) and value and value[0] == "array":
        return f"another array ({'x'.join(map(str, value[1])) or 'scalar'})"
    if isinstance(value, tuple) and value == ("nan",):
        return "nan"
    return repr(value)


# ---------------------------------------------------------------- guards: which escapes need one

# calls whose statement only reports a value (its result is discarded): print(...), logger.info(...), ...
_SINK_FUNCTIONS = {"print"}
_SINK_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log", "add_scalar",
                 "add_scalars", "set_postfix", "set_postfix_str", "set_description", "write"}


def escape_use(esc) -> str:
    """How the value that left the graph at ``esc`` is used, as far as its source shows: ``"returned"`` (only
    returned: each call recomputes it), ``"logged"`` (only printed or logged), or ``"guard"`` (anything else,
    and whenever the source cannot be read: it may have decided control flow or been baked in).

    A value is "logged" when the statement of its line is a call like ``print(...)``/``logger.info(...)``, or an
    assignment to names that the function reads only in such calls (and, for a returned value, in ``return``).
    A "returned" value is one the traced result holds itself (``return loss.item()``, ``lambda x: x.sum().item()``).
    """
    found = _statement_at(esc.filename, esc.lineno)
    if found is None:
        return "guard"
    stmt, scope, parents = found
    if any(isinstance(n, ast.NamedExpr) for n in ast.walk(stmt)):
        return "guard"  # ``(v := x.item())`` binds the value where this line cannot follow it
    if _is_sink(stmt):
        return "logged"
    returned = esc.returned and esc.kind != "bool"
    if returned and (isinstance(stmt, ast.Return) or isinstance(scope, ast.Lambda)):
        return "returned"
    names = _assigned_names(stmt)
    if not names or not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return "guard"
    uses = [_statement_of(n, parents) for n in ast.walk(scope)
            if isinstance(n, ast.Name) and n.id in names and isinstance(n.ctx, ast.Load)]
    if any(isinstance(n, (ast.Global, ast.Nonlocal)) and set(n.names) & names for n in ast.walk(scope)):
        return "guard"
    if all(_is_sink(s) or (returned and isinstance(s, ast.Return)) for s in uses):
        return "returned" if any(isinstance(s, ast.Return) for s in uses) else "logged"
    return "guard"


_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_SCALAR_CALLS = {"item"}, {"float", "int"}   # tensor.item(); float(tensor), int(tensor)


def direct_operand(esc) -> bool:
    """Whether every ``.item()``/``float(...)``/``int(...)`` call on ``esc``'s line is itself an operand of
    ``+ - * /`` (``x / x.max().item()``): its value has no other use, so the op it feeds may read the tensor in
    the graph instead of a baked scalar (``tracer.build`` checks that the op recorded got that very value)."""
    found = _statement_at(esc.filename, esc.lineno)
    if found is None:
        return False
    stmt, _, parents = found
    if any(isinstance(n, ast.NamedExpr) for n in ast.walk(stmt)):
        return False
    calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call) and n.lineno == esc.lineno and (
        (isinstance(n.func, ast.Attribute) and n.func.attr in _SCALAR_CALLS[0] and not n.args) or
        (isinstance(n.func, ast.Name) and n.func.id in _SCALAR_CALLS[1] and len(n.args) == 1))]
    return bool(calls) and all(isinstance(parents.get(id(c)), ast.BinOp) and
                               isinstance(parents[id(c)].op, _ARITHMETIC) for c in calls)


def _is_sink(stmt) -> bool:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    if isinstance(func, ast.Name):
        return func.id in _SINK_FUNCTIONS
    return isinstance(func, ast.Attribute) and func.attr in _SINK_METHODS


def _assigned_names(stmt) -> set[str]:
    """The plain names a ``v = ...`` / ``a, b = ...`` / ``v: float = ...`` statement binds (empty otherwise)."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        targets = [stmt.target]
    else:
        return set()
    names: set[str] = set()
    for t in targets:
        elts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
        if not all(isinstance(e, ast.Name) for e in elts):
            return set()
        names.update(e.id for e in elts)
    return names


def _statement_of(node, parents: dict) -> ast.AST | None:
    while node is not None and not isinstance(node, ast.stmt):
        node = parents.get(id(node))
    return node


_SOURCES: dict[str, tuple[str, Any]] = {}   # filename -> (hash of its text, (tree, parents, found) or None)


def _parsed(filename: str):
    lines = linecache.getlines(filename)
    if not lines:
        return None
    digest = hashlib.sha1("".join(lines).encode()).hexdigest()
    cached = _SOURCES.get(filename)
    if cached is not None and cached[0] == digest:
        return cached[1]
    try:
        tree = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        parsed = None
    else:
        parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        parsed = (tree, parents, {})   # the last: lineno -> what _statement_at found there
    if len(_SOURCES) > 256:
        _SOURCES.clear()
    _SOURCES[filename] = (digest, parsed)
    return parsed


def _statement_at(filename: str, lineno: int):
    """(innermost statement spanning ``lineno``, innermost function or lambda around the line, parent map)."""
    parsed = _parsed(filename) if lineno else None
    if parsed is None:
        return None
    tree, parents, found = parsed
    if lineno not in found:
        found[lineno] = _find_statement(tree, parents, lineno)
    return found[lineno]


def _find_statement(tree, parents: dict, lineno: int):
    best, best_scope = None, None
    for node in ast.walk(tree):
        start, end = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if start is None or not start <= lineno <= end:
            continue
        if isinstance(node, ast.stmt) and (best is None or _depth(node, parents) > _depth(best, parents)):
            best = node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and \
                (best_scope is None or _depth(node, parents) > _depth(best_scope, parents)):
            best_scope = node
    if best is None:
        return None
    if isinstance(best, (ast.FunctionDef, ast.AsyncFunctionDef)) and best_scope is best:
        best_scope = _scope_of(best, parents)  # the line is a def's header (a decorator, a default value)
    return best, best_scope, parents


def _scope_of(node, parents: dict):
    node = parents.get(id(node))
    while node is not None and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        node = parents.get(id(node))
    return node


def _depth(node, parents: dict) -> int:
    d = 0
    while id(node) in parents:
        node = parents[id(node)]
        d += 1
    return d
