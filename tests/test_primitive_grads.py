"""Every primitive in the one table, checked row by row.

For each primitive there are sample cases: an eager function that exercises it (broadcasting included for
binary ops) and the same computation written once over an array namespace ``xp``, so one line serves as
the NumPy forward reference and, with ``xp = jax.numpy``, as the gradient oracle. For every case:

- the forward value matches NumPy in float32 and float64, and the primitive's shape rule predicts the output
  aval of every op the case runs (the tracer trusts shape rules without running anything);
- for differentiable cases: ``gradcheck`` (finite differences, float64) passes, the gradient equals
  ``jax.grad``, and the second-order gradient (``create_graph=True``) equals JAX's too.

A primitive added to the table without a case here (or an explicit non-differentiable reason) fails
``test_every_primitive_has_a_gradient_case``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import eager
from eager import primitives as P
from eager.autograd import gradcheck
from eager.autograd.mode import add_recorder
from eager.backend import CPU
from eager.control import CONTROL_OPS, RESULT
from eager.dispatch import apply, aval_of
from eager.primitives import Aval, IndexSlot

jax = pytest.importorskip("jax")
jnp = jax.numpy

RNG = np.random.default_rng(0)


def uniform(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape)


def positive(*shape):
    return uniform(*shape, lo=0.5, hi=2.0)


def away_from_zero(*shape):
    """Both signs, but |x| >= 0.3: finite differences must not straddle the kink of abs/sign."""
    return np.where(RNG.random(shape) < 0.5, -1.0, 1.0) * uniform(*shape, lo=0.3, hi=2.0)


def distinct(*shape):
    """Values at least 0.1 apart: no ties, so max/argmax/comparisons have one answer and a smooth gradient."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) * 0.25 - n * 0.1).reshape(shape)


@dataclass(frozen=True)
class Case:
    """One sample: ``fn(*eager_tensors)`` and ``ref(xp, *arrays)`` compute the same thing.

    Float64 inputs are differentiated; bool/int inputs are constants (conditions, indices).
    """

    id: str
    fn: Callable
    ref: Callable
    inputs: tuple
    differentiable: bool = True
    gradcheck_kw: dict = field(default_factory=dict)


def case(id, fn, ref, *inputs, **kw) -> Case:
    return Case(id, fn, ref, tuple(inputs), **kw)


def _cross_entropy_ref(xp, x, t, reduction):
    """-log_softmax(x)[i, t_i], 0 where t_i is ignored (-100); mean over the rows that are not."""
    logp = x - xp.log(xp.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)
    valid = t != -100
    nll = -xp.take_along_axis(logp, xp.where(valid, t, 0)[:, None], 1)[:, 0] * valid
    return nll if reduction == "none" else nll.sum() / valid.sum(dtype=x.dtype) if reduction == "mean" else nll.sum()


def _index_put_ref(idx):
    def ref(xp, base, values):
        if xp is np:
            out = base.copy()
            out[idx] = values
            return out
        return base.at[idx].set(values)
    return ref


def _index_add_ref(idx):
    def ref(xp, base, values):
        if xp is np:
            out = base.copy()
            np.add.at(out, idx, values)
            return out
        return base.at[idx].add(values)
    return ref


def _grid(index, axis):
    """The advanced-indexing key at which gather reads (and scatter writes): index at dim axis, positions elsewhere."""
    return tuple(index if d == axis else np.arange(n).reshape((-1,) + (1,) * (index.ndim - 1 - d))
                 for d, n in enumerate(index.shape))


def _scatter_ref(axis, add=False):
    def ref(xp, a, index, src):
        key, region = _grid(index, axis), src[tuple(slice(0, n) for n in index.shape)]
        if xp is np:
            out = a.copy()
            if add:
                np.add.at(out, key, region)
            else:
                out[key] = region
            return out
        return a.at[key].add(region) if add else a.at[key].set(region)
    return ref


def _last_write_ref(xp, a, index, src):
    out = a.copy()
    for j, i in enumerate(index):  # one write after another: the last one to a position stays
        out[i] = src[j]
    return out


def _unfold_ref(dim, size, step, count):
    def ref(xp, x):
        windows = [xp.moveaxis(xp.take(x, np.arange(i * step, i * step + size), axis=dim), dim, -1)
                   for i in range(count)]
        return xp.stack(windows, axis=dim)
    return ref


def _comparison_cases(name, op):
    eager_op = getattr(eager, name)
    return [case("broadcast", lambda a, b: eager_op(a, b), lambda xp, a, b: op(a, b), distinct(2, 3), distinct(3),
                 differentiable=False),
            case("scalar", lambda a: eager_op(a, 0.0), lambda xp, a: op(a, 0.0), distinct(2, 3), differentiable=False)]


def _bitwise_cases(name, op):
    eager_op = getattr(eager, name)
    return [case("broadcast", lambda a, b: eager_op(a, b), lambda xp, a, b: op(a, b), INTS, INTS[0],
                 differentiable=False),
            case("scalar", lambda a: eager_op(a, -6), lambda xp, a: op(a, -6), INTS, differentiable=False),
            case("bool", lambda a, b: eager_op(a, b), lambda xp, a, b: op(a, b), MASK, MASK[::-1],
                 differentiable=False)]



