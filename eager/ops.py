"""Tensor operations: thin wrappers over primitives, and composites written with them.

Wrappers handle what PyTorch users expect at the surface (Python scalars, dtype promotion, ``dim``/``keepdim``,
negative dims, 1-D matmul) and then call ``apply``. Composites (mean, var, softmax, clamp, relu, stack, ...)
are written only with other ops, so they get gradients, tracing and fusion for free.

    >>> import eager
    >>> eager.softmax(eager.tensor([0.0, 0.0]), dim=0).tolist()
    [0.5, 0.5]
"""

from __future__ import annotations

import builtins
import functools
import math
from collections import namedtuple
from numbers import Number

import numpy as np

from eager import backend, blas
from eager import primitives as P
from eager.autograd.mode import MODE, no_grad
from eager.creation import full, full_like, zeros_like  # noqa: F401  (zeros_like: optimizers and tracer.grad use it)
from eager.dispatch import IndexOutOfRange, apply
from eager.primitives import IndexSlot, ShapeError, describe
from eager.storage import check_inplace_allowed, overlapping, refresh, write_inplace, writeable
from eager.tensor import Tensor

MaxResult = namedtuple("MaxResult", ["values", "indices"])


# ---------------------------------------------------------------- operands and promotion


def _scalar(x):
    """A Python number for a Python or NumPy scalar; None for anything else."""
    if isinstance(x, np.generic):  # first: np.float64 is also a float, but NumPy would not treat it as weak
        return x.item()
    if isinstance(x, (bool, int, float)):
        return x
    return None


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; arrays and lists become constant tensors (on ``like``'s device)."""
    if isinstance(x, Tensor):
        return x
    from eager.creation import tensor
    return tensor(x, device=like.device if like is not None else None)


def _operands(a, b):
    """Promote two operands PyTorch's way; Python scalars stay scalars (weakly typed)."""
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if ta and tb:
        da, db = a._data.dtype, b._data.dtype
        if da is not db and da != db:
            dt = backend.promote_types(da, db)
            if (a._data.ndim == 0) != (b._data.ndim == 0) and da.kind == db.kind:
                dt = db if a._data.ndim == 0 else da  # PyTorch: a 0-d tensor does not widen its own category
            a = a if da == dt else to(a, dt)
            b = b if db == dt else to(b, dt)
        return a, b
    if ta:
        return _with_scalar(a, b)
    if tb:
        b, a = _with_scalar(b, a)
        return a, b
    raise TypeError(f"expected at least one Tensor operand, got {type(a).__name__} and {type(b).__name__}")


def _with_scalar(t: Tensor, s):
    value = _scalar(s)
    if value is None:
        if isinstance(s, (np.ndarray, list, tuple)):
            return _operands(t, as_tensor(s, like=t))
        raise TypeError(f"unsupported operand type {type(s).__name__} for a Tensor op; use a Tensor or a number")
    kind = t._data.dtype.kind
    if isinstance(value, float) and kind != "f":
        t = to(t, backend.default_float)
    elif kind == "b" and not isinstance(value, bool):
        t = to(t, backend.int64)
    elif kind in "iu":
        value = _wrapped(value, t._data.dtype)  # an int too wide for the tensor's type wraps, as in PyTorch
    return t, value


def _binary(prim, a, b):
    if type(a) is Tensor and type(b) is Tensor and a._data.dtype is b._data.dtype:  # nothing to promote
        return apply(prim, a, b)
    a, b = _operands(a, b)
    return apply(prim, a, b)


def _floating(x: Tensor) -> Tensor:
    return x if x._data.dtype.kind == "f" else to(x, backend.default_float)


def add(a, b): return _binary(P.ADD, a, b)
def sub(a, b): return _binary(P.SUB, a, b)
def mul(a, b): return _binary(P.MUL, a, b)
def maximum(a, b): return _binary(P.MAXIMUM, a, b)
def minimum(a, b): return _binary(P.MINIMUM, a, b)
def eq(a, b): return _binary(P.PRIMITIVES["eq"], a, b)
def ne(a, b): return _binary(P.PRIMITIVES["ne"], a, b)
def lt(a, b): return _binary(P.PRIMITIVES["lt"], a, b)
def le(a, b): return _binary(P.PRIMITIVES["le"], a, b)
def gt(a, b): return _binary(P.PRIMITIVES["gt"], a, b)
def ge(a, b): return _binary(P.PRIMITIVES["ge"], a, b)


def div(a, b):
    """True division: integer operands are promoted to floating point first, as in PyTorch."""
    a, b = _operands(a, b)
    if isinstance(a, Tensor) and a._data.dtype.kind != "f":
        a = to(a, backend.default_float)
        b = b if not isinstance(b, Tensor) else to(b, backend.default_float)
    elif isinstance(b, Tensor) and b._data.dtype.kind != "f":
        b = to(b, backend.default_float)
    return apply(P.DIV, a, b)


def pow(a, b):
    """``a ** b``; integer ** integer stays integer (PyTorch), except that a negative Python exponent gives
    floats (NumPy and PyTorch would refuse). Bool operands count as int64 (NumPy would make int8)."""
    a, b = _operands(a, b)
    if isinstance(a, Tensor) and a._data.dtype == backend.bool_:
        a = to(a, backend.int64)
    if isinstance(b, Tensor) and b._data.dtype == backend.bool_:
        b = to(b, backend.int64)
    if isinstance(a, Tensor) and not isinstance(b, Tensor) and b < 0:
        a = _floating(a)
    return apply(P.POW, a, b)


# ---------------------------------------------------------------- wrappers made from the table


def _table_function(prim: P.Primitive):
    """``eager.<name>(x)`` for a row with ``api``: ``apply`` on x (promoted to the default float for API_FLOAT)."""
    promote = prim.api == P.API_FLOAT

    def fn(x: Tensor) -> Tensor:
        return apply(prim, _floating(x) if promote else x)
    fn.__name__ = fn.__qualname__ = prim.name
    fn.__doc__ = (f"``torch.{prim.name}``: the ``{prim.name}`` primitive, elementwise"
                  + ("; integer and bool tensors are promoted to the default float first." if promote else "."))
    return fn


# eager.exp, eager.erf, ...; eager/__init__.py and Tensor (methods and in-place forms) take them from here. Code
# in this module calls them as Tensor methods (x.exp()), which linters can see.
TABLE_FUNCTIONS = {p.name: _table_function(p) for p in P.PRIMITIVES.values() if p.api is not None}
globals().update(TABLE_FUNCTIONS)


def rsqrt(x): return div(1.0, x.sqrt())
def clone(x): return apply(P.COPY, x)


def detach(x: Tensor) -> Tensor:
    """The same values, cut from the autograd graph (a trace still sees where they came from)."""
    return apply(P.STOP_GRADIENT, x)


def relu(x: Tensor) -> Tensor:
    """max(x, 0): one primitive (gradient 0 at 0 and NaN kept as NaN, as in PyTorch)."""
    return apply(P.RELU, x)


def where(condition, x, y) -> Tensor:
    """``x`` where ``condition`` holds, else ``y`` (either may be a Python scalar)."""
    if not isinstance(condition, Tensor):
        raise TypeError(f"where: the condition must be a bool Tensor, got {type(condition).__name__}; make one "
                        "with a comparison (e.g. x > 0).")
    if condition._data.dtype != backend.bool_:  # NumPy would silently treat nonzero as True
        got = P.Aval(condition.shape, condition.dtype)
        raise TypeError(f"where: the condition must be a bool tensor, got {got}; compare first (e.g. x != 0) "
                        "or cast with .bool().")
    if isinstance(x, Tensor) or isinstance(y, Tensor):
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            x, y = _operands(x, y)
        elif isinstance(x, Tensor):
            x, y = _with_scalar(x, y)
        else:
            y, x = _with_scalar(y, x)
        return apply(P.WHERE, condition, x, y)
    value = _scalar(x)
    dtype = backend.default_float if isinstance(value, float) or isinstance(_scalar(y), float) else backend.int64
    return apply(P.WHERE, condition, full_like(condition, x, dtype), y)


def clamp(x: Tensor, min=None, max=None) -> Tensor:
    """Limit to [min, max]; the gradient is 1 inside the range (bounds included) and 0 outside."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    out = x
    if min is not None:
        out = where(lt(out, min), min, out)
    if max is not None:
        out = where(gt(out, max), max, out)
    return out


# ---------------------------------------------------------------- bitwise and logical


def _bitwise_operand(op: str, x) -> None:
    dtype = x._data.dtype if isinstance(x, Tensor) else None
    if isinstance(x, float) or (dtype is not None and dtype.kind not in "biu"):
        got = f"the floating-point tensor {describe(P.Aval(x.shape, dtype))}" if dtype is not None else \
            f"the Python float {x!r}"
        raise NotImplementedError(f"{op}: not implemented for {got} (as in PyTorch): bitwise ops take integer "
                                  "or bool tensors and Python ints. Cast with .long() or .bool(), or use "
                                  "logical_and/logical_or/logical_xor for truth values.")


def _wrapped(value, dtype):
    """A Python int as the integer of ``dtype`` with the same low bits (PyTorch wraps ``int8 | 1000``)."""
    if isinstance(value, bool) or not isinstance(value, int) or dtype.kind not in "iu":
        return value
    low, high, bits = _int_range(dtype)
    return value if low <= value <= high else (value - low) % (1 << bits) + low


@functools.cache
def _int_range(dtype) -> tuple[int, int, int]:
    info = np.iinfo(dtype)  # slow (microseconds): once per dtype
    return int(info.min), int(info.max), info.bits


def _bitwise(prim, a, b):
    """``a & b``, ``a | b``, ``a ^ b``: bitwise on integers, logical on bool, with PyTorch's promotion."""
    _bitwise_operand(prim.name, a)
    _bitwise_operand(prim.name, b)
    a, b = _operands(a, b)
    dtype = (a if isinstance(a, Tensor) else b)._data.dtype
    return apply(prim, _wrapped(a, dtype), _wrapped(b, dtype))


def bitwise_and(a, b): return _bitwise(P.BITWISE_AND, a, b)
def bitwise_or(a, b): return _bitwise(P.BITWISE_OR, a, b)
def bitwise_xor(a, b): return _bitwise(P.BITWISE_XOR, a, b)


def bitwise_not(x: Tensor) -> Tensor:
    """``~x``: every bit flipped on integers, logical not on bool."""
    _bitwise_operand("bitwise_not", x)
    return apply(P.BITWISE_NOT, x)


def invert(x: Tensor) -> Tensor:
    """The ``~`` operator: PyTorch raises TypeError (not bitwise_not's NotImplementedError) for float tensors."""
    if x._data.dtype.kind not in "biu":
        raise TypeError(f"~ (operator.invert) is only implemented on integer and bool tensors, got "
                        f"{describe(P.Aval(x.shape, x.dtype))}; compare first (x == 0) for a logical not.")
    return apply(P.BITWISE_NOT, x)


def _truth(x) -> Tensor:
    """``x != 0`` as a bool tensor (bool tensors as they are)."""
    x = as_tensor(x)
    return x if x._data.dtype == backend.bool_ else ne(x, 0)


def logical_not(x: Tensor) -> Tensor:
    return eq(x, False) if x.dtype == backend.bool_ else eq(x, 0)


def logical_and(a: Tensor, b) -> Tensor:
    return bitwise_and(_truth(a), _truth(as_tensor(b, like=a)))


def logical_or(a: Tensor, b) -> Tensor:
    return bitwise_or(_truth(a), _truth(as_tensor(b, like=a)))


def logical_xor(a: Tensor, b) -> Tensor:
    return bitwise_xor(_truth(a), _truth(as_tensor(b, like=a)))


# ---------------------------------------------------------------- conversions


def to(x: Tensor, *args, **kwargs) -> Tensor:
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if kwargs:
        raise TypeError(f"to: unexpected arguments {sorted(kwargs)}")
    for arg in args:
        if isinstance(arg, Tensor):
            device, dtype = arg.device, arg.dtype
        elif isinstance(arg, str) and (arg.startswith("cpu") or arg.startswith("cuda")):
            device = arg
        else:
            dtype = arg
    out = x
    if dtype is not None:
        dtype = backend.canonical_dtype(dtype)
        if dtype != out._data.dtype:
            if dtype.kind != "f" and out._requires_grad:  # integer/bool results carry no gradient (PyTorch)
                with no_grad():
                    out = apply(P.CAST, out, dtype=dtype)
            else:
                out = apply(P.CAST, out, dtype=dtype)
    if device is not None:
        device = backend.canonical_device(device)
        if device != out.device:
            out = apply(P.TO_DEVICE, out, device=device)
    return out


def copy_from(x: Tensor, src) -> Tensor:
    """``x.copy_(src)``: src broadcast to x's shape and cast to x's dtype and device."""
    src = to(as_tensor(src, like=x), x.device, x.dtype)
    return expand(src, *x.shape) if src.shape != x.shape else clone(src)


def inplace(x: Tensor, op, *args) -> Tensor:
    """Compute ``op(x, *args)``, then write it into ``x``'s memory: the base and every view of it see the new
    values, and the storage's version is bumped (backward refuses tensors it saved that were written since)."""
    mode = MODE.get()
    if len(args) == 1 and op in _ARITHMETIC and not mode.recorders and _arithmetic_in_memory(x, op, args[0], mode):
        return x
    check_inplace_allowed(x, mode.grad_enabled)
    if x._base is not None and x._view_version != x._vc.value:
        refresh(x)
    source = x
    if mode.grad_enabled and (x._requires_grad or builtins.any(isinstance(a, Tensor) and a._requires_grad
                                                                for a in args)):
        # a backward may read x's old value (mul_ by a tensor that requires grad): it reads a copy, as PyTorch's
        # in-place ops save the original self, instead of memory this write is about to change
        source = clone(x)
    new = op(source, *args)
    if new.dtype != x.dtype:
        raise TypeError(f"in-place op: result type {new.dtype} can't be cast to the tensor's type {x.dtype}; "
                        "use the out-of-place op.")
    if new.shape != x.shape:
        raise ShapeError(f"in-place op: result shape {list(new.shape)} doesn't match the tensor's shape "
                         f"{list(x.shape)}; use the out-of-place op.")
    write_inplace(x, new)
    return x


def _arithmetic_in_memory(x: Tensor, op, other, mode) -> bool:
    """``x += other`` (and -=, *=, /=) as one ufunc call writing x's memory, when nothing needs more: no autograd
    (an optimizer's update), no trace, a float tensor and a Python number or a tensor of its dtype that
    broadcasts to it. This is what the general path computes, without allocating the result (False: not taken)."""
    data = x._data
    if data.dtype.kind != "f" or not writeable(data):
        return False
    if isinstance(other, Tensor):
        if mode.grad_enabled and (x._requires_grad or other._requires_grad):
            return False
        value = other._data
        if value.dtype != data.dtype or type(value) is not type(data) or value.ndim > data.ndim or \
                builtins.any(v not in (1, d) for v, d in zip(value.shape[::-1], data.shape[::-1])):
            return False
    elif type(other) in (int, float):
        if mode.grad_enabled and x._requires_grad:
            return False
        value = other
    else:
        return False
    if overlapping(data):
        return False  # an expanded view: the general path raises PyTorch's error
    getattr(backend.namespace_of(data), _ARITHMETIC[op].impl.ufunc)(data, value, out=data)  # the row's own ufunc
    x._vc.value += 1
    return True


_ARITHMETIC = {add: P.ADD, sub: P.SUB, mul: P.MUL, div: P.DIV}  # the row each arithmetic wrapper applies


def add_scaled_(x: Tensor, other, alpha) -> Tensor:
    """``x.add_(other, alpha=a)``: ``x += a * other``. Outside autograd and traces, on NumPy float arrays of one
    shape, it is one BLAS axpy over x's memory (one pass, no temporary: an SGD update is a third of the time of
    ``x -= other * lr``); otherwise ``add(x, other * alpha)`` like any in-place op (a trace records that)."""
    if alpha == 1:
        return inplace(x, add, other)
    if not _axpy_in_memory(x, other, alpha):
        inplace(x, add, other * alpha)
    return x


def _axpy_in_memory(x: Tensor, other, alpha) -> bool:
    mode = MODE.get()
    data = x._data
    if mode.recorders or not isinstance(other, Tensor) or type(data) is not np.ndarray or \
            type(other._data) is not np.ndarray or data.shape != other._data.shape or not writeable(data) or \
            (mode.grad_enabled and (x._requires_grad or other._requires_grad)) or isinstance(alpha, Tensor) or \
            x._base is not None or not blas.axpy(alpha, other._data, data):
        return False
    x._vc.value += 1
    return True


# ---------------------------------------------------------------- reductions


def _axes(x: Tensor, dim) -> tuple[int, ...]:
    ndim = x.ndim
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        span = builtins.max(ndim, 1)  # a 0-d tensor accepts dim 0 and -1, as in PyTorch
        if not -span <= d < span:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], but got "
                             f"{d}) for a tensor of shape {list(x.shape)}; negative dims count from the end.")
        out.append(d % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _reduce_axes(x: Tensor, dim) -> tuple[int, ...]:
    """Axes for a reduction: a 0-d tensor accepts dim 0 / -1 (as in PyTorch) and reduces over nothing."""
    axes = _axes(x, dim)
    return axes if x.ndim else ()


def sum(x: Tensor, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
    x = x if dtype is None else to(x, dtype)
    return apply(P.SUM, x, axes=_reduce_axes(x, dim), keepdims=keepdim)


def mean(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    x = _floating(x)
    axes = _reduce_axes(x, dim)
    count = math.prod(x.shape[a] for a in axes)
    return div(apply(P.SUM, x, axes=axes, keepdims=keepdim), count)


def amax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return apply(P.MAX, x, axes=_reduce_axes(x, dim), keepdims=keepdim)


def amin(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return -amax(-x, dim, keepdim)


def argmax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    axis = None if dim is None or x.ndim == 0 else _axes(x, dim)[0]
    return apply(P.ARGMAX, x, axis=axis, keepdims=keepdim)


def argmin(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return argmax(-x, dim, keepdim)


def _at_indices(x: Tensor, indices: Tensor, dim, keepdim: bool) -> Tensor:
    """``x``'s values at ``indices`` (a keepdim index tensor) along ``dim``: the gradient reaches only those."""
    from eager.creation import arange
    ax = _axes(x, dim)[0]
    positions = reshape(arange(x.shape[ax], device=x.device), tuple(-1 if i == ax else 1 for i in range(x.ndim)))
    return sum(where(eq(positions, indices), x, 0), ax, keepdim)


def _select(x: Tensor, dim, keepdim: bool, arg, extreme):
    if x.ndim == 0 or x._data.dtype.kind != "f":  # no gradient to route: the plain reduction keeps the dtype
        return MaxResult(extreme(x, dim, keepdim), arg(x, dim, keepdim))
    indices = arg(x, dim, True)
    # PyTorch's max(dim) sends the gradient to the returned index only (amax shares it between ties)
    return MaxResult(_at_indices(x, indices, dim, keepdim), indices if keepdim else squeeze(indices, dim))


def max(x: Tensor, dim=None, keepdim: bool = False):
    """``max(x)``: the largest value; ``max(x, dim)``: (values, indices); ``max(x, other)``: maximum."""
    if isinstance(dim, Tensor):
        return maximum(x, dim)
    if dim is None:
        return amax(x)
    return _select(x, dim, keepdim, argmax, amax)


def min(x: Tensor, dim=None, keepdim: bool = False):
    if isinstance(dim, Tensor):
        return minimum(x, dim)
    if dim is None:
        return amin(x)
    return _select(x, dim, keepdim, argmin, amin)


def all(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return eq(amin(to(ne(x, 0), backend.int64), dim, keepdim), 1)


def any(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return eq(amax(to(ne(x, 0), backend.int64), dim, keepdim), 1)


def var(x: Tensor, dim=None, unbiased: bool = True, keepdim: bool = False, correction=None) -> Tensor:
    x = _floating(x)
    axes = _reduce_axes(x, dim)
    count = math.prod(x.shape[a] for a in axes)
    ddof = (1 if unbiased else 0) if correction is None else correction
    centered = sub(x, mean(x, axes, keepdim=True))
    return div(sum(mul(centered, centered), axes, keepdim), builtins.max(count - ddof, 0))


def _root(v: Tensor, root) -> Tensor:
    """``root(v)`` (a sqrt or p-th root of a non-negative reduction) whose gradient is 0, not NaN, where v == 0:
    PyTorch's std and norm use that subgradient (the root's own derivative there is infinite)."""
    zero = eq(v, 0)
    return where(zero, 0.0, root(where(zero, 1.0, v)))


def std(x: Tensor, dim=None, unbiased: bool = True, keepdim: bool = False, correction=None) -> Tensor:
    return _root(var(x, dim, unbiased, keepdim, correction), Tensor.sqrt)


def norm(x: Tensor, p=2, dim=None, keepdim: bool = False) -> Tensor:
    if p == 2:
        return _root(sum(mul(x, x), dim, keepdim), Tensor.sqrt)
    if p == 1:
        return sum(x.abs(), dim, keepdim)
    return _root(sum(pow(x.abs(), p), dim, keepdim), lambda v: pow(v, 1.0 / p))


def _empty_along(x: Tensor, dim) -> bool:
    return x.ndim > 0 and x.shape[_axes(x, dim)[0]] == 0


def _shifted(x: Tensor, dim) -> Tensor:
    """x minus its detached max along dim, so exp cannot overflow (softmax does not depend on the shift).
    An empty dim has no max, and nothing to shift."""
    return x if _empty_along(x, dim) else sub(x, detach(amax(x, dim, keepdim=True)))


def softmax(x: Tensor, dim: int) -> Tensor:
    """exp(x - max) / sum(exp(x - max)): the max is detached (softmax does not depend on the shift)."""
    e = _shifted(_floating(x), dim).exp()
    return div(e, sum(e, dim, keepdim=True))


def log_softmax(x: Tensor, dim: int) -> Tensor:
    shifted = _shifted(_floating(x), dim)
    return sub(shifted, sum(shifted.exp(), dim, keepdim=True).log())


def logsumexp(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    x = _floating(x)
    if _empty_along(x, dim):  # the sum of no terms: log(0) = -inf, as in PyTorch
        return sum(x.exp(), dim, keepdim).log()
    m = detach(amax(x, dim, keepdim=True))
    out = add(sum(sub(x, m).exp(), dim, keepdim=True).log(), m)
    return out if keepdim else squeeze(out, dim)


# ---------------------------------------------------------------- movement


def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def reshape(x: Tensor, *shape) -> Tensor:
    shape = _shape_arg(shape)
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if shape.count(-1) > 1 or known == 0 or x.numel() % known:
            raise ShapeError(f"reshape: cannot infer the -1 in {list(shape)} for a tensor of shape "
                             f"{list(x.shape)} ({x.numel()} elements).")
        shape = tuple(x.numel() // known if d == -1 else d for d in shape)
    return apply(P.RESHAPE, x, shape=tuple(int(d) for d in shape))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:
        return reshape(x, 1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return reshape(x, x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def squeeze(x: Tensor, dim=None) -> Tensor:
    dims = set(range(x.ndim)) if dim is None else set(_axes(x, dim))
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if not (i in dims and d == 1)))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    ndim = x.ndim + 1
    if not -ndim <= dim < ndim:
        raise IndexError(f"unsqueeze: dim {dim} is out of range for a result with {ndim} dims")
    dim %= ndim
    return reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def permute(x: Tensor, *dims) -> Tensor:
    dims = _shape_arg(dims)
    if len(dims) != x.ndim:
        raise ShapeError(f"permute: got {len(dims)} dims {list(dims)} for a tensor of shape {list(x.shape)}; "
                         "give one entry per dimension.")
    return apply(P.PERMUTE, x, axes=tuple(d % x.ndim for d in dims))


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    axes = list(range(x.ndim))
    d0, d1 = _axes(x, dim0)[0], _axes(x, dim1)[0]
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return apply(P.PERMUTE, x, axes=tuple(axes))


def expand(x: Tensor, *sizes) -> Tensor:
    sizes = _shape_arg(sizes)
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise ShapeError(f"expand: the target {list(sizes)} has fewer dims than the tensor {list(x.shape)}")
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return apply(P.BROADCAST_TO, x, shape=shape)


def broadcast_to(x: Tensor, shape) -> Tensor:
    return expand(x, *shape)


def cat(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty list of tensors")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = backend.promote_types(dtype, t.dtype)
    tensors = [to(t, dtype) for t in tensors]
    if tensors[0].ndim == 0:
        raise ShapeError("cat: zero-dimensional tensors cannot be concatenated; use stack.")
    return apply(P.CONCATENATE, *tensors, axis=_axes(tensors[0], dim)[0])


concat = cat


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ShapeError(f"stack: all tensors must have the same shape, got {sorted(map(list, shapes))}")
    return cat([unsqueeze(t, dim) for t in tensors], dim)


def split(x: Tensor, split_size_or_sections, dim: int = 0) -> tuple[Tensor, ...]:
    ax = _axes(x, dim)[0]
    total = x.shape[ax]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        sizes = [builtins.min(step, total - s) for s in range(0, total, step)]
    else:
        sizes = list(split_size_or_sections)
        if builtins.sum(sizes) != total:
            raise ShapeError(f"split: sections {sizes} sum to {builtins.sum(sizes)}, but dim {ax} of "
                             f"{list(x.shape)} has size {total}")
    out, start = [], 0
    for size in sizes:
        out.append(getitem(x, (slice(None),) * ax + (slice(start, start + size),)))
        start += size
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    size = -(-x.shape[_axes(x, dim)[0]] // chunks)
    return split(x, size, dim)


# ---------------------------------------------------------------- indexing


def _index_key(x: Tensor, key):
    """Split a user key into a static key (slices, ints, None, ...) and index tensors (IndexSlots)."""
    key = key if isinstance(key, tuple) else (key,)
    static, index_tensors = [], []
    for k in key:
        if isinstance(k, Tensor) or isinstance(k, (list, np.ndarray)):
            k = as_tensor(k, like=x)
            if k.dtype == backend.bool_:
                # a boolean mask picks a data-dependent number of elements: make that explicit
                k._escape("nonzero", None)
                positions = k._xp().nonzero(k._data)
                for p in positions:
                    static.append(IndexSlot(len(index_tensors)))
                    index_tensors.append(Tensor._make(p.astype(np.int64), False, None))
                continue
            if k.dtype.kind not in "iu":
                raise IndexError(f"getitem: tensors used as indices must be integer or bool, got {k.dtype}")
            static.append(IndexSlot(len(index_tensors)))
            index_tensors.append(k)
        elif isinstance(k, slice):
            static.append(slice(*(None if v is None else int(_scalar(v) if _scalar(v) is not None else v)
                                  for v in (k.start, k.stop, k.step))))
        elif k is None or k is Ellipsis:
            static.append(k)
        elif _scalar(k) is not None and not isinstance(k, bool):
            static.append(int(_scalar(k)))
        else:
            raise IndexError(f"getitem: unsupported index {k!r} of type {type(k).__name__}; use ints, "
                             "slices, None, ..., or integer/bool tensors")
    return tuple(static), index_tensors


def _pytorch_ints(x: Tensor, static, index_tensors):
    """NumPy counts an int beside an index tensor as one more advanced index, which can move the result's dims
    (for x of shape [2, 3, 4], x[0, :, idx] is [len(idx), 3] in NumPy but [3, len(idx)] in PyTorch, which
    applies ints first). Emulate PyTorch: each int k becomes the slice k:k+1, and the result drops those
    size-1 dims. Returns (key, result shape), or (key, None) when the key needs no change."""
    if not index_tensors or not builtins.any(type(k) is int for k in static):
        return static, None
    consumed = builtins.sum(1 for k in static if k is not None and k is not Ellipsis)
    if consumed > x.ndim:
        return static, None  # too many indices: getitem raises the error
    narrow, wide, wide_shape, dim = [], [], list(x.shape), 0
    for k in static:
        if k is Ellipsis:
            dim += x.ndim - consumed
        elif k is not None:
            if type(k) is int:
                size = x.shape[dim]
                if not -size <= k < size:
                    return static, None  # out of range: getitem raises the error
                narrow.append(slice(k % size, k % size + 1))
                wide.append(slice(None))
                wide_shape[dim] = 2  # this dim shows as 1 in the narrow result and 2 in the wide one
                dim += 1
                continue
            dim += 1
        narrow.append(k)
        wide.append(k)
    zeros = [np.zeros(t.shape, np.int64) for t in index_tensors]
    try:
        narrow_shape = P._dummy(P.Aval(x.shape, x.dtype))[P.build_key(narrow, zeros)].shape
        wide_result = P._dummy(P.Aval(tuple(wide_shape), x.dtype))[P.build_key(wide, zeros)].shape
    except IndexError:
        return static, None
    shape = tuple(n for n, w in zip(narrow_shape, wide_result) if not (n == 1 and w == 2))
    return tuple(narrow), shape


def getitem(x: Tensor, key) -> Tensor:
    static, index_tensors = _index_key(x, key)
    static, shape = _pytorch_ints(x, static, index_tensors)
    out = apply(P.GETITEM, x, *index_tensors, key=static)
    return out if shape is None else apply(P.RESHAPE, out, shape=shape)


def _last_writes(x: Tensor, static, index_tensors):
    """For ``x[key] = v`` with index tensors: a bool mask over the written region keeping, where indices repeat,
    only the last write to each element (NumPy's and, in practice, PyTorch's result); None when none repeat."""
    xp = x._xp()
    key = P.build_key(static, [t._data for t in index_tensors])
    flat = 0
    for i, d in enumerate(x.shape):  # flat position of each written element; the grids are broadcast views
        grid = xp.broadcast_to(xp.arange(d).reshape((-1,) + (1,) * (x.ndim - i - 1)), x.shape)
        flat = flat * d + grid[key]
    flat = xp.asarray(flat).reshape(-1)
    _, last_from_end = xp.unique(flat[::-1], return_index=True)
    if last_from_end.size == flat.size:
        return None
    keep = xp.zeros(flat.size, dtype=bool)
    keep[flat.size - 1 - last_from_end] = True
    return Tensor._make(keep.reshape(xp.asarray(grid[key]).shape), False, None)


def setitem(x: Tensor, key, value) -> None:
    """``x[key] = value`` as an in-place op, differentiable in both x and value: a basic key writes through a view
    of x; a bool mask of x's shape with a scalar value is ``where`` (so a trace keeps the mask a tensor)."""
    if _is_full_mask(x, key) and (isinstance(value, Number) or (isinstance(value, Tensor) and value.numel() == 1)):
        fill = value if isinstance(value, Number) else reshape(to(value, x.device, x.dtype), ())
        inplace(x, lambda base, v: where(key, v, base), fill)
        return
    static, index_tensors = _index_key(x, key)
    if not index_tensors:
        inplace(getitem(x, key), copy_from, value)
        return
    static, shape = _pytorch_ints(x, static, index_tensors)

    def put(base, v):
        region = apply(P.GETITEM, base, *index_tensors, key=static)  # also validates the key
        keep = _last_writes(base, static, index_tensors)
        if isinstance(v, Number):
            v = full_like(region, v)
        else:  # v broadcasts against the PyTorch-shaped region, then takes the shape the key really gives
            v = to(as_tensor(v, like=base), base.dtype)
            target = region.shape if shape is None else shape
            v = expand(v, *target) if v.shape != target else v
            v = reshape(v, region.shape) if v.shape != region.shape else v
        delta = sub(v, region)
        if keep is not None:  # index_add accumulates: repeated positions must add only their last write
            delta = where(keep, delta, 0)
        return apply(P.INDEX_ADD, base, delta, *index_tensors, key=static)

    inplace(x, put, value)


def _is_full_mask(x: Tensor, key) -> bool:
    return isinstance(key, Tensor) and key.dtype == backend.bool_ and key.shape == x.shape


# ---------------------------------------------------------------- diagonal and unfold (views), gather and scatter


def diagonal(x: Tensor, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    """``torch.diagonal``: the diagonal of dims ``dim1`` and ``dim2`` (``offset`` > 0: above the main one, < 0:
    below) as the last dim of a view: writes through it reach ``x``.

        >>> import eager
        >>> m = eager.zeros(2, 3)
        >>> m.diagonal(offset=1).fill_(1).shape, m.tolist()
        ((2,), [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    """
    if x.ndim < 2:
        raise ShapeError(f"diagonal: expects a tensor with at least 2 dims, got shape {list(x.shape)}; a 1-D tensor "
                         "has no diagonal.")
    return apply(P.DIAGONAL, x, offset=int(offset), dim1=_axes(x, dim1)[0], dim2=_axes(x, dim2)[0])


def unfold(x: Tensor, dimension: int, size: int, step: int) -> Tensor:
    """``Tensor.unfold``: every window of ``size`` elements along ``dimension``, ``step`` apart, as a view: that dim
    counts the windows and a new last dim runs within one. Windows that overlap (step < size) share memory, so
    in-place writes to such a view are refused (PyTorch lets them run in an unspecified order).

        >>> import eager
        >>> eager.arange(5.0).unfold(0, 2, 2).tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    return apply(P.UNFOLD, x, dimension=_axes(x, dimension)[0], size=int(size), step=int(step))


def _index_tensor(op: str, index, x: Tensor) -> Tensor:
    index = as_tensor(index, like=x)
    if index._data.dtype.kind not in "iu":
        raise TypeError(f"{op}: the index must be an integer tensor, got {describe(P.Aval(index.shape, index.dtype))}"
                        "; cast it with .long().")
    return index


def _check_index_range(op: str, index: Tensor, size: int, dim: int) -> None:
    """PyTorch's index ops take indices in [0, size) only (negative ones are refused, unlike ``x[i]``): raise
    IndexOutOfRange naming the op. It reads the index (on CuPy, a wait for the device)."""
    try:
        P.check_index_values(op, index._data, size, dim)
    except IndexError as e:
        raise IndexOutOfRange(str(e)) from None


def _one_dim(*tensors: Tensor) -> list[Tensor]:
    """0-d operands as 1-D tensors of one element, as PyTorch's index ops treat them."""
    return [reshape(t, 1) if t.ndim == 0 else t for t in tensors]


def gather(x: Tensor, dim: int, index) -> Tensor:
    """``torch.gather``: ``out[i][j] = x[i][index[i][j]]`` for dim 1; index has x's rank, and the sizes of x
    apart from ``dim``. The gradient adds up where an index repeats.

        >>> import eager
        >>> eager.tensor([[1.0, 2.0], [3.0, 4.0]]).gather(1, eager.tensor([[1, 1], [0, 1]])).tolist()
        [[2.0, 2.0], [3.0, 4.0]]
    """
    index = _index_tensor("gather", index, x)
    shape = index.shape
    x1, index1 = _one_dim(x, index)
    d = _axes(x1, dim)[0]
    _check_index_range("gather", index1, x1.shape[d], d)
    out = apply(P.GATHER, x1, index1, axis=d)
    return out if out.shape == shape else reshape(out, shape)


def _scatter(prim, x: Tensor, dim: int, index, src) -> Tensor:
    index = _index_tensor(prim.name, index, x)
    shape = x.shape
    x1, index1, src1 = _one_dim(x, index, src)
    d = _axes(x1, dim)[0]
    _check_index_range(prim.name, index1, x1.shape[d], d)
    out = apply(prim, x1, index1, src1, axis=d)
    return out if out.shape == shape else reshape(out, shape)


def scatter(x: Tensor, dim: int, index, src=None, *, value=None) -> Tensor:
    """``torch.scatter``: x with ``out[i][index[i][j]] = src[i][j]`` for dim 1 (src a tensor of x's dtype, or a
    number: ``scatter(x, dim, index, 2.0)`` or ``value=2.0``). Where an index repeats, the last write lands
    (PyTorch leaves that unspecified). The gradient of src is ``gather(grad, index)``; x's is grad with the
    written positions zeroed.

        >>> import eager
        >>> eager.zeros(3).scatter(0, eager.tensor([2, 0, 2]), eager.tensor([1.0, 2.0, 3.0])).tolist()
        [2.0, 0.0, 3.0]
    """
    if src is None or isinstance(src, Number):
        if (src is None) == (value is None):
            raise TypeError("scatter: give src (a tensor) or value (a number), one of them.")
        fill = src if value is None else value
        index = _index_tensor("scatter", index, x)
        src = full(index.shape, fill, dtype=x.dtype, device=x.device)
    elif value is not None:
        raise TypeError("scatter: give src (a tensor) or value (a number), not both.")
    return _scatter(P.SCATTER, x, dim, index, as_tensor(src, like=x))


def scatter_add(x: Tensor, dim: int, index, src) -> Tensor:
    """``torch.scatter_add``: x with ``out[i][index[i][j]] += src[i][j]`` for dim 1; repeated indices add up.

        >>> import eager
        >>> eager.zeros(2).scatter_add(0, eager.tensor([1, 1, 0]), eager.tensor([1.0, 2.0, 3.0])).tolist()
        [3.0, 3.0]
    """
    return _scatter(P.SCATTER_ADD, x, dim, index, as_tensor(src, like=x))


def _vector_index(op: str, x: Tensor, dim: int, index) -> tuple[int, Tensor]:
    """(dim, index as a 1-D tensor) for index_select and index_add, after PyTorch's checks."""
    index = _index_tensor(op, index, x)
    if index.ndim > 1:
        raise ShapeError(f"{op}: the index must be 1-D (or 0-d), got shape {list(index.shape)}.")
    d = _axes(x, dim)[0]
    index = reshape(index, -1) if index.ndim == 0 else index
    _check_index_range(op, index, x.shape[d] if x.ndim else 1, d)
    return d, index


def index_select(x: Tensor, dim: int, index) -> Tensor:
    """``torch.index_select``: the entries ``index`` (1-D) of dim ``dim``; the gradient adds up repeated indices.

        >>> import eager
        >>> eager.tensor([[1.0, 2.0], [3.0, 4.0]]).index_select(1, eager.tensor([1, 1, 0])).tolist()
        [[2.0, 2.0, 1.0], [4.0, 4.0, 3.0]]
    """
    d, index = _vector_index("index_select", x, dim, index)
    if x.ndim == 0:  # PyTorch: the one element, once
        if index.shape[0] != 1:
            raise ShapeError(f"index_select: a 0-d tensor takes an index of one value, got {index.shape[0]}.")
        return reshape(x, ())
    return apply(P.GETITEM, x, index, key=(slice(None),) * d + (IndexSlot(0),))


def index_add(x: Tensor, dim: int, index, source, *, alpha=1) -> Tensor:
    """``torch.index_add``: x with ``alpha * source`` added at the entries ``index`` (1-D) of dim ``dim``; repeated
    indices add up. source has x's shape but ``len(index)`` along ``dim``.

        >>> import eager
        >>> eager.zeros(3).index_add(0, eager.tensor([0, 2, 0]), eager.tensor([1.0, 2.0, 3.0])).tolist()
        [4.0, 0.0, 2.0]
    """
    d, index = _vector_index("index_add", x, dim, index)
    source = as_tensor(source, like=x)
    if source.dtype != x.dtype:
        raise TypeError(f"index_add: source ({source.dtype}) must have the dtype of the input ({x.dtype}); cast it "
                        "with .to(x.dtype).")
    want = x.shape[:d] + (index.shape[0],) + x.shape[d + 1:] if x.ndim else ()
    if source.shape != want:
        raise ShapeError(f"index_add: source of shape {list(source.shape)} must have the input's shape "
                         f"{list(x.shape)} with dim {d} of size len(index) = {index.shape[0]}: {list(want)}.")
    if x.ndim == 0:
        return add(x, source if alpha == 1 else mul(source, alpha))
    if alpha != 1:
        source = mul(source, alpha)
        if source.dtype != x.dtype:
            raise TypeError(f"index_add: alpha={alpha!r} turns the {x.dtype} source into {source.dtype}; use an "
                            "alpha of the input's kind.")
    return apply(P.INDEX_ADD, x, source, index, key=(slice(None),) * d + (IndexSlot(0),))


# ---------------------------------------------------------------- matmul


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with NumPy/PyTorch rules: 1-D operands are promoted and the dim removed after."""
    a, b = _operands(as_tensor(a) if not isinstance(a, Tensor) else a, as_tensor(b) if not isinstance(b, Tensor)
                     else b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: both arguments must be at least 1-D, got shapes {list(a.shape)} and "
                         f"{list(b.shape)}; use * for scalars.")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:  # checked here to name the user's shapes, not the 2-D ones
        raise ShapeError(f"matmul: shapes {P.Aval(a.shape, a.dtype)} and {P.Aval(b.shape, b.dtype)} do not fit: "
                         f"the last dim of the first ({a.shape[-1]}) must equal the "
                         f"{'second-to-last' if b.ndim > 1 else 'only'} dim of the second "
                         f"({b.shape[-2 if b.ndim > 1 else 0]}). Transpose or reshape an operand.")
    a2 = unsqueeze(a, 0) if a.ndim == 1 else a
    b2 = unsqueeze(b, 1) if b.ndim == 1 else b
    out = apply(P.MATMUL, a2, b2)
    if a.ndim == 1:
        out = squeeze(out, -2)
    if b.ndim == 1:
        out = squeeze(out, -1)
    return out


mm = matmul


# ---------------------------------------------------------------- floor division, remainder, rounding modes


def _integer_operands(a, b):
    """PyTorch's promotion for ``//`` and ``%``, bool counted as int64 (NumPy would make int8)."""
    a, b = _operands(a, b)
    a = to(a, backend.int64) if isinstance(a, Tensor) and a._data.dtype == backend.bool_ else a
    b = to(b, backend.int64) if isinstance(b, Tensor) and b._data.dtype == backend.bool_ else b
    return _operands(a, b)


def floor_divide(a, b) -> Tensor:
    """``a // b``: the quotient rounded down (Python's and PyTorch's), for integers and floats; integer division by
    zero raises ``ZeroDivisionError`` (as an ``OpError``). It has no gradient (PyTorch defines none either).

        >>> import eager
        >>> (eager.tensor([7, -7]) // 2).tolist(), (eager.tensor([7.5]) // -2).tolist()
        ([3, -4], [-4.0])
    """
    return apply(P.FLOOR_DIVIDE, *_integer_operands(a, b))


def remainder(a, b) -> Tensor:
    """``a % b``: ``a - b * floor(a / b)``, with the sign of the divisor (Python's and PyTorch's).

        >>> import eager
        >>> (eager.tensor([7, -7]) % 3).tolist()
        [1, 2]
    """
    return apply(P.REMAINDER, *_integer_operands(a, b))


def floor(x: Tensor) -> Tensor:
    """``torch.floor``: round down (integer tensors as they are); the gradient is zero, as in PyTorch."""
    return apply(P.FLOOR, x)


def ceil(x: Tensor) -> Tensor:
    """``torch.ceil``: round up (integer tensors as they are)."""
    return apply(P.CEIL, x)


def trunc(x: Tensor) -> Tensor:
    """``torch.trunc``: round toward zero (integer tensors as they are)."""
    return apply(P.TRUNC, x)


def round(x: Tensor) -> Tensor:  # noqa: A001  (torch.round)
    """``torch.round``: to the nearest integer, halves to even (PyTorch's and NumPy's rule).

        >>> import eager
        >>> eager.tensor([0.5, 1.5, -2.7]).round().tolist()
        [0.0, 2.0, -3.0]
    """
    return apply(P.ROUND, x)


def _trunc_divide(a, b) -> Tensor:
    """The quotient rounded toward zero: trunc(a / b) for floats; for integers the floor quotient, one up where it
    was rounded down below zero (exact, no float round trip)."""
    a, b = _integer_operands(a, b)
    ref = a if isinstance(a, Tensor) else b
    if ref._data.dtype.kind == "f":
        return apply(P.TRUNC, div(a, b))
    q = floor_divide(a, b)
    negative = [lt(v, 0) if isinstance(v, Tensor) else v < 0 for v in (a, b)]
    rounded_down = bitwise_and(ne(remainder(a, b), 0), ne(*negative))  # an inexact quotient below zero
    return where(rounded_down, add(q, 1), q)


def divide(a, b, *, rounding_mode: str | None = None) -> Tensor:
    """``torch.div(a, b, rounding_mode=...)``: true division (None), rounded toward zero ("trunc") or down
    ("floor", which is ``a // b``); the rounded quotients keep integer dtypes.

        >>> import eager
        >>> eager.div(eager.tensor([7, -7]), 2, rounding_mode="trunc").tolist()
        [3, -3]
    """
    if rounding_mode is None:
        return div(a, b)
    if rounding_mode == "floor":
        return floor_divide(a, b)
    if rounding_mode == "trunc":
        return _trunc_divide(a, b)
    raise ValueError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found {rounding_mode!r}.")


# ---------------------------------------------------------------- triangles, cumulative ops, sorting


def _triangle(op: str, x: Tensor, diagonal: int, lower: bool) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"{op}: input tensor must have at least 2 dimensions, got shape {list(x.shape)}.")
    n, m = x.shape[-2:]
    keep = np.tri(n, m, k=diagonal, dtype=bool) if lower else ~np.tri(n, m, k=diagonal - 1, dtype=bool)
    from eager.creation import tensor
    return where(tensor(keep, device=x.device), x, zeros_like(x))


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    """``torch.tril``: the lower triangle of the last two dims (``diagonal`` > 0 keeps that many above it), the rest 0;
    one ``where`` against a constant mask, so a causal mask fuses into its neighbours.

        >>> import eager
        >>> eager.ones(2, 3).tril().tolist()
        [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    """
    return _triangle("tril", x, int(diagonal), True)


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    """``torch.triu``: the upper triangle of the last two dims (``diagonal`` > 0 drops that many more), the rest 0."""
    return _triangle("triu", x, int(diagonal), False)


def cumsum(x: Tensor, dim: int, dtype=None) -> Tensor:
    """``torch.cumsum``: running sums along ``dim`` (integers and bools in int64); the gradient sums from the end.

        >>> import eager
        >>> eager.tensor([1, 2, 3]).cumsum(0).tolist()
        [1, 3, 6]
    """
    x = x if dtype is None else to(x, dtype)
    return apply(P.CUMSUM, x, axis=_axes(x, dim)[0])


def cumprod(x: Tensor, dim: int, dtype=None) -> Tensor:
    """``torch.cumprod``: running products along ``dim``; the gradient is exact where the input has zeros."""
    x = x if dtype is None else to(x, dtype)
    return apply(P.CUMPROD, x, axis=_axes(x, dim)[0])


SortResult = namedtuple("SortResult", ["values", "indices"])
TopkResult = namedtuple("TopkResult", ["values", "indices"])


def _order(x: Tensor, dim: int, descending: bool) -> tuple[Tensor, Tensor, int]:
    """(x as at least 1-D, its stable order along dim, the dim): ties keep their order, NaN sorts as the largest."""
    x1 = reshape(x, 1) if x.ndim == 0 else x
    d = _axes(x1, dim)[0]
    return x1, apply(P.ARGSORT, x1, axis=d, descending=bool(descending)), d


def argsort(x: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    """``torch.argsort``: the indices that sort ``dim`` (always a stable sort here: ties keep their order)."""
    _, order, _ = _order(x, dim, descending)
    return order if x.ndim else reshape(order, ())


def sort(x: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> SortResult:
    """``torch.sort``: (values, indices) along ``dim``, stable; the values' gradient goes back through the indices.

        >>> import eager
        >>> eager.tensor([3.0, 1.0, 2.0]).sort(descending=True).indices.tolist()
        [0, 2, 1]
    """
    x1, order, d = _order(x, dim, descending)
    values = apply(P.GATHER, x1, order, axis=d)
    if not x.ndim:
        return SortResult(reshape(values, ()), reshape(order, ()))
    return SortResult(values, order)


def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> TopkResult:
    """``torch.topk``: the ``k`` largest (or smallest) entries along ``dim`` and their indices, always in sorted order
    (ties: the earlier index first).

        >>> import eager
        >>> eager.tensor([1.0, 3.0, 3.0, 2.0]).topk(2).indices.tolist()
        [1, 2]
    """
    x1, order, d = _order(x, dim, largest)
    if not 0 <= k <= x1.shape[d]:
        raise IndexError(f"topk: k ({k}) is out of range for dim {d} of size {x1.shape[d]}.")
    picked = getitem(order, (slice(None),) * d + (slice(0, int(k)),))
    values = apply(P.GATHER, x1, picked, axis=d)
    if not x.ndim and k == 1:
        return TopkResult(reshape(values, ()), reshape(picked, ()))
    return TopkResult(values, picked)


# ---------------------------------------------------------------- einsum, bmm, outer


def _einsum_letters(equation: str, shapes: list[tuple]) -> str:
    """An explicit equation without "...": each operand's ellipsis dims get letters of their own (right-aligned
    across operands, as broadcasting aligns them), and an implicit output lists them, then the letters that occur
    once, sorted (NumPy's and PyTorch's rule)."""
    eq = equation.replace(" ", "")
    inputs, arrow, output = eq.partition("->")
    subs = inputs.split(",")
    if len(subs) != len(shapes):
        raise ValueError(f"einsum(): {equation!r} names {len(subs)} operands, got {len(shapes)}.")
    used = set(eq) - set(",->.")
    if builtins.any(not c.isalpha() for c in used):
        raise ValueError(f"einsum(): subscripts must be letters, got {equation!r}.")
    spare = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used]
    widest = builtins.max([len(shape) - len(s.replace("...", "")) for s, shape in zip(subs, shapes) if "..." in s],
                          default=0)
    ell = "".join(spare[:widest])
    out_subs = []
    for s, shape in zip(subs, shapes):
        if "..." in s:
            n = len(shape) - len(s.replace("...", ""))
            if n < 0:
                raise ValueError(f"einsum(): subscripts {s!r} give more dims than the operand's {len(shape)}.")
            s = s.replace("...", ell[widest - n:])
        out_subs.append(s)
    if arrow:
        out = output.replace("...", ell)
    else:
        counts = {c: "".join(out_subs).count(c) for c in set("".join(out_subs)) - set(ell)}
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1))
    return ",".join(out_subs) + "->" + out


def einsum(equation: str, *operands) -> Tensor:
    """``torch.einsum``: sums of products over the subscripts of ``equation`` ("ij,jk->ik"; "..." and an implicit
    output as in PyTorch; operands as arguments or one list). Ellipsis dims of size 1 broadcast. The gradient of
    each operand is another einsum.

        >>> import eager
        >>> eager.einsum("ij,j->i", eager.ones(2, 3), eager.arange(3.0)).tolist()
        [3.0, 3.0]
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise ValueError("einsum(): must provide at least one operand.")
    ts = [as_tensor(o) for o in operands]
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = backend.promote_types(dtype, t.dtype)
    ts = [to(t, dtype) for t in ts]
    full = _einsum_letters(equation, [t.shape for t in ts])
    subs, _ = P.parse_einsum(full)
    ts = _broadcast_ellipsis(ts, subs)
    return apply(P.EINSUM, *ts, equation=full)


def _broadcast_ellipsis(ts: list[Tensor], subs: list[str]) -> list[Tensor]:
    """Expand size-1 dims to the size another operand gives the same letter (NumPy's einsum broadcasts them)."""
    sizes: dict[str, int] = {}
    for s, t in zip(subs, ts):
        for c, n in zip(s, t.shape):
            if n != 1:
                sizes.setdefault(c, n)
    out = []
    for s, t in zip(subs, ts):
        want = tuple(sizes.get(c, n) if n == 1 else n for c, n in zip(s, t.shape))
        out.append(expand(t, *want) if len(s) == t.ndim and want != t.shape else t)
    return out


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm``: batched matrix products of [B, n, m] and [B, m, p] (no broadcasting, as in PyTorch)."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ShapeError(f"bmm: expected [B, n, m] and [B, m, p] tensors, got shapes {list(a.shape)} and "
                         f"{list(b.shape)}; use matmul to broadcast.")
    return matmul(a, b)


def outer(a: Tensor, b: Tensor) -> Tensor:
    """``torch.outer``: ``out[i, j] = a[i] * b[j]`` for 1-D a and b."""
    if a.ndim != 1 or b.ndim != 1:
        raise ShapeError(f"outer: expects two 1-D tensors, got shapes {list(a.shape)} and {list(b.shape)}.")
    return mul(reshape(a, -1, 1), reshape(b, 1, -1))


# ---------------------------------------------------------------- repeat, flip, roll, unbind


def repeat(x: Tensor, *sizes) -> Tensor:
    """``Tensor.repeat``: tile ``x`` ``sizes[i]`` times along dim i (more sizes than dims add leading dims); one
    broadcast between two reshapes, so the gradient sums the tiles.

        >>> import eager
        >>> eager.tensor([1, 2]).repeat(2, 2).tolist()
        [[1, 2, 1, 2], [1, 2, 1, 2]]
    """
    sizes = tuple(int(s) for s in _shape_arg(sizes))
    if len(sizes) < x.ndim:
        raise ShapeError(f"repeat: number of dimensions of repeat dims ({len(sizes)}) can not be smaller than the "
                         f"number of dimensions of the tensor ({x.ndim}, shape {list(x.shape)}).")
    if builtins.any(s < 0 for s in sizes):
        raise ValueError(f"repeat: the repeats {list(sizes)} must be non-negative.")
    shape = (1,) * (len(sizes) - x.ndim) + tuple(x.shape)
    inter = tuple(v for n in shape for v in (1, n))
    tiled = tuple(v for r, n in zip(sizes, shape) for v in (r, n))
    return reshape(expand(reshape(x, inter), *tiled), tuple(r * n for r, n in zip(sizes, shape)))


def flip(x: Tensor, dims) -> Tensor:
    """``torch.flip``: reverse the order along ``dims``; a new tensor, as in PyTorch (not a view)."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    axes = _axes(x, dims)
    if len(axes) != len(dims):
        raise ValueError(f"flip: dims {list(dims)} name a dim more than once.")
    key = tuple(slice(None, None, -1) if d in axes else slice(None) for d in range(x.ndim))
    return clone(getitem(x, key)) if x.ndim else clone(x)


def fliplr(x: Tensor) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"fliplr: input must be at least 2-D, got shape {list(x.shape)}.")
    return flip(x, 1)


def flipud(x: Tensor) -> Tensor:
    if x.ndim < 1:
        raise ShapeError("flipud: input must be at least 1-D.")
    return flip(x, 0)


def roll(x: Tensor, shifts, dims=None) -> Tensor:
    """``torch.roll``: shift elements along ``dims`` cyclically (without dims: over the flattened tensor, shape kept).

        >>> import eager
        >>> eager.arange(4).roll(1).tolist()
        [3, 0, 1, 2]
    """
    if dims is None:
        if not isinstance(shifts, int) and len(shifts) != 1:
            raise ValueError(f"roll: without dims, shifts must be one number, got {shifts!r}.")
        shift = shifts if isinstance(shifts, int) else shifts[0]
        return reshape(roll(reshape(x, -1), shift, 0), x.shape)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(shifts) != len(dims):
        raise ValueError(f"roll: shifts {list(shifts)} and dims {list(dims)} must have the same length.")
    out = x
    for shift, dim in zip(shifts, dims):
        d = _axes(x, dim)[0]
        n = x.shape[d]
        s = int(shift) % n if n else 0
        if s:
            head = getitem(out, (slice(None),) * d + (slice(n - s, None),))
            tail = getitem(out, (slice(None),) * d + (slice(0, n - s),))
            out = cat([head, tail], d)
    return out if out is not x else clone(x)


def unbind(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    """``torch.unbind``: the slices along ``dim``, that dim removed (views, as in PyTorch)."""
    if x.ndim == 0:
        raise IndexError("unbind: a 0-d tensor has no dim to unbind.")
    d = _axes(x, dim)[0]
    return tuple(getitem(x, (slice(None),) * d + (i,)) for i in range(x.shape[d]))
