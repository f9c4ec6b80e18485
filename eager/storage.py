"""Storage and views, as PyTorch has them: a view shares its base's memory and version counter.

A tensor either owns its array (``_base is None``) or is a view of a base tensor: ``_base`` is the tensor that
owns the memory and ``_view_ops`` the movement primitives (with their params) that turn the base into the view.
NumPy (and CuPy) views already share memory, so an in-place op writes into the array and the base and every
other view see it. What the engine adds is bookkeeping:

- one ``Version`` counter per storage, shared by the base and its views (``detach()`` and, unlike PyTorch, ``.data``
  too), bumped by every in-place write; backward checks it for the tensors a VJP reads;
- a view's autograd history and a trace's value are derived from the base: after a write through a view the
  base's history is rebased onto a functional scatter of the new values (PyTorch's CopySlices), and a view that
  is read after its storage changed is re-derived from the base (``refresh``).

    >>> import eager
    >>> q = eager.ones(2, 3)
    >>> q[0].zero_().shape, q.tolist()
    ((3,), [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
"""

from __future__ import annotations

import sys


class Version:
    """A storage's version counter: one object, shared by the base and all its views."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0):
        self.value = value

    def __repr__(self) -> str:
        return f"Version({self.value})"


def writeable(array) -> bool:
    """Whether an array's memory may be written (NumPy's read-only broadcasts are not; CuPy has no such flag)."""
    return getattr(array.flags, "writeable", True)


def overlapping(array) -> bool:
    """Whether several elements of ``array`` are one memory location (an ``expand()``ed view, an ``unfold()`` whose
    windows overlap): never written. From the strides: taken from the smallest, each dim's stride must step past
    everything the smaller ones span (exact for every view eager makes; a contiguous array is decided at once)."""
    flags = array.flags
    if flags.c_contiguous or flags.f_contiguous:
        return False
    span = 0
    for stride, size in sorted((abs(st), d) for st, d in zip(array.strides, array.shape) if d > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def memory_owner(array):
    """The array that owns ``array``'s memory (NumPy and CuPy views chain to it through ``.base``; a NumPy
    ``as_strided`` view, as ``diagonal`` and ``unfold`` are, through a holder object whose ``.base`` is the array)."""
    while True:
        base = getattr(array, "base", None)
        if base is not None and not hasattr(base, "flags"):
            base = getattr(base, "base", None)
        if base is None or not hasattr(base, "flags"):
            return array
        array = base


def has_views(t) -> bool:
    """Whether a view of ``t``'s memory is alive now: each one holds the storage's version counter, so the
    counter's reference count says it (the base's slot and the call's argument are the two it always has)."""
    return sys.getrefcount(t._vc) > 2


def assign(t, array) -> None:
    """Give tensor ``t`` the value ``array`` (same shape and dtype) from outside autograd: a traced call's state
    update, a loaded graph's. Written into its memory when a view of it is alive (a state_dict, a ``.data``
    alias), so that it sees the new value too; otherwise the tensor just takes the array (no copy)."""
    if t._base is not None or has_views(t):
        if array is not t._data:
            t._data[...] = array
    else:
        t._data = array
    t._vc.value += 1


def _detached(t) -> bool:
    """Whether a view was taken through ``detach()``/``.data``: it shares memory, not autograd history."""
    from eager.primitives import STOP_GRADIENT
    return any(prim is STOP_GRADIENT for prim, _ in t._view_ops)


def mark_view(out, prim, inputs: tuple, params: dict, xp) -> None:
    """Make ``out`` (the result of a view primitive) a view of input 0's storage, when it really shares it."""
    src = inputs[0]
    if len(inputs) > 1 or not hasattr(src, "_vc"):  # index tensors: advanced indexing copies
        return
    if not xp.may_share_memory(out._data, src._data):  # reshape copies what it cannot view; empty results
        return
    out._vc = src._vc
    out._view_version = src._vc.value
    if src._base is None:
        out._base, out._view_ops = src, ((prim, params),)
    else:
        out._base, out._view_ops = src._base, src._view_ops + ((prim, params),)


def _from_base(base, ops: tuple):
    """The view ``ops`` take of ``base``, recorded through ``apply`` (autograd and any trace see it)."""
    from eager.dispatch import apply
    t = base
    for prim, params in ops:
        t = apply(prim, t, **params)
    return t


def refresh(view) -> None:
    """Re-derive a view whose storage was written since its value was last derived: its autograd history and
    a trace's value now come from the base's current ones. Memory is already right; without autograd or a
    trace, nothing else is needed."""
    from eager.autograd.mode import MODE
    mode = MODE.get()
    view._view_version = view._vc.value
    base = view._base
    detached = _detached(view)
    grad = mode.grad_enabled and not detached and (base._requires_grad or view._requires_grad)
    if not (grad or mode.recorders):
        return
    fresh = _derived(grad, _from_base, base, view._view_ops)
    if grad:
        view.grad_fn, view._requires_grad = fresh.grad_fn, fresh._requires_grad
    for recorder in mode.recorders:
        recorder.mutate(view, fresh)


