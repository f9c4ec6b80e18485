"""Closure walking: the modules, optimizers, tensors and Python scalars a traced function can reach without
being passed them.

A function names state through its bound ``self``, closure cells, the globals its code reads (nested code
objects included), its defaults, ``functools.partial`` arguments and, for a callable object, its attributes
and ``__call__``; lists and dicts of them (up to 64 entries) are looked into, and functions they name are
walked in turn (two levels deep). Each find is a ``Root``: a name for messages, the object, and the ``Slot``
it was found at (None where the object is reached only through itself, e.g. a bound ``self``).

Python scalars (``is_py_state``: a bool, int or float, or a short tuple of them) held by a closure cell, a global
or an attribute of a plain object (a callable object, a bound method's ``self``) are roots too: ``if FLAG:``
freezes the branch of the value seen, so a trace guards them (``World.python_state``). Only the user's code is
looked at for them: a flag inside graphduel's own modules is a cache, not a decision of the traced program.

    >>> import eager
    >>> from eager import nn
    >>> model, bias = nn.Linear(2, 1), eager.zeros(1)
    >>> def step(x):
    ...     return model(x) + bias
    >>> [(r.name, type(r.obj).__name__, r.slot.name) for r in function_roots(step)]
    [('model', 'Linear', 'model'), ('bias', 'Tensor', 'bias')]
    >>> SCALE = 2.0
    >>> [(r.name, r.obj) for r in function_roots(lambda x: x * SCALE)]
    [('SCALE', 2.0)]
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, NamedTuple

from eager.autograd.mode import _package_dirs
from eager.nn.module import Module
from eager.tensor import Tensor
from tracer.slots import Slot

MAX_DEPTH = 2          # functions named by functions named by the traced function, and no further
MAX_CONTAINER = 64     # larger lists and dicts are data, not a place state is kept
PY_SCALARS = (bool, int, float)


def is_py_state(value) -> bool:
    """Whether a value is Python state a trace guards: a bool/int/float, or a short tuple of them."""
    if type(value) in PY_SCALARS:
        return True
    return type(value) is tuple and 0 < len(value) <= 8 and all(type(v) in PY_SCALARS for v in value)


class Root(NamedTuple):
    """Something a traced function reaches: its name, the object, and where it was found (or None)."""

    name: str
    obj: Any
    slot: Slot | None


def is_module(obj) -> bool:
    return isinstance(obj, Module)


def is_optimizer(obj) -> bool:
    return not isinstance(obj, type) and hasattr(obj, "param_groups") and isinstance(getattr(obj, "state", None),
                                                                                     dict)


def function_roots(fn) -> list[Root]:
    """Modules, optimizers, tensors and (in the user's code) Python scalars named by ``fn``: bound self, closure
    cells, globals, defaults."""
    roots: list[Root] = []
    _function_roots(fn, roots, depth=0, seen=set())
    return roots


def _function_roots(fn, roots: list[Root], depth: int, seen: set) -> None:
    if id(fn) in seen or depth > MAX_DEPTH:
        return
    seen.add(id(fn))
    if inspect.ismethod(fn):
        owner = fn.__self__
        if is_module(owner) or is_optimizer(owner):
            roots.append(Root("self", owner, None))
        else:
            _object_roots("self", owner, roots, depth, seen, _user_code(getattr(fn.__func__, "__code__", None)))
        fn = fn.__func__
    if isinstance(fn, functools.partial):
        for i, value in enumerate(fn.args):
            _consider(f"partial_arg{i}", value, None, roots, depth, seen)
        for key, value in fn.keywords.items():
            _consider(key, value, None, roots, depth, seen)
        _function_roots(fn.func, roots, depth + 1, seen)
    elif isinstance(fn, types.FunctionType):
        _code_roots(fn, roots, depth, seen)
    else:
        call = type(fn).__dict__.get("__call__") if not isinstance(fn, type) else None
        if isinstance(call, types.FunctionType):  # a callable object: its attributes and its __call__
            _object_roots("self", fn, roots, depth, seen, _user_code(call.__code__))
            _function_roots(call, roots, depth + 1, seen)


def _code_roots(fn: types.FunctionType, roots: list[Root], depth: int, seen: set) -> None:
    """What a plain function's closure cells, the globals its code reads, and its defaults hold."""
    code = fn.__code__
    scalars = _user_code(code)
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a variable not assigned yet)
            continue
        _consider(name, value, Slot(name, cell, (("cell", None),)), roots, depth, seen, scalars)
    g = fn.__globals__
    for name in _names(code):
        if name in g:
            _consider(name, g[name], Slot(name, g, (("item", name),)), roots, depth, seen, scalars)
    for i, value in enumerate(fn.__defaults__ or ()):
        _consider(f"default{i}", value, None, roots, depth, seen)


def _object_roots(prefix: str, obj, roots, depth, seen, scalars: bool) -> None:
    for key, value in getattr(obj, "__dict__", {}).items():
        if not key.startswith("_"):
            _consider(f"{prefix}.{key}", value, Slot(f"{prefix}.{key}", obj, (("attr", key),)), roots, depth, seen,
                      scalars)


def _user_code(code) -> bool:
    """Whether code is the user's (not graphduel's own packages): only the user's Python scalars are guarded."""
    return code is not None and not code.co_filename.startswith(_package_dirs())


def _names(code) -> list[str]:
    out = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out += _names(const)
    return out


def _is_state(value) -> bool:
    return is_module(value) or is_optimizer(value) or isinstance(value, Tensor)


def _consider(name, value, slot, roots, depth, seen, scalars: bool = False) -> None:
    if _is_state(value) or (scalars and slot is not None and is_py_state(value)):
        roots.append(Root(name, value, slot))
    elif isinstance(value, (list, tuple)) and len(value) <= MAX_CONTAINER:
        for i, v in enumerate(value):
            if _is_state(v):
                roots.append(Root(f"{name}[{i}]", v, slot.child(f"{name}[{i}]", "item", i) if slot else None))
    elif isinstance(value, dict) and len(value) <= MAX_CONTAINER:
        for k, v in value.items():
            if _is_state(v):
                roots.append(Root(f"{name}[{k!r}]", v, slot.child(f"{name}[{k!r}]", "item", k) if slot else None))
    elif isinstance(value, (types.FunctionType, types.MethodType)):
        _function_roots(value, roots, depth + 1, seen)