def _conv_windows(x, kernel, stride, padding, dilation):
    """(padded x, [(output position, window key)]): a loop over output positions, written apart from the impl."""
    import itertools
    xpad = np.pad(x, ((0, 0), (0, 0)) + tuple(padding))
    out = [(xpad.shape[2 + i] - dilation[i] * (k - 1) - 1) // stride[i] + 1 for i, k in enumerate(kernel)]
    positions = []
    for pos in itertools.product(*map(range, out)):
        key = tuple(slice(p * s, p * s + d * (k - 1) + 1, d) for p, s, d, k in zip(pos, stride, dilation, kernel))
        positions.append((pos, key))
    return xpad, out, positions


def _lax_conv(x, w, stride, padding, dilation, groups):
    return jax.lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation, feature_group_count=groups,
                                        precision=jax.lax.Precision.HIGHEST)


def _conv_ref(stride, padding, dilation, groups):
    """conv(x, w) by loops over output positions and groups (NumPy), or jax.lax.conv_general_dilated (JAX)."""
    def ref(xp, x, w):
        if xp is not np:
            return _lax_conv(x, w, stride, padding, dilation, groups)
        xpad, out, positions = _conv_windows(x, w.shape[2:], stride, padding, dilation)
        y = np.zeros((x.shape[0], w.shape[0], *out), x.dtype)
        cg, og = x.shape[1] // groups, w.shape[0] // groups
        for pos, key in positions:
            for g in range(groups):
                patch = xpad[(slice(None), slice(g * cg, (g + 1) * cg)) + key]
                wg = w[g * og:(g + 1) * og]
                y[(slice(None), slice(g * og, (g + 1) * og)) + pos] = np.einsum(
                    "nck,ock->no", patch.reshape(*patch.shape[:2], -1), wg.reshape(*wg.shape[:2], -1))
        return y
    return ref


def _conv_transpose_ref(stride, padding, dilation, groups, size):
    """The input gradient of conv: a scatter of g times w over the windows (NumPy), or jax.vjp of lax's conv."""
    def ref(xp, g, w):
        x = np.zeros((g.shape[0], w.shape[1] * groups, *size), g.dtype)
        if xp is not np:
            return jax.vjp(lambda x: _lax_conv(x, w, stride, padding, dilation, groups), x)[1](g)[0]
        xpad, _, positions = _conv_windows(x, w.shape[2:], stride, padding, dilation)
        cg, og = w.shape[1], w.shape[0] // groups
        for pos, key in positions:
            for k in range(groups):
                region = (slice(None), slice(k * cg, (k + 1) * cg)) + key
                wk = w[k * og:(k + 1) * og]
                xpad[region] += np.einsum("no,ock->nck", g[(slice(None), slice(k * og, (k + 1) * og)) + pos],
                                          wk.reshape(*wk.shape[:2], -1)).reshape(xpad[region].shape)
        return xpad[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(padding, size))]
    return ref