def _take_history(t, new) -> None:
    """``t`` now holds ``new``'s values: its history is ``new``'s, or, where ``new`` has none (``fill_``,
    ``zero_``, a copy of a constant), a node that gives t's old history a zero gradient (PyTorch's
    FillBackward): the old history no longer reaches t's values, and t still requires grad."""
    if new.grad_fn is not None:
        t.grad_fn, t._requires_grad = new.grad_fn, True
        return
    from eager.autograd.engine import Node
    from eager.tensor import Tensor
    old = Tensor._make(t._data, True, t.grad_fn)
    t.grad_fn, t._requires_grad = Node("FillBackward", _zero_gradient, (old,), {}), True


def _zero_gradient(g, out, old):
    from eager.creation import zeros_like
    return (zeros_like(g),)


def _derived(grad: bool, fn, *args):
    """``fn(*args)`` recorded by autograd when ``grad``, else under no_grad (only a trace needs it then)."""
    from eager.autograd.mode import no_grad
    if grad:
        return fn(*args)
    with no_grad():
        return fn(*args)


def _scatter(base, ops: tuple, value):
    """``base`` with the view ``ops`` take of it replaced by ``value``, computed functionally (PyTorch's
    CopySlices; a trace records it as the base's new value)."""
    from eager import primitives as P
    from eager.dispatch import apply
    if not ops:
        return value
    (prim, params), rest = ops[0], ops[1:]
    inner = apply(prim, base, **params)
    new_inner = _scatter(inner, rest, value) if rest else value
    if prim is P.GETITEM:
        return apply(P.INDEX_PUT, base, new_inner, key=params["key"])
    if prim is P.RESHAPE:
        return apply(P.RESHAPE, new_inner, shape=tuple(base.shape))
    if prim is P.PERMUTE:
        return apply(P.PERMUTE, new_inner, axes=P._inverse(params["axes"]))
    if prim is P.DIAGONAL:
        return P.diagonal_put(base, new_inner, **params)
    if prim is P.UNFOLD:  # windows that overlap were refused before (_write_memory): each element is written once
        return P.unfold_put(base, new_inner, **params)
    if prim is P.STOP_GRADIENT:
        return new_inner
    raise RuntimeError(f"in-place write through a {prim.name} view is not supported; clone() the tensor first")


def _write_memory(x, new) -> None:
    data = x._data
    if overlapping(data):
        raise RuntimeError(f"unsupported operation: more than one element of the written-to tensor (shape "
                           f"{list(x.shape)}, an expand()ed view or an unfold() whose windows overlap) refers to a "
                           "single memory location; clone() the tensor before performing the in-place operation.")
    try:
        data[...] = new._data
    except ValueError as e:
        raise RuntimeError(f"in-place write to a tensor of shape {list(x.shape)} failed: {e}; its memory is "
                           "read-only (e.g. a NumPy array shared with eager.from_numpy); clone() it first.") from e


def check_inplace_allowed(x, grad_enabled: bool) -> None:
    """PyTorch's refusals: in-place ops on a leaf that requires grad, or on a view of one, outside no_grad."""
    if not grad_enabled or not x._requires_grad:
        return
    if x.grad_fn is None and (x._base is None or _detached(x)):
        raise RuntimeError(f"a leaf tensor that requires grad (shape {list(x.shape)}) is being used in an "
                           "in-place operation; wrap the update in `with eager.no_grad():` (as optimizers do), "
                           "or work on a clone.")
    base = x._base
    if base is not None and not _detached(x) and base.grad_fn is None and base._requires_grad:
        raise RuntimeError(f"a view of a leaf tensor that requires grad (view shape {list(x.shape)}, leaf "
                           f"shape {list(base.shape)}) is being used in an in-place operation; wrap it in "
                           "`with eager.no_grad():` or clone() the leaf first.")


def write_inplace(x, new) -> None:
    """Make ``x`` hold ``new`` (same shape and dtype): write its memory, bump the storage's version, and keep
    autograd and any trace consistent for ``x``, its base and (through ``refresh``) every other view."""
    from eager.autograd.mode import MODE
    mode = MODE.get()
    for recorder in mode.recorders:
        before_write = getattr(recorder, "before_write", None)  # optional: recorders that keep arrays need it
        if before_write is not None:
            before_write(x)
    _write_memory(x, new)
    x._vc.value += 1
    base = x._base
    if base is not None:
        x._view_version = x._vc.value
        # a detach()/.data alias changes the base's values, never its history
        grad = mode.grad_enabled and not _detached(x) and (new.grad_fn is not None or base._requires_grad)
        if grad or mode.recorders:
            base_new = _derived(grad, _scatter, base, x._view_ops, new)
            if grad:
                _take_history(base, base_new)
                x._view_version = -1  # the view's own history is re-derived from the rebased base when read
            for recorder in mode.recorders:
                recorder.mutate(base, base_new)
    elif new.grad_fn is not None or (mode.grad_enabled and x._requires_grad):
        _take_history(x, new)
    for recorder in mode.recorders:
        recorder.mutate(x, new)
