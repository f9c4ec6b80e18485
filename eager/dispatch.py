"""``apply``: the one entry point through which every op runs.

It runs the primitive's ``impl`` on the input arrays, wraps the result in a Tensor, records an autograd
node when a gradient is wanted, and tells any attached recorder (the tracer) what happened. Nothing else
in the engine knows whether it is being traced.

    >>> import eager
    >>> from eager.primitives import PRIMITIVES
    >>> apply(PRIMITIVES["add"], eager.tensor([1.0]), 2.0).tolist()
    [3.0]
"""

from __future__ import annotations

from numbers import Number

import numpy as np

from eager.autograd.engine import Node
from eager.autograd.mode import MODE, user_source
from eager.backend import namespace, namespace_of
from eager.primitives import Aval, Primitive, ShapeError, check_index_bounds, describe
from eager.storage import mark_view, refresh
from eager.tensor import Tensor

_ndarray = np.ndarray


class OpError(RuntimeError):
    """An op's computation failed for a reason other than shapes; the message names op and inputs."""


class IndexOutOfRange(ShapeError, IndexError, OpError):
    """An index does not fit the tensor: a ShapeError and, as in Python, an IndexError (and an OpError, which
    out-of-range index tensors raised before, so existing ``except OpError`` handlers still catch it)."""


def apply(prim: Primitive, *inputs, **params) -> Tensor:
    """Run ``prim`` on ``inputs`` (Tensors or Python scalars) with static ``params``."""
    mode = MODE.get()
    if mode.recorders and prim.decomposition is not None and \
            any(getattr(r, "decompose", True) for r in mode.recorders):  # a trace records the composite
        return prim.decomposition(*inputs, **params)
    arrays = []
    edges = []  # each input's gradient destination (see Node.edges), gathered in the same pass
    xp = None
    wants_grad = False
    for x in inputs:
        if isinstance(x, Tensor):
            if x._base is not None and x._view_version != x._vc.value:
                refresh(x)  # a view read after its storage was written: re-derive it from its base
            data = x._data
            arrays.append(data)
            if xp is None:
                xp = np if type(data) is _ndarray else namespace_of(data)
            if x._requires_grad:
                wants_grad = True
                edges.append(x.grad_fn or x)
            else:
                edges.append(None)
        else:
            arrays.append(x)
            edges.append(None)
    if xp is None:
        xp = namespace(params["device"])
    try:
        if xp is not np and prim.index_from is not None and len(arrays) > prim.index_from:
            # CuPy wraps an out-of-range index around: eager raises, as on the CPU
            check_index_bounds(arrays[0].shape, params["key"], arrays[prim.index_from:])
        out = prim.impl(xp, *arrays, **params)
    except Exception as e:
        raise _op_error(prim, inputs, params, e) from e
    if type(out) is not _ndarray and xp is np and isinstance(out, (np.generic, Number)):
        out = np.asarray(out)  # NumPy returns scalars, not 0-d arrays, from 0-d ops (to_device returns CuPy's)
    if wants_grad and mode.grad_enabled and prim.vjp is not None:
        t = Tensor._make(out, True, None)
        saved = _saved_versions(prim, inputs) if prim.saved or prim.index_from is not None else ()
        t.grad_fn = Node(prim.backward_name, prim.vjp, inputs, params, saved, t if prim.saves_out else None,
                         user_source() if mode.anomaly else None, edges)
    else:
        t = Tensor._make(out, False, None)
    if prim.view:
        mark_view(t, prim, inputs, params, xp)
    if mode.recorders:
        for recorder in mode.recorders:
            recorder.record(prim, inputs, params, t)
    return t


def _saved_versions(prim: Primitive, inputs: tuple) -> tuple:
    """(position, version) of each input whose value the VJP will read: backward checks only these."""
    saved = [(i, inputs[i]._vc.value) for i, j in prim.saved
             if i < len(inputs) and isinstance(inputs[i], Tensor)
             and (j < 0 or (isinstance(inputs[j], Tensor) and inputs[j]._requires_grad))]
    if prim.index_from is not None:
        saved += [(i, inputs[i]._vc.value) for i in range(prim.index_from, len(inputs))
                  if isinstance(inputs[i], Tensor)]
    return tuple(saved)


def aval_of(x):
    """The abstract value of a Tensor (Python scalars stand for themselves)."""
    return Aval(tuple(x._data.shape), x._data.dtype) if isinstance(x, Tensor) else x


def _op_error(prim, inputs, params, exc):
    """Turn a backend failure into an error naming the op, the input shapes/dtypes and what to do."""
    avals = [aval_of(x) for x in inputs]
    try:
        prim.shape_rule(*avals, **params)
    except ShapeError as shape_error:
        if isinstance(exc, IndexError):
            return IndexOutOfRange(str(shape_error))
        return shape_error
    shown = ", ".join(describe(a) for a in avals)
    if isinstance(exc, IndexError):  # an index tensor's values (shape rules only see its shape)
        rule = "; index values along a dim of size n must lie in [-n, n)." if prim.index_from is not None else ""
        return IndexOutOfRange(f"{prim.name}({shown}): {exc}{rule}")
    return OpError(f"{prim.name}({shown}) failed: {type(exc).__name__}: {exc}")
