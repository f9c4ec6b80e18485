"""Input signatures: what a traced function is specialised to, and how to explain a change.

The signature of a call is one hashable key per argument: for a tensor its shape, dtype and device (the array
type), for a container its structure, for a Python number or string its value, for any other object its
identity. A new signature retraces (or, with ``strict=True``, raises ``SignatureError``).

    >>> import eager
    >>> _, a = signature_of((eager.zeros(64, 10),), {})
    >>> _, b = signature_of((eager.zeros(32, 10),), {})
    >>> explain_change(a, b, ["x"])
    ['argument x: f32[64,10] -> f32[32,10] (shape changed)']
"""

from __future__ import annotations

import inspect

from eager.backend import short_name
from eager.tensor import Tensor


class SignatureError(TypeError):
    """A traced function was called with arguments that do not fit any traced signature (``strict=True``)."""


def signature_of(args: tuple, kwargs: dict) -> tuple[list[Tensor], tuple]:
    """(tensor leaves in order, hashable signature key)."""
    leaves: list[Tensor] = []
    parts = []
    for a in args:
        if isinstance(a, Tensor):
            leaves.append(a)
            d = a._data
            parts.append((d.shape, d.dtype, type(d)))
        else:
            parts.append(_static(a, leaves))
    if kwargs:
        parts.append(("kwargs", tuple((k, _static(kwargs[k], leaves)) for k in sorted(kwargs))))
    return leaves, tuple(parts)


def _static(obj, leaves):
    if isinstance(obj, Tensor):
        leaves.append(obj)
        d = obj._data
        return (d.shape, d.dtype, type(d))
    t = type(obj)
    if t in (bool, int, float, str, complex) or obj is None:
        return ("py", t.__name__, obj)
    if t is tuple or t is list or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        return (t.__name__, tuple(_static(o, leaves) for o in obj))
    if t is dict:
        return ("dict", tuple((k, _static(v, leaves)) for k, v in obj.items()))
    return ("obj", f"{t.__module__}.{t.__qualname__}", id(obj))


def describe(part) -> str:
    """One argument's signature, readably: ``f32[64,10]``, ``0.1``, ``(f32[3], 2)``, ``<Model object>``."""
    if part and isinstance(part[0], tuple):
        shape, dtype, array_type = part
        device = "" if array_type.__module__ == "numpy" else " cuda"
        return f"{short_name(dtype)}[{','.join(map(str, shape))}]{device}"
    tag = part[0]
    if tag == "py":
        return repr(part[2])
    if tag in ("tuple", "list"):
        inner = ", ".join(describe(p) for p in part[1])
        return f"({inner})" if tag == "tuple" else f"[{inner}]"
    if tag in ("dict", "kwargs"):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in part[1]) + "}"
    if tag == "obj":
        return f"<{part[1].rsplit('.', 1)[-1]} object at 0x{part[2]:x}>"
    return repr(part)


def format_signature(key: tuple, names: list[str]) -> str:
    return "(" + ", ".join(f"{n}: {describe(p)}" for n, p in zip(_names(names, len(key)), key)) + ")"


def _names(names: list[str], n: int) -> list[str]:
    return [names[i] if i < len(names) else f"arg{i}" for i in range(n)]


def explain_change(old: tuple, new: tuple, names: list[str]) -> list[str]:
    """What differs between two signatures, one line per argument that changed."""
    if len(old) != len(new):
        return [f"number of arguments: {len(old)} -> {len(new)}"]
    out = []
    for name, a, b in zip(_names(names, len(old)), old, new):
        if a == b:
            continue
        how = ""
        if a and b and isinstance(a[0], tuple) and isinstance(b[0], tuple):
            what = [w for w, x, y in zip(("shape", "dtype", "device"), a, b) if x != y]
            how = f" ({', '.join(what)} changed)"
        out.append(f"argument {name}: {describe(a)} -> {describe(b)}{how}")
    return out


def argument_names(fn, n: int) -> list[str]:
    """Parameter names of ``fn`` (of ``forward`` for a module) for messages; ``arg{i}`` where unknown."""
    target = getattr(fn, "forward", fn)
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return [f"arg{i}" for i in range(n)]
    names = []
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            names += [f"{p.name}[{i}]" for i in range(n - len(names))]
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return _names(names, n)


def check_arity(fn, args: tuple, kwargs: dict, name: str) -> None:
    """Raise a clear TypeError when ``fn`` cannot take these arguments (before any tracing or lookup)."""
    target = getattr(fn, "forward", fn)
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        empty = inspect.Signature.empty
        sig = sig.replace(parameters=[p.replace(annotation=empty) for p in sig.parameters.values()],
                          return_annotation=empty)
        raise TypeError(f"traced {name}{sig}: called with {len(args)} positional argument(s)"
                        f"{' and keywords ' + ', '.join(sorted(kwargs)) if kwargs else ''}: {e}. Call it with the "
                        "arguments the original function takes.") from None
