"""The one table of primitives. Every mode (eager, traced, compiled) reads it.

A primitive row holds, side by side, everything the project knows about one op:

- ``impl(xp, *arrays, **params)``: the computation over an array namespace (numpy or cupy);
- ``shape_rule(*avals, **params) -> Aval``: output shape and dtype from input shapes and dtypes
  (a Python scalar input is passed as itself: it is weakly typed and takes the tensor's dtype);
- ``vjp(g, out, *inputs, **params) -> tuple``: the input gradients, written with Tensor ops so that
  backward passes are themselves recordable (tracing, higher-order gradients);
- ``c_expr``: for elementwise ops, the C/CUDA expression (``{0}``, ``{1}``: operands) shared by codegen; the
  C functions it calls (``exp``, ``erf``, ...) are what the C vector prelude, the scratch logic and the SIMT
  emulator's ``using`` line read;
- ``lowering``: how the compiler runs the op (``kernel``: fused into a generated kernel; ``view``: only changes
  a view; ``library``: BLAS; ``host``: NumPy between kernels), derived from ``kind`` unless the row says;
- ``decomposition``: for a fused eager row (``cross_entropy``), the composite a tracer records instead;
- ``api``: for rows whose eager wrappers only forward (``eager.exp``, ``Tensor.exp``, ``Tensor.exp_``), how:
  ``float`` promotes integer tensors to the default float first (as ``torch.exp``), ``same`` keeps the dtype.

Everything else (mean, softmax, layer_norm, relu, ...) is a composite in ``eager.ops`` or
``eager.nn.functional``.

    >>> PRIMITIVES["mul"].c_expr
    '({0} * {1})'
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from eager.backend import bool_, int64, short_name

ELEMENTWISE, REDUCTION, MOVEMENT, CONTRACTION, OTHER = "elementwise", "reduction", "movement", "contraction", "other"
KERNEL, VIEW, LIBRARY, HOST = "kernel", "view", "library", "host"  # Primitive.lowering
API_FLOAT, API_SAME = "float", "same"  # Primitive.api


class Aval(NamedTuple):
    """The abstract value of a tensor: what shape rules see and what IR nodes record."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __str__(self) -> str:
        return f"{short_name(self.dtype)}[{','.join(map(str, self.shape))}]"


class ShapeError(ValueError):
    """An op was given inputs whose shapes or dtypes do not fit; the message names op, shapes and a fix."""


@dataclass(frozen=True, eq=False, slots=True)
class Primitive:
    name: str
    kind: str
    impl: Callable[..., Any]
    shape_rule: Callable[..., Aval]
    vjp: Callable[..., tuple] | None = None
    c_expr: str | None = None
    saves_out: bool = False  # the VJP reads the output (so backward checks the output was not modified)
    random: bool = False  # draws from the device's default generator: never merged, folded away or dropped
    index_from: int | None = None  # inputs from here on are index arrays into input 0 (bounds-checked on CuPy)
    lowering: str | None = None  # KERNEL | VIEW | LIBRARY | HOST; None: derived from kind (see _default_lowering)
    api: str | None = None  # API_FLOAT | API_SAME: eager.<name>, Tensor.<name> and Tensor.<name>_ are generated
    view: bool = False  # the output may share input 0's memory (a view: in-place writes to it reach input 0)
    # the inputs whose VALUES the VJP reads (backward checks that they were not written in place since): an int
    # i, or a pair (i, j): input i, when input j requires grad (mul reads b only for a's gradient)
    reads: tuple = ()
    # eager's fused path for a composite: eager runs this row (one call, one autograd node), while a recorder (the
    # tracer) is given ``decomposition(*inputs, **params)``, the same composite in other rows, so static graphs keep
    # the small ops the compiler fuses
    decomposition: Callable | None = None
    backward_name: str = field(init=False)  # "IndexAddBackward": computed once, read on every recorded op
    saved: tuple = field(init=False)  # ``reads`` as (input, needs-grad input or -1 for always): read per op

    def __post_init__(self):
        object.__setattr__(self, "backward_name",
                           "".join(part.capitalize() for part in self.name.split("_")) + "Backward")
        object.__setattr__(self, "saved", tuple((r, -1) if isinstance(r, int) else tuple(r) for r in self.reads))
        if self.lowering is None:
            object.__setattr__(self, "lowering", _default_lowering(self.kind, self.c_expr))

    def __repr__(self) -> str:
        return f"Primitive({self.name})"


def _default_lowering(kind: str, c_expr: str | None) -> str:
    """Elementwise ops with a C expression fuse into kernels, matmul is a library call, the rest run on the host;
    reductions and movement ops that kernels handle say so in their rows."""
    if kind == ELEMENTWISE and c_expr is not None:
        return KERNEL
    return LIBRARY if kind == CONTRACTION else HOST


PRIMITIVES: dict[str, Primitive] = {}


def define(name, kind, impl, shape_rule, vjp=None, c_expr=None, saves_out=False, random=False,
           index_from=None, lowering=None, api=None, view=False, reads=(), decomposition=None) -> Primitive:
    """Add a row to the table (``PRIMITIVES[name]``) and return it."""
    prim = Primitive(name, kind, impl, shape_rule, vjp, c_expr, saves_out, random, index_from, lowering, api, view,
                     reads, decomposition)
    PRIMITIVES[name] = prim
    return prim


def describe(aval) -> str:
    return str(aval) if isinstance(aval, Aval) else repr(aval)


# ---------------------------------------------------------------- shape rules


def _tensor_avals(avals):
    return [a for a in avals if isinstance(a, Aval)]


def broadcast_shapes(op: str, *avals) -> tuple[int, ...]:
    shapes = [a.shape for a in _tensor_avals(avals)]
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(
            f"{op}: shapes {', '.join(describe(a) for a in avals)} cannot be broadcast together: "
            "trailing dimensions must be equal or 1. Reshape or unsqueeze one operand so they line up."
        ) from None


def _same_dtype(op: str, avals) -> np.dtype:
    dtypes = {a.dtype for a in _tensor_avals(avals)}
    if len(dtypes) != 1:
        raise ShapeError(f"{op}: operands have different dtypes ({', '.join(describe(a) for a in avals)}); "
                         "cast one with .to(dtype) first (the eager operators promote automatically).")
    return dtypes.pop()


def _elementwise_rule(op: str, result_dtype=None):
    def rule(*avals):
        shape = broadcast_shapes(op, *avals)
        return Aval(shape, result_dtype or _same_dtype(op, avals))
    return rule


def _float_rule(op: str):
    def rule(a):
        if a.dtype.kind != "f":
            raise ShapeError(f"{op}: expects a floating-point tensor, got {a}; call .float() first.")
        return a
    return rule


def _normalize_axes(op, axes, ndim):
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ShapeError(f"{op}: dim {ax} is out of range for a tensor with {ndim} dims "
                             f"(valid: {-ndim}..{ndim - 1}).")
        out.append(ax % ndim if ndim else 0)
    return tuple(out)


def _reduce_rule(op: str, dtype=None):
    def rule(a, *, axes, keepdims):
        axes = _normalize_axes(op, axes, len(a.shape)) if a.shape else ()  # a 0-d tensor reduces over nothing
        if op == "max" and any(a.shape[ax] == 0 for ax in axes):
            raise ShapeError(f"{op}: cannot reduce over an empty dimension of {a} (dims {axes}).")
        shape = tuple(1 if i in axes else d for i, d in enumerate(a.shape) if keepdims or i not in axes)
        out_dtype = dtype or (int64 if a.dtype.kind in "bi" and op == "sum" else a.dtype)
        return Aval(shape, out_dtype)
    return rule


def _argmax_rule(a, *, axis, keepdims):
    if axis is None:
        return Aval((1,) * len(a.shape) if keepdims else (), int64)
    (ax,) = _normalize_axes("argmax", (axis,), len(a.shape))
    shape = tuple(1 if i == ax else d for i, d in enumerate(a.shape) if keepdims or i != ax)
    return Aval(shape, int64)


def _reshape_rule(a, *, shape):
    if math.prod(shape) != math.prod(a.shape):
        raise ShapeError(f"reshape: cannot reshape {a} ({math.prod(a.shape)} elements) to "
                         f"{list(shape)} ({math.prod(shape)} elements); the element counts must match.")
    return Aval(tuple(shape), a.dtype)


def _broadcast_to_rule(a, *, shape):
    try:
        ok = tuple(np.broadcast_shapes(a.shape, tuple(shape))) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"expand/broadcast_to: cannot broadcast {a} to {list(shape)}: each dim must "
                         "equal the target or be 1, and the target may only add leading dims.")
    return Aval(tuple(shape), a.dtype)


def _permute_rule(a, *, axes):
    if sorted(axes) != list(range(len(a.shape))):
        raise ShapeError(f"permute: {list(axes)} is not a permutation of the {len(a.shape)} dims of {a}.")
    return Aval(tuple(a.shape[i] for i in axes), a.dtype)