def _conv_weight_grad_ref(stride, padding, dilation, groups, kernel):
    def ref(xp, x, g):
        w = np.zeros((g.shape[1], x.shape[1] // groups, *kernel), x.dtype)
        if xp is not np:
            return jax.vjp(lambda w: _lax_conv(x, w, stride, padding, dilation, groups), w)[1](g)[0]
        xpad, _, positions = _conv_windows(x, kernel, stride, padding, dilation)
        cg, og = x.shape[1] // groups, g.shape[1] // groups
        for pos, key in positions:
            for k in range(groups):
                patch = xpad[(slice(None), slice(k * cg, (k + 1) * cg)) + key]
                w[k * og:(k + 1) * og] += np.einsum("nck,no->ock", patch.reshape(*patch.shape[:2], -1),
                                                    g[(slice(None), slice(k * og, (k + 1) * og)) + pos]
                                                    ).reshape(og, cg, *kernel)
        return w
    return ref


def _conv_case(id, x_shape, w_shape, stride, padding, dilation, groups):
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return case(id, lambda x, w: apply(P.CONV, x, w, **p), _conv_ref(**p), uniform(*x_shape), uniform(*w_shape))


def _conv_transpose_case(id, x_shape, w_shape, stride, padding, dilation, groups):
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x, w = np.zeros(x_shape), np.zeros(w_shape)
    g_shape = _conv_ref(**p)(np, x, w).shape
    size = tuple(x_shape[2:])
    return case(id, lambda g, w: apply(P.CONV_TRANSPOSE, g, w, size=size, **p), _conv_transpose_ref(**p, size=size),
                uniform(*g_shape), uniform(*w_shape))


def _conv_weight_grad_case(id, x_shape, w_shape, stride, padding, dilation, groups):
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    g_shape = _conv_ref(**p)(np, np.zeros(x_shape), np.zeros(w_shape)).shape
    kernel = tuple(w_shape[2:])
    return case(id, lambda x, g: apply(P.CONV_WEIGHT_GRAD, x, g, kernel=kernel, **p),
                _conv_weight_grad_ref(**p, kernel=kernel), uniform(*x_shape), uniform(*g_shape))


# (id, x shape, weight shape, stride, padding pairs, dilation, groups): strides that leave input rows unread,
# asymmetric padding ("same" with an even kernel), dilation, groups, and a 1-D convolution
CONV_SETUPS = [
    ("2d_plain", (2, 3, 5, 4), (4, 3, 3, 2), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ("2d_strided_padded_dilated", (1, 2, 6, 7), (3, 2, 2, 3), (2, 3), ((1, 0), (2, 1)), (2, 1), 1),
    ("2d_groups", (2, 4, 4, 4), (6, 2, 3, 3), (2, 1), ((1, 1), (0, 1)), (1, 1), 2),
    ("1d_depthwise", (2, 3, 7), (3, 1, 3), (2,), ((1, 2),), (2,), 3),
]

INTS = np.array([[-7, 0, 5], [3, -1, 12]])
OFF_GRID = np.array([[-1.7, -0.3, 0.4], [1.2, 2.6, 3.9]])  # no integers or halves: rounding is smooth nearby
REPEATED = np.array([0, 2, 0, 0])  # repeated indices: their gradients must accumulate
MASK = np.array([[True, False, True], [False, True, True]])

# Sample cases keyed by primitive name. Comments say why a case is there when it is not obvious.
CASES: dict[str, list[Case]] = {
    "neg": [case("neg", lambda x: -x, lambda xp, x: -x, uniform(2, 3))],
    "exp": [case("exp", lambda x: x.exp(), lambda xp, x: xp.exp(x), uniform(2, 3))],
    "log": [case("log", lambda x: x.log(), lambda xp, x: xp.log(x), positive(2, 3))],
    "sqrt": [case("sqrt", lambda x: x.sqrt(), lambda xp, x: xp.sqrt(x), positive(2, 3))],
    "tanh": [case("tanh", lambda x: x.tanh(), lambda xp, x: xp.tanh(x), uniform(2, 3))],
    "sin": [case("sin", lambda x: x.sin(), lambda xp, x: xp.sin(x), uniform(2, 3))],
    "cos": [case("cos", lambda x: x.cos(), lambda xp, x: xp.cos(x), uniform(2, 3))],
    "abs": [case("abs", lambda x: x.abs(), lambda xp, x: xp.abs(x), away_from_zero(2, 3))],
    "relu": [case("relu", lambda x: x.relu(), lambda xp, x: xp.maximum(x, 0), away_from_zero(2, 3))],
    "sign": [case("sign", lambda x: x.sign() * x, lambda xp, x: xp.sign(x) * x, away_from_zero(2, 3))],
    "sigmoid": [
        case("sigmoid", lambda x: x.sigmoid(), lambda xp, x: 1 / (1 + xp.exp(-x)), uniform(2, 3)),
        # the stable impl takes two branches: both must be right far from 0
        case("sigmoid_large", lambda x: x.sigmoid(), lambda xp, x: 1 / (1 + xp.exp(-x)),
             np.array([-30.0, -8.0, 8.0, 30.0])),
    ],
    "erf": [case("erf", lambda x: x.erf(), lambda xp, x: _special(xp, "erf", x), uniform(2, 3))],
    "erfc": [
        case("erfc", lambda x: x.erfc(), lambda xp, x: _special(xp, "erfc", x), uniform(2, 3)),
        # where 1 - erf(x) has cancelled to nothing in float32, erfc keeps its value
        case("erfc_tail", lambda x: eager.erfc(x), lambda xp, x: _special(xp, "erfc", x), np.array([3.0, 4.5, 6.0]),
             gradcheck_kw=dict(atol=1e-12)),
    ],
    "add": [
        case("same_shape", lambda a, b: a + b, lambda xp, a, b: a + b, uniform(2, 3), uniform(2, 3)),
        case("row_broadcast", lambda a, b: a + b, lambda xp, a, b: a + b, uniform(2, 3), uniform(3)),
        case("outer_broadcast", lambda a, b: a + b, lambda xp, a, b: a + b, uniform(2, 1), uniform(1, 3)),
        case("scalar", lambda a: 2.5 + a, lambda xp, a: 2.5 + a, uniform(2, 3)),
    ],
    "sub": [
        case("row_broadcast", lambda a, b: a - b, lambda xp, a, b: a - b, uniform(2, 3), uniform(3)),
        case("rscalar", lambda a: 1.5 - a, lambda xp, a: 1.5 - a, uniform(2, 3)),
    ],
    "mul": [
        case("same_shape", lambda a, b: a * b, lambda xp, a, b: a * b, uniform(2, 3), uniform(2, 3)),
        case("col_broadcast", lambda a, b: a * b, lambda xp, a, b: a * b, uniform(2, 3), uniform(2, 1)),
        case("rank_broadcast", lambda a, b: a * b, lambda xp, a, b: a * b, uniform(2, 1, 3), uniform(4, 1)),
        case("self", lambda a: a * a, lambda xp, a: a * a, uniform(3)),  # both operands are one tensor
        case("scalar", lambda a: a * -3.0, lambda xp, a: a * -3.0, uniform(2, 3)),
    ],
    "div": [
        case("same_shape", lambda a, b: a / b, lambda xp, a, b: a / b, uniform(2, 3), away_from_zero(2, 3)),
        case("broadcast", lambda a, b: a / b, lambda xp, a, b: a / b, uniform(2, 3), away_from_zero(3)),
        case("rscalar", lambda b: 2.0 / b, lambda xp, b: 2.0 / b, away_from_zero(2, 3)),
    ],
    "pow": [
        case("tensor_tensor", lambda a, b: a ** b, lambda xp, a, b: a ** b, positive(2, 3), uniform(3)),
        case("int_exponent", lambda a: a ** 3, lambda xp, a: a ** 3, uniform(2, 3)),  # negative bases too
        case("float_exponent", lambda a: a ** -1.5, lambda xp, a: a ** -1.5, positive(2, 3)),
        case("scalar_base", lambda b: 2.0 ** b, lambda xp, b: 2.0 ** b, uniform(2, 3)),
    ],
    "maximum": [
        case("broadcast", lambda a, b: eager.maximum(a, b), lambda xp, a, b: xp.maximum(a, b),
             distinct(2, 3), distinct(3)),
        # ties split the gradient evenly (PyTorch and JAX agree; so do central differences)
        case("ties", lambda a, b: eager.maximum(a, b), lambda xp, a, b: xp.maximum(a, b),
             np.array([1.0, 2.0, -1.0]), np.array([1.0, 0.5, -1.0])),
        case("scalar", lambda a: eager.maximum(a, 0.25), lambda xp, a: xp.maximum(a, 0.25), distinct(2, 3)),
    ],
    "minimum": [
        case("broadcast", lambda a, b: eager.minimum(a, b), lambda xp, a, b: xp.minimum(a, b),
             distinct(2, 3), distinct(2, 1)),
        case("ties", lambda a, b: eager.minimum(a, b), lambda xp, a, b: xp.minimum(a, b),
             np.array([1.0, 2.0]), np.array([1.0, 3.0])),
    ],
    "where": [
        case("broadcast", lambda c, x, y: eager.where(c, x, y), lambda xp, c, x, y: xp.where(c, x, y),
             MASK, uniform(2, 3), uniform(3)),
        case("scalar_branch", lambda c, x: eager.where(c, x, 0.0), lambda xp, c, x: xp.where(c, x, 0.0),
             MASK, uniform(2, 3)),
    ],
    "cast": [
        # through float32 and back: the gradient is cast back to the input's dtype
        case("f64_f32_f64", lambda x: x.float().double(),
             lambda xp, x: x.astype(np.float32).astype(np.float64), uniform(2, 3),
             gradcheck_kw=dict(eps=1e-3, atol=1e-3)),
        case("to_int", lambda x: x.long(), lambda xp, x: x.astype(np.int64), uniform(2, 3) * 3,
             differentiable=False),
    ],
    "sum": [
        case("all", lambda x: x.sum(), lambda xp, x: xp.sum(x), uniform(2, 3)),
        case("dim", lambda x: x.sum(dim=1), lambda xp, x: xp.sum(x, axis=1), uniform(2, 3)),
        case("dims_keepdim", lambda x: x.sum(dim=(0, 2), keepdim=True),
             lambda xp, x: xp.sum(x, axis=(0, 2), keepdims=True), uniform(2, 3, 2)),
        case("negative_dim", lambda x: x.sum(dim=-1), lambda xp, x: xp.sum(x, axis=-1), uniform(2, 3)),
        case("0d_dim0", lambda x: x.sum(dim=0), lambda xp, x: x + 0, uniform()),  # PyTorch accepts dim 0 of a 0-d
        case("size_zero_dim", lambda x: x.sum(dim=0) + 1, lambda xp, x: xp.sum(x, axis=0) + 1, uniform(0, 3)),
    ],
    "max": [
        case("all", lambda x: x.amax(), lambda xp, x: xp.max(x), distinct(2, 3)),
        case("dim_keepdim", lambda x: x.amax(dim=0, keepdim=True), lambda xp, x: xp.max(x, axis=0, keepdims=True),
             distinct(2, 3)),
        case("0d_dim0", lambda x: x.amax(dim=-1), lambda xp, x: x + 0, uniform()),
        # two tied maxima share the gradient evenly (PyTorch's amax, JAX's max, central differences)
        case("ties", lambda x: x.amax(dim=1), lambda xp, x: xp.max(x, axis=1),
             np.array([[1.0, 3.0, 3.0], [2.0, -1.0, 0.0]])),
    ],
    "argmax": [
        case("dim", lambda x: x.argmax(dim=1), lambda xp, x: xp.argmax(x, axis=1), distinct(2, 3),
             differentiable=False),
        case("flat", lambda x: x.argmax(), lambda xp, x: xp.argmax(x), distinct(2, 3), differentiable=False),
    ],
    "reshape": [case("reshape", lambda x: x.reshape(3, -1), lambda xp, x: x.reshape(3, 2), uniform(2, 3))],
    "broadcast_to": [
        case("expand", lambda x: x.expand(2, 3, 4), lambda xp, x: xp.broadcast_to(x, (2, 3, 4)), uniform(3, 1)),
    ],
    "permute": [
        case("permute", lambda x: x.permute(2, 0, 1), lambda xp, x: xp.transpose(x, (2, 0, 1)), uniform(2, 3, 4)),
    ],
    "getitem": [
        case("basic", lambda x: x[1:, ::-1], lambda xp, x: x[1:, ::-1], uniform(3, 3)),
        case("int_none_ellipsis", lambda x: x[..., 1, None], lambda xp, x: x[..., 1, None], uniform(2, 3, 2)),
        case("repeated_indices", lambda x: x[eager.tensor(REPEATED)], lambda xp, x: x[REPEATED], uniform(3, 2)),
        case("two_index_tensors", lambda x: x[eager.tensor([0, 1, 1]), eager.tensor([2, 0, 2])],
             lambda xp, x: x[np.array([0, 1, 1]), np.array([2, 0, 2])], uniform(2, 3)),
        case("bool_mask", lambda x: x[eager.tensor(MASK)], lambda xp, x: x[MASK], uniform(2, 3)),
    ],
    "index_add": [
        case("repeated", lambda b, v: apply(P.INDEX_ADD, b, v, eager.tensor(REPEATED), key=(IndexSlot(0),)),
             _index_add_ref(REPEATED), uniform(3, 2), uniform(4, 2)),
        case("slice", lambda b, v: apply(P.INDEX_ADD, b, v, key=(slice(None), slice(1, 3))),
             _index_add_ref((slice(None), slice(1, 3))), uniform(2, 4), uniform(2, 2)),
    ],
    "index_put": [
        case("slice", lambda b, v: apply(P.INDEX_PUT, b, v, key=(slice(None), slice(1, 3))),
             _index_put_ref((slice(None), slice(1, 3))), uniform(2, 4), uniform(2, 2)),
        case("rows", lambda b, v: apply(P.INDEX_PUT, b, v, eager.tensor([2, 0]), key=(IndexSlot(0),)),
             _index_put_ref(np.array([2, 0])), uniform(3, 2), uniform(2, 2)),
    ],
    "diagonal": [
        case("main", lambda x: x.diagonal(), lambda xp, x: xp.diagonal(x), uniform(3, 4)),
        case("offset_dims", lambda x: x.diagonal(1, 2, 0), lambda xp, x: xp.diagonal(x, 1, 2, 0), uniform(3, 2, 4)),
        case("below", lambda x: eager.ops.diagonal(x, offset=-1), lambda xp, x: xp.diagonal(x, -1), uniform(3, 3)),
    ],
    "unfold": [
        # windows overlap (step < size): the gradient of a shared element adds up over its windows
        case("overlapping", lambda x: x.unfold(1, 3, 2), _unfold_ref(1, 3, 2, 3), uniform(2, 7)),
        case("gaps", lambda x: x.unfold(0, 2, 3), _unfold_ref(0, 2, 3, 2), uniform(6, 2)),
    ],
    "linear": [  # the fused eager row (a trace records matmul, permute and add)
        case("bias", lambda x, w, b: apply(P.LINEAR, x, w, b), lambda xp, x, w, b: x @ w.T + b, uniform(4, 3),
             uniform(2, 3), uniform(2)),
        case("no_bias", lambda x, w: apply(P.LINEAR, x, w), lambda xp, x, w: x @ w.T, uniform(4, 3), uniform(2, 3))],
    "cross_entropy": [  # the fused eager row (a trace records its decomposition)
        case(f"{reduction}_ignored_row", lambda x, t, r=reduction: apply(P.CROSS_ENTROPY, x, t, ignore_index=-100,
                                                                          reduction=r),
             lambda xp, x, t, r=reduction: _cross_entropy_ref(xp, x, t, r), uniform(4, 3), np.array([2, -100, 0, 2]))
        for reduction in ("mean", "sum", "none")],
    "gather": [
        case("repeated", lambda x, i: x.gather(1, i), lambda xp, x, i: xp.take_along_axis(x, i, 1), uniform(2, 4),
             np.array([[0, 2, 2], [1, 0, 3]])),  # repeated indices: their gradients add up
        case("smaller_index", lambda x, i: x.gather(0, i), lambda xp, x, i: xp.take_along_axis(x[:, :2], i, 0),
             uniform(3, 4), np.array([[2, 0], [0, 0]])),
    ],
    "scatter": [
        # src larger than the index: the rest of src gets a zero gradient
        case("rows", lambda a, i, s: a.scatter(1, i, s), _scatter_ref(1), uniform(2, 4), np.array([[3, 0], [1, 2]]),
             uniform(2, 3)),
        case("repeated_last_wins", lambda a, i, s: a.scatter(0, i, s), _last_write_ref, uniform(3), REPEATED,
             uniform(4), differentiable=False),
    ],
    "scatter_add": [
        case("repeated", lambda a, i, s: a.scatter_add(0, i, s), _scatter_ref(0, add=True), uniform(3, 2),
             np.array([[0, 1], [2, 1], [0, 1], [0, 0]]), uniform(4, 2)),
    ],
    "concatenate": [
        case("dim1", lambda a, b, c: eager.cat([a, b, c], dim=1), lambda xp, a, b, c: xp.concatenate([a, b, c], 1),
             uniform(2, 1), uniform(2, 3), uniform(2, 2)),
    ],
    "matmul": [
        case("2d", lambda a, b: a @ b, lambda xp, a, b: a @ b, uniform(2, 3), uniform(3, 4)),
        case("batched", lambda a, b: a @ b, lambda xp, a, b: a @ b, uniform(2, 2, 3), uniform(2, 3, 2)),
        case("broadcast_batch", lambda a, b: a @ b, lambda xp, a, b: a @ b, uniform(2, 1, 2, 3), uniform(3, 3, 2)),
        case("vector_matrix", lambda a, b: a @ b, lambda xp, a, b: a @ b, uniform(3), uniform(3, 2)),
        case("vector_vector", lambda a, b: a @ b, lambda xp, a, b: a @ b, uniform(3), uniform(3)),
    ],
    "conv": [_conv_case(*setup) for setup in CONV_SETUPS],
    "conv_transpose": [_conv_transpose_case(*setup) for setup in CONV_SETUPS],
    "conv_weight_grad": [_conv_weight_grad_case(*setup) for setup in CONV_SETUPS],
    "floor_divide": [
        case("float_broadcast", lambda a, b: a // b, lambda xp, a, b: xp.floor_divide(a, b), uniform(2, 3) * 4,
             away_from_zero(3), differentiable=False),
        case("int_signs", lambda a, b: a // b, lambda xp, a, b: xp.floor_divide(a, b), INTS, np.array([3, -2, 5]),
             differentiable=False),
        case("rscalar", lambda b: 7.0 // b, lambda xp, b: xp.floor_divide(7.0, b), away_from_zero(2, 3),
             differentiable=False),
    ],
    "remainder": [
        # away from the jumps (a / b near an integer) so finite differences see one branch
        case("float_signs", lambda a, b: a % b, lambda xp, a, b: xp.remainder(a, b),
             np.array([[5.3, -5.3, 2.2], [-0.7, 7.9, -3.4]]), np.array([2.0, -1.5, 0.8])),
        case("int", lambda a: a % 3, lambda xp, a: xp.remainder(a, 3), INTS, differentiable=False),
    ],
    **{name: [case(name, lambda x, n=name: getattr(x, n)(), lambda xp, x, n=name: getattr(xp, n)(x), OFF_GRID),
              case(f"{name}_int", lambda x, n=name: getattr(eager, n)(x), lambda xp, x: x + 0, INTS,
                   differentiable=False)]
       for name in ("floor", "ceil", "trunc", "round")},
    "cumsum": [
        case("dim1", lambda x: x.cumsum(1), lambda xp, x: xp.cumsum(x, axis=1), uniform(2, 4)),
        case("dim0_3d", lambda x: eager.cumsum(x, -3), lambda xp, x: xp.cumsum(x, axis=0), uniform(3, 2, 2)),
        case("bool_to_int64", lambda m: m.cumsum(0), lambda xp, m: xp.cumsum(m, axis=0, dtype=np.int64), MASK,
             differentiable=False),
    ],
    "cumprod": [
        case("dim1", lambda x: x.cumprod(1), lambda xp, x: xp.cumprod(x, axis=1), uniform(2, 4)),
        # zeros: at the first zero of a row the gradient skips it; after it, every product holds it
        case("zeros", lambda x: x.cumprod(1), lambda xp, x: xp.cumprod(x, axis=1),
             np.array([[1.5, 0.0, 2.0, 0.0, -1.2], [0.0, 0.7, 0.0, 3.0, 1.1], [0.5, -2.0, 1.5, 0.0, 0.9]])),
    ],
    "argsort": [
        case("ties_ascending", lambda x: x.argsort(1), lambda xp, x: xp.argsort(x, axis=1, kind="stable"),
             np.array([[2.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), differentiable=False),
        case("ties_descending", lambda x: x.argsort(0, descending=True),
             lambda xp, x: np.stack([np.array(sorted(range(3), key=lambda i: -x[i, j]))
                                     for j in range(x.shape[1])], 1), np.array([[1.0, 3.0], [2.0, 3.0], [2.0, 1.0]]),
             differentiable=False),
    ],
    "einsum": [
        case("matmul", lambda a, b: eager.einsum("ij,jk->ik", a, b), lambda xp, a, b: xp.einsum("ij,jk->ik", a, b),
             uniform(2, 3), uniform(3, 4)),
        # k only in the first operand: summed in the forward, broadcast back in its gradient
        case("summed_alone", lambda a, b: eager.einsum("ik,j->ij", a, b), lambda xp, a, b: xp.einsum("ik,j->ij", a, b),
             uniform(2, 3), uniform(4)),
        case("three_operands_batched", lambda a, b, c: eager.einsum("bij,bjk,k->bi", a, b, c),
             lambda xp, a, b, c: xp.einsum("bij,bjk,k->bi", a, b, c), uniform(2, 2, 3), uniform(2, 3, 2), uniform(2)),
        case("ellipsis_implicit", lambda a, b: eager.einsum("...j,kj", a, b),
             lambda xp, a, b: xp.einsum("...j,kj", a, b), uniform(2, 2, 3), uniform(4, 3)),
        case("diagonal_forward_only", lambda a: eager.einsum("ii->i", a), lambda xp, a: xp.einsum("ii->i", a),
             uniform(3, 3), differentiable=False),
    ],
    "copy": [case("clone", lambda x: x.clone(), lambda xp, x: x + 0, uniform(2, 3))],
    "to_device": [case("cpu", lambda x: apply(P.TO_DEVICE, x, device=CPU), lambda xp, x: x + 0, uniform(2, 3))],
    # forward-only rows (see NON_DIFFERENTIABLE)
    **{name: _comparison_cases(name, op) for name, op in {"eq": np.equal, "ne": np.not_equal, "lt": np.less,
                                                           "le": np.less_equal, "gt": np.greater,
                                                           "ge": np.greater_equal}.items()},
    **{name: _bitwise_cases(name, op) for name, op in {"bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
                                                        "bitwise_xor": np.bitwise_xor}.items()},
    "bitwise_not": [case("int", lambda a: ~a, lambda xp, a: xp.invert(a), INTS, differentiable=False),
                    case("bool", lambda m: ~m, lambda xp, m: xp.invert(m), MASK, differentiable=False)],
    "stop_gradient": [case("detach", lambda x: x.detach(), lambda xp, x: x, uniform(2, 3), differentiable=False)],
    "full": [case("full", lambda: eager.full((2, 3), 1.5, dtype=eager.float64),
                  lambda xp: np.full((2, 3), 1.5), differentiable=False)],
}

# Primitives whose outputs carry no gradient, and why. Everything else must have a differentiable case.
NON_DIFFERENTIABLE = {
    **{c: "a comparison: bool output, gradient zero almost everywhere" for c in ("eq", "ne", "lt", "le", "gt", "ge")},
    "argmax": "an int64 index: piecewise constant",
    "argsort": "int64 indices: piecewise constant (sort and topk gather the values, which carries the gradient)",
    "floor_divide": "piecewise constant; PyTorch defines no derivative for it either",
    **{b: "bitwise: integer or bool operands and output" for b in ("bitwise_and", "bitwise_or", "bitwise_xor",
                                                                   "bitwise_not")},
    "stop_gradient": "detach(): stops gradients by definition",
    "full": "creation: no tensor inputs",
    "uniform": "random creation: no tensor inputs (checked in test_random_primitives_draw_the_right_distribution)",
    "normal": "random creation: no tensor inputs (checked in test_random_primitives_draw_the_right_distribution)",
    "randint": "random integers: no tensor inputs (checked in test_random_primitives_draw_the_right_distribution)",
    "randperm": "random permutation: no tensor inputs (see test_random_primitives_draw_the_right_distribution)",
}


def _special(xp, name, x):
    if xp is np:
        import scipy.special
        return getattr(scipy.special, name)(x)
    return getattr(jax.scipy.special, name)(x)


ALL = [pytest.param(name, c, id=f"{name}-{c.id}") for name, cases in CASES.items() for c in cases]
DIFFERENTIABLE = [p for p in ALL if p.values[1].differentiable]


# ---------------------------------------------------------------- helpers


class _Recorder:
    """A minimal tracer stand-in: remembers every primitive application."""

    def __init__(self):
        self.calls = []

    def record(self, prim, inputs, params, out):
        self.calls.append((prim, tuple(aval_of(x) for x in inputs), dict(params), aval_of(out)))

    def mutate(self, x, new):
        pass

    def escape(self, t, kind, value):
        pass


def _tensors(c: Case, dtype=np.float64):
    """Eager inputs: float arrays become tensors of ``dtype`` that require grad (when differentiable)."""
    out = []
    for a in c.inputs:
        if a.dtype.kind == "f":
            out.append(eager.tensor(a.astype(dtype), requires_grad=c.differentiable and dtype == np.float64))
        else:
            out.append(eager.tensor(a))
    return out


def _float_positions(c: Case):
    return tuple(i for i, a in enumerate(c.inputs) if a.dtype.kind == "f")


def _weights(c: Case):
    """Fixed random cotangent, so the checked loss weighs every output element differently."""
    out = np.asarray(c.ref(np, *c.inputs))
    return np.random.default_rng(1).uniform(0.5, 1.5, out.shape)


def _eager_loss(c: Case, w):
    def loss(*ts):
        return (c.fn(*ts) * eager.tensor(w)).sum()
    return loss


def _jax_loss(c: Case, w):
    wrt = _float_positions(c)
    consts = list(c.inputs)

    def loss(*xs):
        args = list(consts)
        for i, x in zip(wrt, xs):
            args[i] = x
        return jnp.sum(c.ref(jnp, *args) * w)
    return loss


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- the table is covered


# control-flow rows take regions, not arrays: their values and gradients (against jax.grad of lax.cond / lax.scan)
# are tests/test_control_flow.py's, and tests/test_primitive_table.py checks that file covers each of them
CONTROL = set(CONTROL_OPS) | {RESULT.name}


def test_every_primitive_has_a_gradient_case():
    missing = [name for name in P.PRIMITIVES if name not in NON_DIFFERENTIABLE and name not in CONTROL
               and not any(c.differentiable for c in CASES.get(name, []))]
    assert not missing, f"primitives without a gradient case (add one to CASES, or a reason to NON_DIFFERENTIABLE): " \
                        f"{missing}"


def test_non_differentiable_list_matches_the_table():
    # a primitive listed as non-differentiable must really have no VJP, and vice versa
    assert {n for n, p in P.PRIMITIVES.items() if p.vjp is None} - CONTROL == set(NON_DIFFERENTIABLE)
    assert set(CASES) | set(NON_DIFFERENTIABLE) | CONTROL == set(P.PRIMITIVES), "cases for primitives that do not exist"


@pytest.mark.parametrize("name, c", ALL)
def test_case_exercises_its_primitive_and_shape_rules_predict_every_output(name, c):
    prim = P.PRIMITIVES[name]
    if prim.decomposition is not None:  # a fused eager row: a recorder is handed its decomposition instead
        inputs = _tensors(c)
        out = c.fn(*inputs)
        assert out.grad_fn is not None and out.grad_fn.name() == prim.backward_name
        assert prim.shape_rule(*[aval_of(x) for x in inputs], **out.grad_fn.params) == aval_of(out)
        return
    rec = _Recorder()
    with add_recorder(rec):
        c.fn(*_tensors(c))
    assert name in [prim.name for prim, *_ in rec.calls]
    for prim, in_avals, params, out_aval in rec.calls:
        assert prim.shape_rule(*in_avals, **params) == out_aval, f"{prim.name} shape rule disagrees with its impl"


# ---------------------------------------------------------------- forward values


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name, c", ALL)
def test_forward_matches_numpy(name, c, dtype):
    out = c.fn(*_tensors(c, dtype))
    cast = [a.astype(dtype) if a.dtype.kind == "f" else a for a in c.inputs]
    expected_dtype = np.asarray(c.ref(np, *cast)).dtype
    expected = np.asarray(c.ref(np, *c.inputs))  # judged against the float64 computation
    assert out.dtype == expected_dtype
    assert out.shape == expected.shape
    tol = dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    if name == "cast" and c.id == "f64_f32_f64":
        tol = dict(rtol=1e-7, atol=1e-7)  # it rounds through float32 on purpose
    np.testing.assert_allclose(out.detach().numpy(), expected, **tol)


def test_random_primitives_draw_the_right_distribution():
    eager.manual_seed(0)
    u, n = eager.rand(20000, dtype=eager.float64), eager.randn(20000)
    assert u.dtype == np.float64 and n.dtype == np.float32 and u.shape == (20000,)
    assert 0 <= u.amin().item() and u.amax().item() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(n.mean().item()) < 0.03 and abs(n.std().item() - 1) < 0.03
    eager.manual_seed(0)
    assert eager.rand(20000, dtype=eager.float64).tolist() == u.tolist()  # manual_seed makes draws repeat
    k, p = eager.randint(3, 7, (20000,)), eager.randperm(50)
    assert k.dtype == np.int64 and set(np.unique(k.numpy())) == {3, 4, 5, 6}
    assert sorted(p.tolist()) == list(range(50)) and p.tolist() != list(range(50))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name, c", DIFFERENTIABLE)
def test_gradcheck_float64(name, c):
    ts = _tensors(c)
    assert gradcheck(c.fn, ts, **c.gradcheck_kw)


@pytest.mark.parametrize("name, c", DIFFERENTIABLE)
def test_gradient_equals_jax_grad(name, c, x64):
    w = _weights(c)
    ts = _tensors(c)
    wrt = [ts[i] for i in _float_positions(c)]
    grads = eager.autograd.grad(_eager_loss(c, w)(*ts), wrt)
    expected = jax.grad(_jax_loss(c, w), argnums=tuple(range(len(wrt))))(*(c.inputs[i] for i in _float_positions(c)))
    for g, e, t in zip(grads, expected, wrt):
        assert g.shape == t.shape and g.dtype == t.dtype
        np.testing.assert_allclose(g.numpy(), np.asarray(e), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, c", DIFFERENTIABLE)
def test_second_order_gradient_equals_jax(name, c, x64):
    """d/dx <grad L(x), v> with create_graph=True: backward rules are themselves differentiable."""
    w = _weights(c)
    ts = _tensors(c)
    positions = _float_positions(c)
    wrt = [ts[i] for i in positions]
    vs = [np.random.default_rng(2).uniform(-1, 1, c.inputs[i].shape) for i in positions]
    grads = eager.autograd.grad(_eager_loss(c, w)(*ts), wrt, create_graph=True)
    inner = sum((g * eager.tensor(v)).sum() for g, v in zip(grads, vs))
    if inner.requires_grad:
        second = eager.autograd.grad(inner, wrt, allow_unused=True)
    else:  # the gradient does not depend on the inputs at all (a linear op)
        second = [None] * len(wrt)

    argnums = tuple(range(len(wrt)))
    jax_grad = jax.grad(_jax_loss(c, w), argnums=argnums)
    jax_inner = lambda *xs: sum(jnp.sum(g * v) for g, v in zip(jax_grad(*xs), vs))
    expected = jax.grad(jax_inner, argnums=argnums)(*(c.inputs[i] for i in positions))
    for g, e in zip(second, expected):
        got = np.zeros_like(np.asarray(e)) if g is None else g.numpy()
        np.testing.assert_allclose(got, np.asarray(e), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fn, ref", [
    (lambda x: x.tanh(), lambda x: jnp.tanh(x)),
    (lambda x: x.exp() * x, lambda x: jnp.exp(x) * x),
    (lambda x: x ** 3, lambda x: x ** 3),
], ids=["tanh", "exp_mul", "cube"])
def test_third_order_gradient_equals_jax(fn, ref, x64):
    x = np.array([0.3, -0.7, 1.1])
    t = eager.tensor(x, requires_grad=True)
    (g1,) = eager.autograd.grad(fn(t).sum(), t, create_graph=True)
    (g2,) = eager.autograd.grad(g1.sum(), t, create_graph=True)
    (g3,) = eager.autograd.grad(g2.sum(), t)
    d = lambda f: lambda x: jax.grad(lambda y: jnp.sum(f(y)))(x)
    np.testing.assert_allclose(g3.numpy(), np.asarray(d(d(d(ref)))(x)), rtol=1e-10)


def test_matmul_hessian_vector_product_equals_jax(x64):
    a, b = uniform(2, 3), uniform(3, 2)
    ta, tb = eager.tensor(a, requires_grad=True), eager.tensor(b, requires_grad=True)
    loss = ((ta @ tb).tanh() ** 2).sum()
    ga, gb = eager.autograd.grad(loss, [ta, tb], create_graph=True)
    hv = eager.autograd.grad((ga * ga).sum() + (gb * gb).sum(), [ta, tb])
    jloss = lambda a, b: jnp.sum(jnp.tanh(a @ b) ** 2)
    jg = jax.grad(jloss, argnums=(0, 1))
    expected = jax.grad(lambda a, b: sum(jnp.sum(g * g) for g in jg(a, b)), argnums=(0, 1))(a, b)
    for g, e in zip(hv, expected):
        np.testing.assert_allclose(g.numpy(), np.asarray(e), rtol=1e-10)


def test_stop_gradient_blocks_the_gradient():
    x = eager.tensor([1.0, 2.0], requires_grad=True)
    y = x.detach() * x
    y.sum().backward()
    assert x.detach().requires_grad is False and x.grad.tolist() == [1.0, 2.0]


def test_aval_prints_as_in_the_ir():
    assert str(Aval((2, 3), np.dtype("float32"))) == "f32[2,3]"
