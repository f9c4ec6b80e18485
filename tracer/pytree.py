"""Flatten nested arguments and results (tuples, lists, dicts, namedtuples) into tensor leaves and a spec.

A spec is a hashable description of the structure: ``"T"`` for a tensor leaf, ``("tuple", children)``,
``("list", children)``, ``("dict", keys, children)``, ``("namedtuple", type, children)`` or
``("const", value)`` for anything else (a non-tensor argument is part of the signature).

    >>> import eager
    >>> leaves, spec = flatten((eager.ones(2), {"lr": 0.1}))
    >>> len(leaves), spec
    (1, ('tuple', ('T', ('dict', ('lr',), (('const', 0.1),)))))
    >>> unflatten(spec, ["x"])
    ('x', {'lr': 0.1})
"""

from __future__ import annotations

from typing import Any

from eager.tensor import Tensor

LEAF = "T"


def flatten(obj, leaves: list | None = None, names: list | None = None, path: str = "") -> tuple[list, Any]:
    """(tensor leaves in order, spec); ``names`` (if given) receives a readable path per leaf."""
    leaves = [] if leaves is None else leaves
    return leaves, _flatten(obj, leaves, names, path)


def _flatten(obj, leaves, names, path):
    if isinstance(obj, Tensor):
        leaves.append(obj)
        if names is not None:
            names.append(path or f"arg{len(leaves) - 1}")
        return LEAF
    t = type(obj)
    if t is tuple or t is list:
        return (t.__name__, tuple(_flatten(o, leaves, names, f"{path}[{i}]") for i, o in enumerate(obj)))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("namedtuple", t, tuple(_flatten(o, leaves, names, f"{path}.{f}") for f, o in zip(obj._fields, obj)))
    if t is dict:
        keys = tuple(obj)
        return ("dict", keys, tuple(_flatten(obj[k], leaves, names, f"{path}[{k!r}]") for k in keys))
    return ("const", obj)


def unflatten(spec, leaves):
    """Rebuild the structure, taking tensor leaves from ``leaves`` in order."""
    return _unflatten(spec, iter(leaves))


def _unflatten(spec, it):
    if spec == LEAF:
        return next(it)
    kind = spec[0]
    if kind == "const":
        return spec[1]
    if kind == "tuple":
        return tuple(_unflatten(s, it) for s in spec[1])
    if kind == "list":
        return [_unflatten(s, it) for s in spec[1]]
    if kind == "namedtuple":
        return spec[1](*(_unflatten(s, it) for s in spec[2]))
    if kind == "dict":
        return {k: _unflatten(s, it) for k, s in zip(spec[1], spec[2])}
    raise ValueError(f"unknown pytree spec {spec!r}")


def count_leaves(spec) -> int:
    if spec == LEAF:
        return 1
    kind = spec[0]
    if kind == "const":
        return 0
    children = spec[2] if kind in ("namedtuple", "dict") else spec[1]
    return sum(count_leaves(s) for s in children)