def _matmul_rule(a, b):
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul: operands have different dtypes ({a} @ {b}); cast one with .to(dtype).")
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ShapeError(f"matmul primitive needs at least 2-D operands, got {a} @ {b}.")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: shapes {a} and {b} do not fit: the last dim of the first "
                         f"({a.shape[-1]}) must equal the second-to-last dim of the second ({b.shape[-2]}).")
    batch = broadcast_shapes("matmul (batch dims)", Aval(a.shape[:-2], a.dtype), Aval(b.shape[:-2], b.dtype))
    return Aval(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _concat_rule(*avals, axis):
    first = avals[0]
    ndim = len(first.shape)
    (ax,) = _normalize_axes("cat", (axis,), ndim)
    for a in avals[1:]:
        if a.dtype != first.dtype or len(a.shape) != ndim or any(
                d != e for i, (d, e) in enumerate(zip(a.shape, first.shape)) if i != ax):
            raise ShapeError(f"cat: tensors {', '.join(map(str, avals))} must have the same dtype and "
                             f"equal sizes in every dim except dim {ax}.")
    size = sum(a.shape[ax] for a in avals)
    return Aval(first.shape[:ax] + (size,) + first.shape[ax + 1:], first.dtype)


class IndexSlot(NamedTuple):
    """Marks where an index tensor (a further primitive input) sits inside a getitem key."""

    position: int


def build_key(key, index_arrays):
    """Put the index arrays back into a static key (slots -> arrays)."""
    return tuple(index_arrays[k.position] if isinstance(k, IndexSlot) else k for k in key)


def _dummy(aval):
    """A zero-strided array of the right shape: evaluating a key on it gives the result shape for free."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, aval.dtype), aval.shape, (0,) * len(aval.shape))


def _getitem_rule(a, *index_avals, key):
    indices = [np.zeros(i.shape, i.dtype) for i in index_avals]
    try:
        shape = _dummy(a)[build_key(key, indices)].shape
    except IndexError as e:
        raise ShapeError(f"getitem: index {format_key(key)} does not fit a tensor {a}: {e}; indices along a dim "
                         "of size n must lie in [-n, n).") from None
    return Aval(shape, a.dtype)


def _index_add_rule(base, values, *index_avals, key):
    target = _getitem_rule(base, *index_avals, key=key)
    if values.shape != target.shape or values.dtype != base.dtype:
        raise ShapeError(f"index_add: values {values} must match the indexed region {target} of {base}.")
    return base


def _creation_rule(*, shape, dtype, **_):
    return Aval(tuple(shape), dtype)


def format_key(key) -> str:
    def one(k):
        if isinstance(k, slice):
            parts = ["" if v is None else str(v) for v in (k.start, k.stop, k.step)]
            return ":".join(parts[:2]) + (f":{parts[2]}" if k.step is not None else "")
        if k is None:
            return "None"
        if k is Ellipsis:
            return "..."
        if isinstance(k, IndexSlot):
            return f"<index {k.position}>"
        return repr(k)
    return "[" + ", ".join(one(k) for k in key) + "]"


# ---------------------------------------------------------------- gradient helpers (Tensor ops)


def unbroadcast(g, x):
    """Sum a gradient back to the shape of input ``x`` (None when x is a Python scalar)."""
    if not hasattr(x, "shape"):
        return None
    shape = x.shape
    if g.shape == shape:
        return g
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, d in enumerate(shape) if d == 1 and g.shape[i + lead] != 1)
    summed = g.sum(dim=axes, keepdim=True) if axes else g
    return summed.reshape(shape)


def _where(cond, x, y):
    from eager.dispatch import apply
    return apply(WHERE, cond, x, y)


def _inverse(axes):
    inv = [0] * len(axes)
    for i, a in enumerate(axes):
        inv[a] = i
    return tuple(inv)


def _mT(t):
    axes = list(range(t.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return t.permute(*axes)


def _keep_reduced(g, a, axes, keepdims):
    """Reshape a reduction's gradient so it broadcasts against the reduction input."""
    if keepdims:
        return g
    ndim = a.ndim
    axes = {ax % ndim for ax in axes}
    return g.reshape(tuple(1 if i in axes else d for i, d in enumerate(a.shape)))


def _scatter_back(g, a, index_inputs, key):
    from eager.creation import zeros_like
    from eager.dispatch import apply
    return apply(INDEX_ADD, zeros_like(a), g, *index_inputs, key=key)


# ---------------------------------------------------------------- the table

# unary elementwise
NEG = define("neg", ELEMENTWISE, lambda xp, a: -a, lambda a: a, lambda g, out, a: (-g,), "(-{0})", api=API_SAME)
EXP = define("exp", ELEMENTWISE, lambda xp, a: xp.exp(a), _float_rule("exp"),
             lambda g, out, a: (g * out,), "exp({0})", saves_out=True, api=API_FLOAT)
LOG = define("log", ELEMENTWISE, lambda xp, a: xp.log(a), _float_rule("log"),
             lambda g, out, a: (g / a,), "log({0})", api=API_FLOAT, reads=(0,))
SQRT = define("sqrt", ELEMENTWISE, lambda xp, a: xp.sqrt(a), _float_rule("sqrt"),
              lambda g, out, a: (g / (out * 2),), "sqrt({0})", saves_out=True, api=API_FLOAT)
TANH = define("tanh", ELEMENTWISE, lambda xp, a: xp.tanh(a), _float_rule("tanh"),
              lambda g, out, a: (g * (1 - out * out),), "tanh({0})", saves_out=True, api=API_FLOAT)
SIN = define("sin", ELEMENTWISE, lambda xp, a: xp.sin(a), _float_rule("sin"),
             lambda g, out, a: (g * a.cos(),), "sin({0})", api=API_FLOAT, reads=(0,))
COS = define("cos", ELEMENTWISE, lambda xp, a: xp.cos(a), _float_rule("cos"),
             lambda g, out, a: (-(g * a.sin()),), "cos({0})", api=API_FLOAT, reads=(0,))
ABS = define("abs", ELEMENTWISE, lambda xp, a: xp.abs(a), lambda a: a,
             lambda g, out, a: (g * a.sign(),), "fabs({0})", api=API_SAME, reads=(0,))
# max(x, 0) with PyTorch's edges: NaN stays NaN, and the gradient at 0 is 0 (threshold_backward); one row, so an
# eager relu is one call and one autograd node (it was le + where)
RELU = define("relu", ELEMENTWISE, lambda xp, a: xp.maximum(a, 0), lambda a: a,
              lambda g, out, a: (_where(a <= 0, 0.0, g),), "({0} <= 0 ? 0 : {0})", reads=(0,))
SIGN = define("sign", ELEMENTWISE, lambda xp, a: xp.sign(a), lambda a: a,
              lambda g, out, a: (g * 0,), "(({0}) != ({0}) ? ({0}) : (({0}) > 0) - (({0}) < 0))",  # NaN stays NaN
              api=API_SAME)


def _sigmoid_impl(xp, a):
    # exp of a non-positive number only: no overflow warnings for large |a|
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


SIGMOID = define("sigmoid", ELEMENTWISE, _sigmoid_impl, _float_rule("sigmoid"),
                 lambda g, out, a: (g * out * (1 - out),), "(1 / (1 + exp(-{0})))", saves_out=True, api=API_FLOAT)


@functools.cache
def _special_module(namespace: str):
    if namespace == "numpy":
        return importlib.import_module("scipy.special")
    if namespace.startswith("jax"):  # the XLA backend runs the table's impls with jax.numpy
        return importlib.import_module("jax.scipy.special")
    return importlib.import_module("cupyx.scipy.special")


def special(name: str):
    """An impl calling SciPy's special function ``name`` from the array namespace's own SciPy (NumPy: scipy,
    CuPy: cupyx.scipy, jax.numpy: jax.scipy)."""
    def impl(xp, a):
        return getattr(_special_module(xp.__name__), name)(a)
    return impl


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
ERF = define("erf", ELEMENTWISE, special("erf"), _float_rule("erf"),
             lambda g, out, a: (g * (-(a * a)).exp() * _TWO_OVER_SQRT_PI,), "erf({0})", api=API_FLOAT, reads=(0,))
ERFC = define("erfc", ELEMENTWISE, special("erfc"), _float_rule("erfc"),  # 1 - erf, without the cancellation
              lambda g, out, a: (-(g * (-(a * a)).exp() * _TWO_OVER_SQRT_PI),), "erfc({0})", api=API_FLOAT, reads=(0,))


def _ufunc(name: str):
    """The impl of an arithmetic row: the array namespace's ufunc ``name``. ``impl.ufunc`` names it, so an in-place
    update (``eager.ops.inplace``) can run the same ufunc with ``out=`` instead of allocating its result."""
    def impl(xp, a, b):
        return getattr(xp, name)(a, b)
    impl.ufunc = name
    return impl


# binary elementwise (numpy-style implicit broadcasting; gradients are summed back by unbroadcast)
ADD = define("add", ELEMENTWISE, _ufunc("add"), _elementwise_rule("add"),
             lambda g, out, a, b: (unbroadcast(g, a), unbroadcast(g, b)), "({0} + {1})")
SUB = define("sub", ELEMENTWISE, _ufunc("subtract"), _elementwise_rule("sub"),
             lambda g, out, a, b: (unbroadcast(g, a), unbroadcast(-g, b)), "({0} - {1})")
MUL = define("mul", ELEMENTWISE, _ufunc("multiply"), _elementwise_rule("mul"),
             lambda g, out, a, b: (unbroadcast(g * b, a) if _needs(a) else None,
                                   unbroadcast(g * a, b) if _needs(b) else None), "({0} * {1})", reads=((0, 1), (1, 0)))
DIV = define("div", ELEMENTWISE, _ufunc("divide"), _elementwise_rule("div"),
             lambda g, out, a, b: (unbroadcast(g / b, a) if _needs(a) else None,
                                   unbroadcast(-(g * a) / (b * b), b) if _needs(b) else None), "({0} / {1})",
             reads=((0, 1), 1))


def _log_base(a):
    """log(a) for d(a**b)/db: 0 where a == 0 (then a**b is 0 or inf, as PyTorch masks it), NaN where a < 0."""
    if not hasattr(a, "shape"):  # a Python scalar base, as in 2 ** x
        return math.log(a) if a > 0 else (0.0 if a == 0 else math.nan)
    return _where(a < 0, math.nan, _where(a > 0, a, 1).log())


def _pow_vjp(g, out, a, b):
    ga = gb = None
    if _needs(a):  # x ** 0 has gradient 0 everywhere, not 0 * inf at x == 0
        ga = unbroadcast(g * 0 if not hasattr(b, "shape") and b == 0 else g * b * a ** (b - 1), a)
    if _needs(b):
        gb = unbroadcast(g * out * _log_base(a), b)
    return ga, gb


POW = define("pow", ELEMENTWISE, lambda xp, a, b: a ** b, _elementwise_rule("pow"), _pow_vjp, "pow({0}, {1})",
             saves_out=True, reads=(0, (1, 0)))


def _select_vjp(first_wins):
    # ties split the gradient evenly, as PyTorch's maximum/minimum do
    def vjp(g, out, a, b):
        wins = (a > b) if first_wins else (a < b)
        tie = _where(a == b, g * 0.5, 0.0)
        ga = unbroadcast(_where(wins, g, tie), a) if _needs(a) else None
        gb = unbroadcast(_where(wins, 0.0, g - tie), b) if _needs(b) else None
        return ga, gb
    return vjp


MAXIMUM = define("maximum", ELEMENTWISE, lambda xp, a, b: xp.maximum(a, b), _elementwise_rule("maximum"),
                 _select_vjp(True), "(({0} != {0} || {0} > {1}) ? {0} : {1})", reads=(0, 1))
MINIMUM = define("minimum", ELEMENTWISE, lambda xp, a, b: xp.minimum(a, b), _elementwise_rule("minimum"),
                 _select_vjp(False), "(({0} != {0} || {0} < {1}) ? {0} : {1})", reads=(0, 1))

_COMPARISONS = {"eq": ("==", lambda a, b: a == b), "ne": ("!=", lambda a, b: a != b),
                "lt": ("<", lambda a, b: a < b), "le": ("<=", lambda a, b: a <= b),
                "gt": (">", lambda a, b: a > b), "ge": (">=", lambda a, b: a >= b)}
for _name, (_c_op, _fn) in _COMPARISONS.items():
    define(_name, ELEMENTWISE, (lambda fn: lambda xp, a, b: fn(a, b))(_fn),
           _elementwise_rule(_name, result_dtype=bool_), None, f"({{0}} {_c_op} {{1}})")
COMPARISONS = frozenset(_COMPARISONS)  # their Python scalar operand takes the other operand's dtype, not bool


def _bitwise_rule(op: str):
    def rule(*avals):
        shape = broadcast_shapes(op, *avals)
        dtype = _same_dtype(op, avals)
        if dtype.kind not in "biu":
            raise ShapeError(f"{op}: expects integer or bool tensors, got {', '.join(describe(a) for a in avals)}; "
                             "cast with .long() or .bool() first.")
        return Aval(shape, dtype)
    return rule


# bitwise on integers, logical on bool (as PyTorch's &, |, ^, ~); integer results carry no gradient
BITWISE_AND = define("bitwise_and", ELEMENTWISE, lambda xp, a, b: xp.bitwise_and(a, b), _bitwise_rule("bitwise_and"),
                     None, "({0} & {1})")
BITWISE_OR = define("bitwise_or", ELEMENTWISE, lambda xp, a, b: xp.bitwise_or(a, b), _bitwise_rule("bitwise_or"),
                    None, "({0} | {1})")
BITWISE_XOR = define("bitwise_xor", ELEMENTWISE, lambda xp, a, b: xp.bitwise_xor(a, b), _bitwise_rule("bitwise_xor"),
                     None, "({0} ^ {1})")
# x ^ all-ones of its own type: ~x for integers, !x for bool (C's ~ on a bool gives -2, which is true again)
BITWISE_NOT = define("bitwise_not", ELEMENTWISE, lambda xp, a: xp.invert(a), _bitwise_rule("bitwise_not"), None,
                     "({0} ^ (({ctype})-1))")


def _where_rule(c, x, y):
    if not isinstance(c, Aval) or c.dtype != bool_:
        raise ShapeError(f"where: the condition must be a bool tensor, got {describe(c)}; compare first "
                         "(e.g. x > 0).")
    shape = broadcast_shapes("where", c, x, y)
    return Aval(shape, _same_dtype("where", (x, y)) if isinstance(x, Aval) or isinstance(y, Aval) else c.dtype)


def _where_impl(xp, c, x, y):
    # a scalar branch must not widen the tensor branch (NumPy would make where(c, f32, 0.0) float64)
    ref = x if hasattr(x, "dtype") else y
    if xp is np and hasattr(ref, "dtype") and ref.dtype.itemsize in _BITS and \
            max(c.size, getattr(x, "size", 1), getattr(y, "size", 1)) >= BITSELECT_MIN_SIZE:
        return _bitselect(c, x, y, ref.dtype)
    out = xp.where(c, x, y)
    return out.astype(ref.dtype, copy=False) if hasattr(ref, "dtype") else out


# NumPy's where branches per element: on a random condition (every ReLU) it ran 216 us for 128x512 float32,
# against 38 us when the condition was all true. Selecting bits through a mask has no branch (about 40 us).
BITSELECT_MIN_SIZE = 4096
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bitselect(c, x, y, dtype):
    """``np.where(c, x, y)`` in ``dtype``, computed as (x & mask) | (y & ~mask) on the bit patterns."""
    shape = np.broadcast_shapes(np.shape(c), np.shape(x), np.shape(y))
    bits = _BITS[np.dtype(dtype).itemsize]
    mask = np.asarray(c).astype(bits)
    np.negative(mask, out=mask)  # with out=: a 0-d condition stays an array (np.negative would return a scalar)
    out = np.bitwise_and(np.broadcast_to(np.asarray(x, dtype).view(bits), shape), mask)
    np.invert(mask, out=mask)
    rest = np.bitwise_and(np.broadcast_to(np.asarray(y, dtype).view(bits), shape), mask,
                          out=mask if mask.shape == shape else None)
    np.bitwise_or(out, rest, out=out)
    return out.view(dtype)


WHERE = define("where", ELEMENTWISE, _where_impl, _where_rule,
               lambda g, out, c, x, y: (None, unbroadcast(_where(c, g, 0.0), x) if _needs(x) else None,
                                        unbroadcast(_where(c, 0.0, g), y) if _needs(y) else None),
               "({0} ? {1} : {2})", reads=(0,))


def _cast_rule(a, *, dtype):
    return Aval(a.shape, dtype)


CAST = define("cast", ELEMENTWISE, lambda xp, a, *, dtype: a.astype(dtype),
              _cast_rule, lambda g, out, a, *, dtype: (g.to(a.dtype) if a.dtype.kind == "f" else None,),
              "(({ctype}){0})")

# reductions
SUM = define("sum", REDUCTION, lambda xp, a, *, axes, keepdims: xp.sum(a, axis=axes, keepdims=keepdims),
             _reduce_rule("sum"),
             lambda g, out, a, *, axes, keepdims: (_keep_reduced(g, a, axes, keepdims).expand(*a.shape),),
             lowering=KERNEL)


def _max_vjp(g, out, a, *, axes, keepdims):
    # the gradient is shared evenly between tied maxima (PyTorch's amax)
    hit = (a == _keep_reduced(out, a, axes, keepdims)).to(g.dtype)
    return (_keep_reduced(g, a, axes, keepdims) * hit / hit.sum(dim=axes, keepdim=True),)


MAX = define("max", REDUCTION, lambda xp, a, *, axes, keepdims: xp.max(a, axis=axes, keepdims=keepdims),
             _reduce_rule("max"), _max_vjp, saves_out=True, lowering=KERNEL, reads=(0,))
ARGMAX = define("argmax", REDUCTION, lambda xp, a, *, axis, keepdims: xp.argmax(a, axis=axis, keepdims=keepdims),
                _argmax_rule)

# movement
# reshape, broadcast_to and permute only change a view: kernels read their source through it
RESHAPE = define("reshape", MOVEMENT, lambda xp, a, *, shape: xp.reshape(a, shape), _reshape_rule,
                 lambda g, out, a, *, shape: (g.reshape(a.shape),), lowering=VIEW, view=True)
BROADCAST_TO = define("broadcast_to", MOVEMENT, lambda xp, a, *, shape: xp.broadcast_to(a, shape),
                      _broadcast_to_rule, lambda g, out, a, *, shape: (unbroadcast(g, a),), lowering=VIEW, view=True)
PERMUTE = define("permute", MOVEMENT, lambda xp, a, *, axes: xp.transpose(a, axes), _permute_rule,
                 lambda g, out, a, *, axes: (g.permute(*_inverse(axes)),), lowering=VIEW, view=True)
def check_index_bounds(shape, key, idx) -> None:
    """Raise IndexError for an integer index array that is out of range for its dim, as NumPy does. Eager calls
    it for CuPy arrays, whose indexing wraps such an index around instead; it waits for the device (one sync per
    index array), so compiled programs and CUDA-graph replays do not call it and are unchecked on a GPU."""
    consumed = sum(idx[k.position].ndim if isinstance(k, IndexSlot) and idx[k.position].dtype == bool else 1
                   for k in key if k is not None and k is not Ellipsis)
    dim = 0
    for k in key:
        if k is None:
            continue
        if k is Ellipsis:
            dim += len(shape) - consumed
            continue
        if isinstance(k, IndexSlot) and idx[k.position].dtype == bool:
            dim += idx[k.position].ndim
            continue
        if isinstance(k, IndexSlot) and idx[k.position].size:
            arr, size = idx[k.position], shape[dim]
            outside = (arr < -size) | (arr >= size)
            if bool(outside.any()):
                raise IndexError(f"index {int(arr[outside][0])} is out of bounds for axis {dim} with size {size}")
        dim += 1


def _getitem_impl(xp, a, *idx, key):
    if not idx and not any(k is Ellipsis for k in key):
        key = key + (Ellipsis,)  # a basic key then gives a 0-d view, not a copied scalar: x[0].zero_() writes x
    return a[build_key(key, idx)]


GETITEM = define("getitem", MOVEMENT, _getitem_impl, _getitem_rule,
                 lambda g, out, a, *idx, key: (_scatter_back(g, a, idx, key),) + (None,) * len(idx), index_from=1,
                 view=True)


def _index_add_impl(xp, base, values, *idx, key):
    out = base.copy()
    full_key = build_key(key, idx)
    if idx:  # repeated indices must accumulate, which plain `out[key] += v` does not do
        xp.add.at(out, full_key, values)  # CuPy has it too (its older cupyx.scatter_add warns on every call)
    else:
        out[full_key] += values
    return out


INDEX_ADD = define("index_add", MOVEMENT, _index_add_impl, _index_add_rule,
                   lambda g, out, base, values, *idx, key: (g, g[build_key(key, idx)] if idx else
                                                            _getitem_plain(g, key)) + (None,) * len(idx),
                   index_from=2)


def _index_put_impl(xp, base, values, *idx, key):
    out = base.copy()
    out[build_key(key, idx)] = values
    return out


def _index_put_vjp(g, out, base, values, *idx, key):
    from eager.creation import zeros_like
    from eager.dispatch import apply
    region = apply(GETITEM, g, *idx, key=key)
    return (apply(INDEX_PUT, g, zeros_like(region), *idx, key=key), region) + (None,) * len(idx)


# base with the region ``key`` replaced by ``values``: a write through a view, functionally (the tracer's record
# of ``x[key] = v`` and of in-place ops on a slice, and the rebased history of the written base)
INDEX_PUT = define("index_put", MOVEMENT, _index_put_impl, _index_add_rule, _index_put_vjp, index_from=2)


def _getitem_plain(g, key):
    from eager.dispatch import apply
    return apply(GETITEM, g, key=key)


def _concat_vjp(g, out, *inputs, axis):
    grads, start = [], 0
    ax = axis % g.ndim
    for x in inputs:
        size = x.shape[ax]
        key = (slice(None),) * ax + (slice(start, start + size),)
        grads.append(_getitem_plain(g, key))
        start += size
    return tuple(grads)


CONCATENATE = define("concatenate", MOVEMENT, lambda xp, *arrays, axis: xp.concatenate(arrays, axis=axis),
                     _concat_rule, _concat_vjp)


# views with strides of their own (diagonal, unfold): NumPy and CuPy arrays viewing input 0's memory, so writes
# through them reach it (NumPy's own diagonal is read-only); their writes' functional form is ``diagonal_put`` and
# ``unfold_put`` below (what eager.storage records for a write through one)
def _validated(rule, impl):
    """``impl`` that runs the row's shape rule on its arrays first: NumPy runs some wrong calls without an error (a
    gather index of lower rank, an unfold window longer than its dim, src of another dtype), and eager asks the
    rule only when the impl fails."""
    def run(xp, *arrays, **params):
        rule(*(Aval(a.shape, a.dtype) if hasattr(a, "dtype") else a for a in arrays), **params)
        return impl(xp, *arrays, **params)
    return run


def _diagonal_length(rows: int, cols: int, offset: int) -> int:
    return max(0, min(rows, cols - offset) if offset >= 0 else min(rows + offset, cols))


def _diagonal_rule(a, *, offset, dim1, dim2):
    if len(a.shape) < 2:
        raise ShapeError(f"diagonal: expects a tensor with at least 2 dims, got {a}; a 1-D tensor has no diagonal.")
    d1, d2 = _normalize_axes("diagonal", (dim1, dim2), len(a.shape))
    if d1 == d2:
        raise ShapeError(f"diagonal: dim1 and dim2 must be two different dims of {a}, both are {d1}.")
    rest = tuple(n for i, n in enumerate(a.shape) if i not in (d1, d2))
    return Aval(rest + (_diagonal_length(a.shape[d1], a.shape[d2], offset),), a.dtype)


def _diagonal_impl(xp, a, *, offset, dim1, dim2):
    if xp is not np:  # CuPy's diagonal is a writable view already; jax.numpy's is a value (no views to write)
        return xp.diagonal(a, offset, dim1, dim2)
    d1, d2 = dim1 % a.ndim, dim2 % a.ndim
    start = [slice(None)] * a.ndim
    start[d1], start[d2] = slice(max(-offset, 0), None), slice(max(offset, 0), None)
    s = a[tuple(start)]  # a view starting at the diagonal's first element
    rest = [d for d in range(a.ndim) if d not in (d1, d2)]
    shape = tuple(s.shape[d] for d in rest) + (min(s.shape[d1], s.shape[d2]),)
    strides = tuple(s.strides[d] for d in rest) + (s.strides[d1] + s.strides[d2],)
    return np.lib.stride_tricks.as_strided(s, shape, strides)


def diagonal_put(base, values, *, offset, dim1, dim2):
    """``base`` with its diagonal (``offset``, ``dim1``, ``dim2``) replaced by ``values``, with Tensor ops: the
    two dims moved last, an ``index_put`` at (row, col) pairs, the dims moved back."""
    from eager.creation import arange
    from eager.dispatch import apply
    d1, d2 = dim1 % base.ndim, dim2 % base.ndim
    axes = tuple(d for d in range(base.ndim) if d not in (d1, d2)) + (d1, d2)
    n, row, col = values.shape[-1], max(-offset, 0), max(offset, 0)
    rows, cols = arange(row, row + n, device=base.device), arange(col, col + n, device=base.device)
    put = apply(INDEX_PUT, apply(PERMUTE, base, axes=axes), values, rows, cols,
                key=(Ellipsis, IndexSlot(0), IndexSlot(1)))
    return apply(PERMUTE, put, axes=_inverse(axes))


def _diagonal_vjp(g, out, a, *, offset, dim1, dim2):
    from eager.creation import zeros_like
    return (diagonal_put(zeros_like(a), g, offset=offset, dim1=dim1, dim2=dim2),)


DIAGONAL = define("diagonal", MOVEMENT, _validated(_diagonal_rule, _diagonal_impl), _diagonal_rule, _diagonal_vjp,
                  view=True)


def _unfold_rule(a, *, dimension, size, step):
    ndim = len(a.shape)
    (d,) = _normalize_axes("unfold", (dimension,), ndim)
    if step <= 0:
        raise ShapeError(f"unfold: step is {step} but must be > 0.")
    length = a.shape[d] if ndim else 1  # a 0-d tensor unfolds as one element
    if not 0 <= size <= length:
        raise ShapeError(f"unfold: size {size} does not fit dim {d} of {a}: windows are 0 to {length} elements "
                         "long (the size of that dim).")
    if not ndim:
        return Aval((size,), a.dtype)
    return Aval(a.shape[:d] + ((length - size) // step + 1,) + a.shape[d + 1:] + (size,), a.dtype)


def _unfold_impl(xp, a, *, dimension, size, step):
    # the windows as a strided view: dim ``dimension`` steps window by window, a new last dim within a window
    if not a.ndim:
        return xp.lib.stride_tricks.as_strided(a, (size,), (0,))
    d = dimension % a.ndim
    st = a.strides
    shape = a.shape[:d] + ((a.shape[d] - size) // step + 1,) + a.shape[d + 1:] + (size,)
    return xp.lib.stride_tricks.as_strided(a, shape, st[:d] + (st[d] * step,) + st[d + 1:] + (st[d],))


def unfold_positions(count: int, size: int, step: int):
    """[count, size]: the index, along the unfolded dim, of each window's elements (an int64 NumPy array)."""
    return np.arange(count)[:, None] * step + np.arange(size)


def unfold_put(base, values, *, dimension, size, step, accumulate: bool = False):
    """``base`` with the windows of ``base.unfold(dimension, size, step)`` replaced by ``values`` (added to them when
    ``accumulate``: where windows overlap, each one adds its share), with Tensor ops."""
    from eager.creation import tensor
    from eager.dispatch import apply
    if not base.ndim:  # one window of 0 or 1 elements
        if not size:
            return base
        value = apply(RESHAPE, values, shape=())
        return apply(ADD, base, value) if accumulate else value
    d = dimension % base.ndim
    idx = tensor(unfold_positions(values.shape[d], size, step), device=base.device)
    nd = values.ndim  # values: [..., count, ..., size] -> [..., count, size, ...], as base[..., idx, ...] reads
    moved = apply(PERMUTE, values, axes=tuple(range(d + 1)) + (nd - 1,) + tuple(range(d + 1, nd - 1)))
    return apply(INDEX_ADD if accumulate else INDEX_PUT, base, moved, idx, key=(slice(None),) * d + (IndexSlot(0),))


def _unfold_vjp(g, out, a, *, dimension, size, step):
    from eager.creation import zeros_like
    return (unfold_put(zeros_like(a), g, dimension=dimension, size=size, step=step, accumulate=True),)


UNFOLD = define("unfold", MOVEMENT, _validated(_unfold_rule, _unfold_impl), _unfold_rule, _unfold_vjp, view=True)


# gather, scatter, scatter_add (PyTorch's): ``out[i][j] = x[i][index[i][j]]`` for dim 1, and its inverses. Input 1
# is the index, of the input's rank; indices lie in [0, size) (PyTorch refuses negative ones, unlike x[i])
def _integer_index(op: str, index) -> None:
    if not isinstance(index, Aval) or index.dtype.kind not in "iu":
        raise ShapeError(f"{op}: the index must be an integer tensor, got {describe(index)}; cast it with .long().")


def _gather_rule(a, index, *, axis):
    _integer_index("gather", index)
    ndim = len(a.shape)
    if not ndim or len(index.shape) != ndim:
        raise ShapeError(f"gather: the index {index} must have as many dims as the input {a} (at least 1).")
    (ax,) = _normalize_axes("gather", (axis,), ndim)
    for d in range(ndim):
        if d != ax and index.shape[d] > a.shape[d]:
            raise ShapeError(f"gather: the index {index} is larger than the input {a} in dim {d}; apart from dim "
                             f"{ax}, the index's sizes may not exceed the input's.")
    return Aval(index.shape, a.dtype)


def _scatter_rule(op: str):
    def rule(a, index, src, *, axis):
        _integer_index(op, index)
        if not isinstance(src, Aval) or src.dtype != a.dtype:
            raise ShapeError(f"{op}: src {describe(src)} must be a tensor of the input's dtype ({a}); cast it "
                             "with .to(x.dtype).")
        ndim = len(a.shape)
        if not ndim or len(index.shape) != ndim or len(src.shape) != ndim:
            raise ShapeError(f"{op}: the input {a}, index {index} and src {src} must have the same number of dims "
                             "(at least 1).")
        (ax,) = _normalize_axes(op, (axis,), ndim)
        for d in range(ndim):
            if index.shape[d] > src.shape[d] or (d != ax and index.shape[d] > a.shape[d]):
                raise ShapeError(f"{op}: the index {index} is larger than src {src} or (apart from dim {ax}) the "
                                 f"input {a} in dim {d}; each index size must fit both.")
        return a
    return rule


def check_index_values(op: str, index, size: int, dim: int) -> None:
    """Raise IndexError unless every value of the index array lies in [0, size). It reads the values: the impls
    call it on NumPy only (on CuPy it waits for the device, which a captured CUDA graph cannot do: eager's
    wrappers check there, as for getitem), and the XLA backend's jitted programs cannot raise."""
    if not index.size:
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= size:
        raise IndexError(f"{op}: index {low if low < 0 else high} is out of bounds for dim {dim} with size {size}; "
                         f"indices must lie in [0, {size}) (negative ones too are refused, as in PyTorch).")


def grid_key(xp, index, axis: int) -> tuple:
    """The advanced-indexing key of ``gather``: ``index`` at dim ``axis``, and at every other dim d the position
    itself (a broadcast arange), so ``x[key][i, j, k]`` is ``x[i, index[i, j, k], k]`` for axis 1."""
    nd = index.ndim
    return tuple(index if d == axis else xp.arange(n).reshape((-1,) + (1,) * (nd - 1 - d))
                 for d, n in enumerate(index.shape))


def leading(shape) -> tuple:
    """The basic key of the leading corner of that shape (src's part a scatter reads)."""
    return tuple(slice(0, n) for n in shape)


def flat_positions(xp, shape, index, axis: int):
    """Where each scatter writes, as flat positions into a C-contiguous array of ``shape`` (index's shape)."""
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    key = grid_key(xp, index.astype(int64, copy=False), axis)
    return xp.broadcast_to(sum(k * s for k, s in zip(key, strides)), index.shape)


def _gather_impl(xp, a, index, *, axis):
    if xp is np:
        check_index_values("gather", index, a.shape[axis], axis)
    return a[grid_key(xp, index, axis)]


def _scatter_add_impl(xp, a, index, src, *, axis):
    if xp is np:
        check_index_values("scatter_add", index, a.shape[axis], axis)
    out = a.copy()
    xp.add.at(out, grid_key(xp, index, axis), src[leading(index.shape)])  # repeated positions accumulate
    return out


def _scatter_impl(xp, a, index, src, *, axis):
    if xp is np:
        check_index_values("scatter", index, a.shape[axis], axis)
    if not index.size:
        return a.copy()
    pos = flat_positions(xp, a.shape, index, axis).reshape(-1)
    values = src[leading(index.shape)].reshape(-1)
    # where positions repeat, the last write lands (PyTorch leaves it unspecified; NumPy and CuPy promise no order
    # for a repeated assignment): sorted stably, a position's last write ends its run, and the others are sent to
    # one spare element past the end, so every real position is written once (no result sized by the data)
    order = xp.argsort(pos, kind="stable")
    pos, values = pos[order], values[order]
    last = xp.concatenate([pos[1:] != pos[:-1], xp.ones(1, dtype=bool)])
    out = xp.concatenate([a.reshape(-1), xp.zeros(1, dtype=a.dtype)])
    out[xp.where(last, pos, a.size)] = values
    return out[:a.size].reshape(a.shape)


def _gather_vjp(g, out, a, index, *, axis):
    from eager.creation import zeros_like
    from eager.dispatch import apply
    return apply(SCATTER_ADD, zeros_like(a), index, g, axis=axis), None


def _src_grad(g, index, src, axis):
    """src's gradient in a scatter: ``gather(g, index)`` (PyTorch's, repeated positions included), and zero where
    src is larger than the index."""
    from eager.creation import zeros
    from eager.dispatch import apply
    picked = apply(GATHER, g, index, axis=axis)
    if picked.shape == src.shape:
        return picked
    return apply(INDEX_PUT, zeros(*src.shape, dtype=g.dtype, device=g.device), picked, key=leading(picked.shape))


def _scatter_vjp(g, out, a, index, src, *, axis):
    from eager.creation import zeros
    from eager.dispatch import apply
    # a's gradient is g but where src was written: those values no longer depend on a
    ga = apply(SCATTER, g, index, zeros(*index.shape, dtype=g.dtype, device=g.device), axis=axis) if _needs(a) \
        else None
    return ga, None, _src_grad(g, index, src, axis) if _needs(src) else None


def _scatter_add_vjp(g, out, a, index, src, *, axis):
    return g, None, _src_grad(g, index, src, axis) if _needs(src) else None


GATHER = define("gather", MOVEMENT, _validated(_gather_rule, _gather_impl), _gather_rule, _gather_vjp, reads=(1,))
SCATTER = define("scatter", MOVEMENT, _validated(_scatter_rule("scatter"), _scatter_impl), _scatter_rule("scatter"),
                 _scatter_vjp, reads=(1,))
SCATTER_ADD = define("scatter_add", MOVEMENT, _validated(_scatter_rule("scatter_add"), _scatter_add_impl),
                     _scatter_rule("scatter_add"), _scatter_add_vjp, reads=(1,))

# matmul (>= 2-D operands; 1-D cases are composites that reshape)
def _transposed_layout(t) -> bool:
    """A 2-D operand stored column-major: a transposed view, like the weight in ``x @ W.T``."""
    flags = getattr(t._data, "flags", None)
    return t.ndim == 2 and flags is not None and flags.f_contiguous and not flags.c_contiguous


def _matmul_vjp(g, out, a, b):
    # each gradient is computed in its operand's layout: W.T's comes out transposed, so W.grad is row-major like W
    # (BLAS reads the transposed operands in place; an optimizer then updates W without strided reads)
    ga = gb = None
    if _needs(a):
        ga = unbroadcast(_mT(b @ _mT(g)) if _transposed_layout(a) else g @ _mT(b), a)
    if _needs(b):
        gb = unbroadcast(_mT(_mT(g) @ a) if _transposed_layout(b) else _mT(a) @ g, b)
    return ga, gb


MATMUL = define("matmul", CONTRACTION, lambda xp, a, b: xp.matmul(a, b), _matmul_rule, _matmul_vjp,
                reads=((0, 1), (1, 0)))


# convolution, in PyTorch's layout: x [N, C, *spatial], weight [O, C / groups, *kernel], out [N, O, *out] (any number
# of spatial dims; eager.nn.functional gives conv1d and conv2d). ``padding`` is one (low, high) pair per spatial dim
# (PyTorch's "same" pads the extra element high). Three rows close under transposition, so every order of gradient is
# one of them: ``conv_transpose`` is the input gradient (the transposed convolution, also F.conv_transpose2d) and
# ``conv_weight_grad`` the weight gradient; each one's VJP is the other two.
def _conv_spatial(op: str, spatial, kernel, stride, padding, dilation) -> tuple[int, ...]:
    """The output's spatial shape; a ShapeError when the (dilated) kernel is larger than the padded input."""
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, padding))
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if any(p < k for p, k in zip(padded, span)):
        raise ShapeError(f"{op}: calculated padded input size per channel: ({' x '.join(map(str, padded))}). Kernel "
                         f"size (dilated): ({' x '.join(map(str, span))}). The kernel can't be greater than the padded "
                         "input: pad more, or use a smaller kernel or dilation.")
    return tuple((p - k) // s + 1 for p, k, s in zip(padded, span, stride))


def _conv_params(op: str, nd: int, stride, padding, dilation, groups) -> None:
    if len(stride) != nd or len(dilation) != nd or len(padding) != nd or any(len(p) != 2 for p in padding):
        raise ShapeError(f"{op}: stride {stride}, dilation {dilation} and padding {padding} must give one entry "
                         f"(padding: a (low, high) pair) per spatial dim ({nd}).")
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for pair in padding for p in pair):
        raise ShapeError(f"{op}: stride {stride} and dilation {dilation} must be positive and padding {padding} "
                         "non-negative.")
    if not isinstance(groups, int) or groups < 1:
        raise ShapeError(f"{op}: groups must be a positive int, got {groups!r}.")


def _conv_operands(op: str, a, b, nd: int) -> None:
    if not isinstance(a, Aval) or not isinstance(b, Aval) or a.dtype != b.dtype or a.dtype.kind != "f":
        raise ShapeError(f"{op}: expects two floating-point tensors of one dtype, got {describe(a)} and "
                         f"{describe(b)}; cast with .to(dtype).")
    if len(a.shape) != nd + 2 or len(b.shape) != nd + 2:
        raise ShapeError(f"{op}: expects {nd + 2}-D operands ([batch, channels] and {nd} spatial dims), got "
                         f"{a} and {b}.")


def _conv_rule(x, w, *, stride, padding, dilation, groups):
    nd = len(stride)
    op = f"conv{nd}d"
    _conv_operands(op, x, w, nd)
    _conv_params(op, nd, stride, padding, dilation, groups)
    if w.shape[0] % groups:
        raise ShapeError(f"{op}: out_channels ({w.shape[0]}, weight {w}) must be divisible by groups ({groups}).")
    if x.shape[1] != w.shape[1] * groups:
        raise ShapeError(f"{op}: given groups={groups}, weight of size {list(w.shape)}, expected input {list(x.shape)} "
                         f"to have {w.shape[1] * groups} channels, but got {x.shape[1]} channels instead.")
    out = _conv_spatial(op, x.shape[2:], w.shape[2:], stride, padding, dilation)
    return Aval((x.shape[0], w.shape[0]) + out, x.dtype)


def _conv_transpose_rule(g, w, *, stride, padding, dilation, groups, size):
    nd = len(stride)
    op = f"conv_transpose{nd}d"
    _conv_operands(op, g, w, nd)
    _conv_params(op, nd, stride, padding, dilation, groups)
    if g.shape[1] != w.shape[0] or w.shape[0] % groups:
        raise ShapeError(f"{op}: the input {g} must have weight.shape[0] = {w.shape[0]} channels (weight {w}), a "
                         f"multiple of groups ({groups}).")
    if len(size) != nd or _conv_spatial(op, size, w.shape[2:], stride, padding, dilation) != tuple(g.shape[2:]):
        raise ShapeError(f"{op}: an output of spatial size {list(size)} does not convolve back to the input's "
                         f"{list(g.shape[2:])} (kernel {list(w.shape[2:])}, stride {list(stride)}, padding "
                         f"{list(padding)}, dilation {list(dilation)}); check output_padding.")
    return Aval((g.shape[0], w.shape[1] * groups) + tuple(size), g.dtype)


def _conv_weight_grad_rule(x, g, *, stride, padding, dilation, groups, kernel):
    nd = len(stride)
    op = "conv_weight_grad"
    _conv_operands(op, x, g, nd)
    _conv_params(op, nd, stride, padding, dilation, groups)
    if x.shape[0] != g.shape[0] or x.shape[1] % groups or g.shape[1] % groups:
        raise ShapeError(f"{op}: the input {x} and output gradient {g} must share the batch size, with channels "
                         f"divisible by groups ({groups}).")
    if len(kernel) != nd or _conv_spatial(op, x.shape[2:], kernel, stride, padding, dilation) != tuple(g.shape[2:]):
        raise ShapeError(f"{op}: the output gradient {g} does not fit the input {x} convolved with a kernel "
                         f"{list(kernel)} (stride {list(stride)}, padding {list(padding)}, dilation {list(dilation)}).")
    return Aval((g.shape[1], x.shape[1] // groups) + tuple(kernel), x.dtype)


def _jax_namespace(xp) -> bool:
    return xp.__name__.startswith("jax")


def _lax_conv(x, w, stride, padding, dilation, groups):
    import jax
    return jax.lax.conv_general_dilated(x, w, tuple(stride), tuple(map(tuple, padding)), rhs_dilation=tuple(dilation),
                                        feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)


def _window(k, stride, dilation, out) -> tuple:
    """The strided slices of a padded input that kernel element ``k`` reads, one per output position."""
    return tuple(slice(k[i] * dilation[i], k[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i])
                 for i in range(len(k)))


def _patches(xp, x, kernel, stride, padding, dilation, groups):
    """im2col: the windows of x as a [groups, N * L, C / groups * K] matrix (L output positions, K kernel elements),
    one strided slice of the padded input per kernel element written into its column (plain slicing works on every
    namespace, and measured 8x faster than copying an ``as_strided`` view of all windows at once)."""
    if any(lo or hi for lo, hi in padding):
        x = xp.pad(x, ((0, 0), (0, 0)) + tuple(tuple(p) for p in padding))
    n, c, nd = x.shape[0], x.shape[1], len(kernel)
    out = tuple((x.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(nd))
    cols = xp.empty((groups, n) + out + (c // groups, math.prod(kernel)), x.dtype)
    to_rows = (1, 0) + tuple(range(3, 3 + nd)) + (2,)  # [N, G, C / G, *out] -> [G, N, *out, C / G]
    for j, k in enumerate(np.ndindex(*kernel)):
        window = x[(slice(None), slice(None)) + _window(k, stride, dilation, out)]
        cols[..., j] = window.reshape((n, groups, c // groups) + out).transpose(to_rows)
    return cols.reshape(groups, n * math.prod(out), -1), out


def _grouped_rows(g, groups):
    """An output-shaped [N, O, *out] array as the [groups, N * L, O / groups] matrix the products use."""
    n, o, nd = g.shape[0], g.shape[1], g.ndim - 2
    g = g.reshape((n, groups, o // groups) + g.shape[2:])
    return g.transpose((1, 0) + tuple(range(3, 3 + nd)) + (2,)).reshape(groups, -1, o // groups)


def _conv_impl(xp, x, w, *, stride, padding, dilation, groups):
    if _jax_namespace(xp):
        return _lax_conv(x, w, stride, padding, dilation, groups)
    cols, out = _patches(xp, x, w.shape[2:], stride, padding, dilation, groups)
    n, o, nd = x.shape[0], w.shape[0], len(out)
    y = xp.matmul(cols, w.reshape(groups, o // groups, -1).transpose(0, 2, 1))  # [G, N * L, O / G]
    y = y.reshape((groups, n) + out + (o // groups,)).transpose((1, 0, 2 + nd) + tuple(range(2, 2 + nd)))
    return xp.ascontiguousarray(y).reshape((n, o) + out)


def _conv_transpose_impl(xp, g, w, *, stride, padding, dilation, groups, size):
    if _jax_namespace(xp):
        import jax
        zeros = xp.zeros((g.shape[0], w.shape[1] * groups) + tuple(size), g.dtype)
        return jax.vjp(lambda x: _lax_conv(x, w, stride, padding, dilation, groups), zeros)[1](g)[0]
    n, cg, kernel, out, nd = g.shape[0], w.shape[1], w.shape[2:], g.shape[2:], g.ndim - 2
    cols = xp.matmul(_grouped_rows(g, groups), w.reshape(groups, w.shape[0] // groups, -1))  # [G, N * L, Cg * K]
    cols = cols.reshape((groups, n) + out + (cg,) + kernel)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, padding))
    x = xp.zeros((n, groups, cg) + padded, g.dtype)
    # col2im: each kernel element adds its column into the input positions it read (a strided slice per element)
    for k in np.ndindex(*kernel):
        x[(slice(None),) * 3 + _window(k, stride, dilation, out)] += \
            cols[(Ellipsis,) + k].transpose((1, 0, 2 + nd) + tuple(range(2, 2 + nd)))
    crop = (slice(None),) * 2 + tuple(slice(lo, lo + s) for s, (lo, _) in zip(size, padding))
    return xp.ascontiguousarray(x.reshape((n, groups * cg) + padded)[crop])


def _conv_weight_grad_impl(xp, x, g, *, stride, padding, dilation, groups, kernel):
    if _jax_namespace(xp):
        import jax
        zeros = xp.zeros((g.shape[1], x.shape[1] // groups) + tuple(kernel), x.dtype)
        return jax.vjp(lambda w: _lax_conv(x, w, stride, padding, dilation, groups), zeros)[1](g)[0]
    cols, _ = _patches(xp, x, kernel, stride, padding, dilation, groups)
    gw = xp.matmul(_grouped_rows(g, groups).transpose(0, 2, 1), cols)  # [G, O / G, Cg * K]
    return gw.reshape((g.shape[1], x.shape[1] // groups) + tuple(kernel))


def _conv_vjp(g, out, x, w, *, stride, padding, dilation, groups):
    from eager.dispatch import apply
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (apply(CONV_TRANSPOSE, g, w, size=tuple(x.shape[2:]), **p) if _needs(x) else None,
            apply(CONV_WEIGHT_GRAD, x, g, kernel=tuple(w.shape[2:]), **p) if _needs(w) else None)


def _conv_transpose_vjp(c, out, g, w, *, stride, padding, dilation, groups, size):
    from eager.dispatch import apply
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (apply(CONV, c, w, **p) if _needs(g) else None,
            apply(CONV_WEIGHT_GRAD, c, g, kernel=tuple(w.shape[2:]), **p) if _needs(w) else None)


def _conv_weight_grad_vjp(c, out, x, g, *, stride, padding, dilation, groups, kernel):
    from eager.dispatch import apply
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (apply(CONV_TRANSPOSE, g, c, size=tuple(x.shape[2:]), **p) if _needs(x) else None,
            apply(CONV, x, c, **p) if _needs(g) else None)


# host steps in the compiler (im2col and one batched BLAS product on NumPy/CuPy); jax.lax.conv_general_dilated in XLA
CONV = define("conv", CONTRACTION, _validated(_conv_rule, _conv_impl), _conv_rule, _conv_vjp, lowering=HOST,
              reads=((0, 1), (1, 0)))
CONV_TRANSPOSE = define("conv_transpose", CONTRACTION, _validated(_conv_transpose_rule, _conv_transpose_impl),
                        _conv_transpose_rule, _conv_transpose_vjp, lowering=HOST, reads=((0, 1), (1, 0)))
CONV_WEIGHT_GRAD = define("conv_weight_grad", CONTRACTION, _validated(_conv_weight_grad_rule, _conv_weight_grad_impl),
                          _conv_weight_grad_rule, _conv_weight_grad_vjp, lowering=HOST, reads=((0, 1), (1, 0)))


# creation (no tensor inputs; inside a trace they become nodes, not baked constants)
def _full_impl(xp, *, shape, fill_value, dtype, device):
    return xp.full(shape, fill_value, dtype=dtype)


def _random_impl(draw):
    def impl(xp, *, device, **params):
        from eager.random import default_generator
        return draw(default_generator(device), **params)
    return impl


FULL = define("full", OTHER, _full_impl, _creation_rule, lowering=KERNEL)  # a kernel reads it as a literal
UNIFORM = define("uniform", OTHER, _random_impl(lambda gen, shape, dtype: gen.random(shape, dtype=dtype)),
                 _creation_rule, random=True)
NORMAL = define("normal", OTHER, _random_impl(lambda gen, shape, dtype: gen.standard_normal(shape, dtype=dtype)),
                _creation_rule, random=True)
RANDINT = define("randint", OTHER, _random_impl(lambda gen, low, high, shape, dtype: gen.integers(low, high, shape)
                                              .astype(dtype, copy=False)), _creation_rule, random=True)
RANDPERM = define("randperm", OTHER, _random_impl(lambda gen, n: gen.permutation(n)),
                  lambda *, n, device: Aval((n,), int64), random=True)


def _needs(x) -> bool:
    """Whether an input wants a gradient: lets a VJP skip work (e.g. dL/dx for a network's input)."""
    return getattr(x, "requires_grad", False)


# floor division and Python's remainder (PyTorch's ``//`` and ``%``, sign of the divisor). Host steps for now: the C
# side has no ``floor`` it knows (compiler/codegen would need it, and integer templates that never divide by zero)
def _integer_zero_divisor(op: str, xp, a, b) -> None:
    """Integer division by zero raises, as in PyTorch (NumPy gives 0 and a warning); read on NumPy only, as
    check_index_values is (a captured CUDA graph cannot wait for the device)."""
    dtype = getattr(a if hasattr(a, "dtype") else b, "dtype", None)
    if xp is np and dtype is not None and dtype.kind in "iub" and bool(np.any(np.asarray(b) == 0)):
        raise ZeroDivisionError(f"{op}: integer division by zero (PyTorch raises ZeroDivisionError too); mask the "
                                "zeros of the divisor first, e.g. where(b == 0, 1, b).")


def _floor_division_impl(op: str, name: str):
    def impl(xp, a, b):
        _integer_zero_divisor(op, xp, a, b)
        if xp is np:
            with np.errstate(divide="ignore", invalid="ignore"):  # float x // 0 is inf or nan, silently as in PyTorch
                return getattr(np, name)(a, b)
        return getattr(xp, name)(a, b)
    return impl


def _remainder_vjp(g, out, a, b):
    from eager.dispatch import apply
    return (unbroadcast(g, a) if _needs(a) else None,
            unbroadcast(-(g * apply(FLOOR_DIVIDE, a, b)), b) if _needs(b) else None)


FLOOR_DIVIDE = define("floor_divide", OTHER, _floor_division_impl("floor_divide", "floor_divide"),
                      _elementwise_rule("floor_divide"), lowering=HOST)
REMAINDER = define("remainder", OTHER, _floor_division_impl("remainder", "remainder"), _elementwise_rule("remainder"),
                   _remainder_vjp, lowering=HOST, reads=((0, 1), (1, 1)))


# rounding to integers (PyTorch's floor, ceil, trunc, round; wrappers in eager.ops): integer tensors pass through; the
# gradient is zero, as in PyTorch. Host steps until the C side knows floor/ceil/trunc/nearbyint (kind OTHER: no C
# expression yet)
def _rounding_impl(name: str):
    def impl(xp, a):
        return a.copy() if a.dtype.kind in "biu" else getattr(xp, name)(a)
    return impl


FLOOR, CEIL, TRUNC, ROUND = (define(name, OTHER, _rounding_impl(fn), lambda a: a, lambda g, out, a: (g * 0,),
                                    lowering=HOST)
                             for name, fn in (("floor", "floor"), ("ceil", "ceil"), ("trunc", "trunc"),
                                              ("round", "round")))  # round: half to even, as PyTorch and NumPy


# cumulative sums and products along one axis (integers and bools accumulate in int64, as in PyTorch)
def _cumulative_rule(op: str):
    def rule(a, *, axis):
        if a.shape:
            _normalize_axes(op, (axis,), len(a.shape))
        return Aval(a.shape, int64 if a.dtype.kind in "biu" else a.dtype)
    return rule


def _cumulative_impl(name: str):
    def impl(xp, a, *, axis):
        dtype = int64 if a.dtype.kind in "biu" else a.dtype
        return getattr(xp, name)(a, axis=axis, dtype=dtype) if a.ndim else a.astype(dtype)
    return impl


def _reversed(t, axis):
    from eager.dispatch import apply
    return apply(GETITEM, t, key=(slice(None),) * axis + (slice(None, None, -1),))


def _reverse_cumsum(t, axis):
    """sum_{j >= i} t_j along ``axis``: what every cumulative op's VJP accumulates."""
    from eager.dispatch import apply
    if not t.ndim:
        return t
    return _reversed(apply(CUMSUM, _reversed(t, axis), axis=axis), axis)


def _cumprod_vjp(g, out, a, *, axis):
    """sum_{j >= i} g_j prod_{k <= j, k != i} a_k, exact where a has zeros. A plain backward uses O(n) ops per row;
    under ``create_graph`` (higher orders) a division-free polynomial form, O(n^2) per row, whose own derivatives are
    exact at zeros too."""
    from eager.autograd.mode import MODE
    if not a.ndim:
        return (g,)
    if MODE.get().grad_enabled:
        return (_cumprod_grad_polynomial(g, a, axis),)
    return (_cumprod_grad_linear(g, out, a, axis),)


def _cumprod_grad_linear(g, out, a, axis):
    """out / a_i where a_i != 0; at the axis's first zero the products that skip it (a cumprod with that zero set to
    1); 0 at every later zero (their products all hold the first one)."""
    from eager.dispatch import apply
    zero = a == 0
    first_zero = zero & (apply(CUMSUM, zero, axis=axis) == 1)
    skip_zero = apply(CUMPROD, _where(first_zero, 1.0, a), axis=axis)
    at_first = _reverse_cumsum(g * skip_zero, axis)
    elsewhere = _where(zero, 0.0, _reverse_cumsum(g * out, axis) / _where(zero, 1.0, a))
    return _where(first_zero, at_first, elsewhere)


def _cumprod_grad_polynomial(g, a, axis):
    """prod_{k < i} a_k * sum_{j >= i} g_j prod_{i < k <= j} a_k, the inner products a cumprod over a [n, n] matrix
    holding a_j above its diagonal and 1 elsewhere."""
    from eager.creation import tensor
    from eager.dispatch import apply
    n = a.shape[axis]
    last = a.transpose(axis, -1)
    above = tensor(np.triu(np.ones((n, n), bool), 1), device=a.device)
    products = apply(CUMPROD, _where(above, last.unsqueeze(-2), 1.0), axis=a.ndim)  # [..., i, j]
    inner = (_where(tensor(np.triu(np.ones((n, n), bool)), device=a.device), products, 0.0) *
             g.transpose(axis, -1).unsqueeze(-2)).sum(-1)
    shifted = apply(CONCATENATE, apply(FULL, shape=last.shape[:-1] + (1,), fill_value=1.0, dtype=a.dtype,
                                       device=a.device), last[..., :n - 1], axis=a.ndim - 1)
    return (apply(CUMPROD, shifted, axis=a.ndim - 1) * inner).transpose(axis, -1)


CUMSUM = define("cumsum", OTHER, _cumulative_impl("cumsum"), _cumulative_rule("cumsum"),
                lambda g, out, a, *, axis: (_reverse_cumsum(g, axis),), lowering=HOST)
CUMPROD = define("cumprod", OTHER, _cumulative_impl("cumprod"), _cumulative_rule("cumprod"), _cumprod_vjp,
                 saves_out=True, lowering=HOST, reads=(0,))


# sorting: the stable order of one axis as int64 indices (sort and topk gather the values, which carries gradients)
def _argsort_rule(a, *, axis, descending):
    if not a.shape:
        raise ShapeError(f"argsort: expects a tensor with at least 1 dim, got {a}.")
    _normalize_axes("argsort", (axis,), len(a.shape))
    return Aval(a.shape, int64)


def _stable_argsort(xp, a, axis):
    if xp is np:
        return np.argsort(a, axis=axis, kind="stable")
    if _jax_namespace(xp):
        return xp.argsort(a, axis=axis, stable=True)
    return xp.argsort(a, axis=axis)  # CuPy's sort is stable


def _argsort_impl(xp, a, *, axis, descending):
    if not descending:
        return _stable_argsort(xp, a, axis).astype(int64)
    # descending, ties in their original order and NaN first (PyTorch's): the ascending stable order of the
    # reversed axis, reversed, counted from the other end
    order = xp.flip(_stable_argsort(xp, xp.flip(a, axis), axis), axis)
    return (a.shape[axis] - 1 - order).astype(int64)


ARGSORT = define("argsort", OTHER, _argsort_impl, _argsort_rule)


# einsum over an explicit equation ("ij,jk->ik": eager.einsum resolves "..." and the implicit output first)
def parse_einsum(equation: str) -> tuple[list[str], str]:
    inputs, output = equation.split("->")
    return inputs.split(","), output


def _einsum_rule(*operands, equation):
    subs, out = parse_einsum(equation)
    if len(subs) != len(operands) or not all(isinstance(o, Aval) for o in operands):
        raise ShapeError(f"einsum: {equation!r} names {len(subs)} operands, got {len(operands)}: "
                         f"{', '.join(describe(o) for o in operands)}.")
    _same_dtype("einsum", operands)
    sizes: dict[str, int] = {}
    for s, o in zip(subs, operands):
        if len(s) != len(o.shape):
            raise ShapeError(f"einsum: subscripts {s!r} give {len(s)} dims, but the operand is {o}.")
        for letter, n in zip(s, o.shape):
            if sizes.setdefault(letter, n) != n:
                raise ShapeError(f"einsum: subscript {letter!r} is {sizes[letter]} in one place and {n} in another "
                                 f"({equation!r} on {', '.join(map(str, operands))}).")
    if any(letter not in sizes for letter in out) or len(set(out)) != len(out):
        raise ShapeError(f"einsum: the output {out!r} of {equation!r} must name each input subscript at most once.")
    return Aval(tuple(sizes[letter] for letter in out), operands[0].dtype)


def _einsum_impl(xp, *operands, equation):
    if xp is np:
        return np.einsum(equation, *operands, optimize=len(operands) > 1)  # optimize: pairwise BLAS products
    if _jax_namespace(xp):
        import jax
        return xp.einsum(equation, *operands, precision=jax.lax.Precision.HIGHEST)
    return xp.einsum(equation, *operands)


def _einsum_vjp(g, out, *operands, equation):
    """Operand i's gradient: the einsum of g with the other operands onto i's subscripts; a subscript only i has
    (summed away in the forward) is broadcast back."""
    from eager.dispatch import apply
    subs, out_subs = parse_einsum(equation)
    grads = []
    for i, (s, x) in enumerate(zip(subs, operands)):
        if not _needs(x):
            grads.append(None)
            continue
        if len(set(s)) != len(s):
            raise NotImplementedError(f"einsum: the gradient of an operand with a repeated subscript ({s!r} in "
                                      f"{equation!r}, a diagonal) is not supported; take .diagonal() first.")
        others = [(t, o) for j, (t, o) in enumerate(zip(subs, operands)) if j != i]
        present = set(out_subs).union(*(set(t) for t, _ in others))
        kept = "".join(letter for letter in s if letter in present)
        grad = apply(EINSUM, g, *(o for _, o in others), equation=",".join([out_subs] + [t for t, _ in others]) +
                     "->" + kept)
        if kept != s:
            grad = apply(RESHAPE, grad, shape=tuple(n if letter in present else 1 for letter, n in zip(s, x.shape)))
            grad = apply(BROADCAST_TO, grad, shape=tuple(x.shape))
        grads.append(grad)
    return tuple(grads)


EINSUM = define("einsum", CONTRACTION, _einsum_impl, _einsum_rule, _einsum_vjp, lowering=HOST,
                reads=tuple(range(8)))


# identity-like ops that a trace must see (detach, clone, device moves)
def _to_device_impl(xp, a, *, device):
    from eager.backend import to_device
    return to_device(a, device)


STOP_GRADIENT = define("stop_gradient", ELEMENTWISE, lambda xp, a: a, lambda a: a, None, "{0}", view=True)
COPY = define("copy", ELEMENTWISE, lambda xp, a: a.copy(), lambda a: a, lambda g, out, a: (g,), "{0}")
TO_DEVICE = define("to_device", OTHER, _to_device_impl, lambda a, *, device: a,
                   lambda g, out, a, *, device: (g.to(a.device),))


# ---------------------------------------------------------------- fused eager rows (a tracer sees their decomposition)


def _plain_backward() -> bool:
    """A backward that builds no graph (no create_graph) and feeds no trace: a fused row's VJP may then compute on
    arrays directly; otherwise it uses Tensor ops, so double backward and traced train steps see every op."""
    from eager.autograd.mode import MODE
    mode = MODE.get()
    return not (mode.grad_enabled or mode.recorders)


def _cross_entropy_impl(xp, x, target, *, ignore_index, reduction):
    shifted = x - x.max(axis=1, keepdims=True)
    valid = target != ignore_index
    picked = xp.take_along_axis(shifted, xp.where(valid, target, 0)[:, None], axis=1)[:, 0]
    nll = (xp.log(xp.exp(shifted).sum(axis=1)) - picked) * valid  # -log_softmax at the target, 0 where ignored
    if reduction == "none":
        return nll
    return nll.sum() / valid.sum(dtype=x.dtype) if reduction == "mean" else nll.sum()


def _cross_entropy_rule(x, target, *, ignore_index, reduction):
    if len(x.shape) != 2 or x.dtype.kind != "f" or target.shape != x.shape[:1] or target.dtype.kind not in "iu":
        raise ShapeError(f"cross_entropy: the fused row takes float logits [N, C] and int targets [N], got "
                         f"{describe(x)} and {describe(target)}; call eager.nn.functional.cross_entropy.")
    return Aval(x.shape[:1] if reduction == "none" else (), x.dtype)


def _cross_entropy_vjp(g, out, x, target, *, ignore_index, reduction):
    """(softmax(x) - onehot(target)) scaled by g (and 1 / count for the mean), 0 on ignored rows."""
    if _plain_backward():
        from eager.tensor import Tensor
        return Tensor._make(_cross_entropy_grad(x._xp(), x._data, target._data, g._data, ignore_index, reduction),
                            False, None), None
    from eager import ops
    from eager.creation import arange
    valid = (target != ignore_index).to(x.dtype)
    onehot = (target.unsqueeze(1) == arange(x.shape[1], device=x.device)).to(x.dtype)
    weight = valid if reduction != "mean" else valid / valid.sum()
    scale = (weight * g).unsqueeze(1) if reduction == "none" else weight.unsqueeze(1) * g
    return ((ops.softmax(x, 1) - onehot) * scale, None)


def _cross_entropy_grad(xp, x, target, g, ignore_index, reduction):
    e = xp.exp(x - x.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    valid = target != ignore_index
    rows = xp.arange(x.shape[0])
    e[rows, xp.where(valid, target, 0)] -= 1
    weight = valid.astype(x.dtype)
    if reduction == "mean":
        weight /= valid.sum(dtype=x.dtype)
    e *= (weight * g)[:, None] if reduction == "none" else weight[:, None] * g
    return e


def _cross_entropy_decomposition(x, target, *, ignore_index, reduction):
    from eager import ops
    from eager.nn.functional import _class_index_loss
    return _class_index_loss("cross_entropy", ops.log_softmax(x, 1), target, None, ignore_index, reduction, 0.0)


CROSS_ENTROPY = define("cross_entropy", OTHER, _cross_entropy_impl, _cross_entropy_rule, _cross_entropy_vjp,
                       reads=(0, 1), decomposition=_cross_entropy_decomposition)


def _linear_impl(xp, x, w, *bias):
    out = xp.matmul(x, w.T)  # BLAS reads the transposed weight in place
    if bias:
        out += bias[0]
    return out


def _linear_rule(x, w, *bias):
    ok = len(x.shape) == 2 and len(w.shape) == 2 and x.shape[1] == w.shape[1] and x.dtype == w.dtype and \
        x.dtype.kind == "f" and all(b.shape == (w.shape[0],) and b.dtype == w.dtype for b in bias)
    if not ok:
        shown = ", ".join(describe(a) for a in (x, w, *bias))
        raise ShapeError(f"linear: the fused row takes x [N, in], weight [out, in] and bias [out] of one float dtype, "
                         f"got {shown}; call eager.nn.functional.linear.")
    return Aval((x.shape[0], w.shape[0]), x.dtype)


def _linear_vjp(g, out, x, w, *bias):
    """dx = g W, dW = g^T x (row-major like W), db = sum over rows of g; each only for an input that wants it."""
    wants = (_needs(x), _needs(w), bool(bias) and _needs(bias[0]))
    if _plain_backward():
        from eager.tensor import Tensor
        a, wd, gd = x._data, w._data, g._data
        grads = (gd @ wd if wants[0] else None, gd.T @ a if wants[1] else None,
                 gd.sum(axis=0) if wants[2] else None)
        return tuple(None if v is None else Tensor._make(v, False, None) for v in grads)[:2 + len(bias)]
    grads = (g @ w if wants[0] else None, _mT(g) @ x if wants[1] else None, g.sum(0) if wants[2] else None)
    return grads[:2 + len(bias)]


def _linear_decomposition(x, w, *bias):
    from eager import ops
    out = ops.matmul(x, w.T)
    return out + bias[0] if bias else out


# lowering HOST: a graph never holds this row (a trace records its decomposition), and BLAS library steps are matmul's
LINEAR = define("linear", CONTRACTION, _linear_impl, _linear_rule, _linear_vjp, lowering=HOST, reads=((0, 1), (1, 0)),
                decomposition=_linear_decomposition)
