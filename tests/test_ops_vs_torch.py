"""The operator and method surface, checked against PyTorch (tinygrad's pattern).

Each case is ONE lambda ``fn(m, *tensors)`` where ``m`` is the ``torch`` or the ``eager`` module: the
same source runs on both, and ``check`` compares output values, dtypes, shapes and the gradients of every
floating input. Float cases run in float32 and float64; promotion cases fix their own dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import eager

torch = pytest.importorskip("torch")

# edge cases (log of 0 over an empty dim, ...) compute inf/NaN on purpose, as PyTorch does, where NumPy warns
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning",
                                        "ignore:invalid value:RuntimeWarning")


@dataclass(frozen=True)
class In:
    """An input: ``kind`` is 'u' (uniform in [-2, 2)), 'pos' (in [0.5, 2)), 'distinct' (no ties) or 'const'.

    Floating inputs require grad; ``dtype=None`` means the float dtype the test is parametrised with.
    """

    shape: tuple = ()
    kind: str = "u"
    dtype: str | None = None
    value: object = None
    grad: bool = True

    def make(self, rng, float_dtype):
        if self.kind == "const":
            return np.asarray(self.value, dtype=self.dtype)
        if self.kind == "distinct":
            n = int(np.prod(self.shape))
            data = (rng.permutation(n) * 0.25 - n * 0.1).reshape(self.shape)
        elif self.kind == "pos":
            data = rng.uniform(0.5, 2.0, self.shape)
        else:
            data = rng.uniform(-2.0, 2.0, self.shape)
        dtype = self.dtype or float_dtype
        return (data * 3).round() if np.dtype(dtype).kind == "i" else data.astype(dtype)


def U(*shape, dtype=None): return In(shape, "u", dtype)
def Pos(*shape): return In(shape, "pos")
def D(*shape): return In(shape, "distinct")
def C(value, dtype=None): return In(kind="const", value=value, dtype=dtype, grad=False)


def _lib_tensor(m, array, requires_grad):
    t = m.tensor(array)
    return t.requires_grad_(True) if requires_grad else t


def _flat(out):
    """Outputs as a flat list (max(dim) gives (values, indices) inside a tuple of outputs)."""
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else [out]


def _run(m, fn, arrays, specs, weights):
    ts = [_lib_tensor(m, a, s.grad and a.dtype.kind == "f") for a, s in zip(arrays, specs)]
    outs = _flat(fn(m, *ts))
    diff = [(o, w) for o, w in zip(outs, weights) if o.requires_grad]
    if diff:
        sum((o * m.tensor(w)).sum() for o, w in diff).backward()
    values = [o.detach().numpy() for o in outs]
    grads = [None if not t.requires_grad or t.grad is None else t.grad.numpy() for t in ts]
    return values, grads


def check(fn, specs, float_dtype=np.float64, seed=0):
    """Run ``fn`` on torch and on eager with the same inputs; values, dtypes and gradients must agree."""
    rng = np.random.default_rng(seed)
    arrays = [s.make(rng, float_dtype) for s in specs]
    with torch.no_grad():  # only to learn output shapes for the fixed cotangents
        probe = _flat(fn(torch, *[torch.tensor(a) for a in arrays]))
    wrng = np.random.default_rng(seed + 1)
    weights = [wrng.uniform(0.5, 1.5, tuple(o.shape)).astype(str(o.dtype).replace("torch.", ""))
               if o.is_floating_point() else None for o in probe]
    t_values, t_grads = _run(torch, fn, arrays, specs, weights)
    e_values, e_grads = _run(eager, fn, arrays, specs, weights)
    assert len(e_values) == len(t_values)
    for i, (e, t) in enumerate(zip(e_values, t_values)):
        assert e.dtype == t.dtype, f"output {i}: eager gives {e.dtype}, torch {t.dtype}"
        assert e.shape == t.shape, f"output {i}: eager gives shape {e.shape}, torch {t.shape}"
        np.testing.assert_allclose(e, t, **TOLERANCE.get(e.dtype, {}), err_msg=f"output {i}")
    for i, (e, t) in enumerate(zip(e_grads, t_grads)):
        assert (e is None) == (t is None), f"input {i}: eager grad {e}, torch grad {t}"
        if e is not None:
            assert e.dtype == t.dtype
            np.testing.assert_allclose(e, t, **TOLERANCE[e.dtype], err_msg=f"gradient of input {i}")


# written-down tolerances: float32 allows a few ulps of reassociation (e.g. a sum order); others are exact
TOLERANCE = {np.dtype("float32"): dict(rtol=1e-5, atol=1e-6), np.dtype("float64"): dict(rtol=1e-11, atol=1e-12)}


def _setitem(key_fn):
    """y = x * 1; y[key] = v: written in place on a non-leaf, gradients reach both x and v."""
    def fn(m, x, *v):
        y = x * 1
        y[key_fn(m)] = v[0] if v else 2.5
        return y
    return fn


OPS = [
    # arithmetic, with broadcasting and Python scalars on either side
    ("add", lambda m, a, b: a + b, [U(2, 3), U(3)]),
    ("add_scalar", lambda m, a: 1.5 + a + 2, [U(2, 3)]),
    ("sub", lambda m, a, b: a - b, [U(2, 1), U(1, 3)]),
    ("rsub", lambda m, a: 3 - a, [U(2, 3)]),
    ("mul", lambda m, a, b: a * b, [U(4, 1, 3), U(2, 1)]),
    ("mul_self", lambda m, a: a * a * a, [U(3)]),
    ("div", lambda m, a, b: a / b, [U(2, 3), Pos(3)]),
    ("rdiv", lambda m, a: 2 / a, [Pos(2, 3)]),
    ("neg", lambda m, a: -a, [U(2, 3)]),
    ("pow_int", lambda m, a: a ** 2, [U(2, 3)]),
    ("pow_tensor", lambda m, a, b: a ** b, [Pos(2, 3), U(3)]),
    ("rpow", lambda m, a: 2 ** a, [U(2, 3)]),
    ("pow_method", lambda m, a: a.pow(0.5), [Pos(4)]),
    ("pow_zero_at_zero", lambda m, a: a ** 0, [C([0.0, 1.5]), ]),
    ("pow_zero_grad_at_zero", lambda m, a: (a * 1) ** 0 + a, [U(3)]),
    # unary
    ("exp", lambda m, a: a.exp(), [U(2, 3)]),
    ("log", lambda m, a: a.log(), [Pos(2, 3)]),
    ("sqrt", lambda m, a: a.sqrt(), [Pos(2, 3)]),
    ("tanh", lambda m, a: a.tanh(), [U(2, 3)]),
    ("sigmoid", lambda m, a: a.sigmoid(), [U(2, 3)]),
    ("sigmoid_fn", lambda m, a: m.sigmoid(a * 10), [U(5)]),
    ("relu", lambda m, a: a.relu(), [D(2, 3)]),
    ("relu_fn", lambda m, a: m.relu(a), [D(2, 3)]),
    ("relu_at_zero", lambda m, a: (a * 0).relu() + a, [U(3)]),  # gradient 0 at 0, as in PyTorch
    ("abs", lambda m, a: abs(a) + a.abs(), [D(2, 3)]),
    ("sign", lambda m, a: (a.sign(), m.sign(a) * a), [D(2, 3)]),
    ("sin", lambda m, a: a.sin(), [U(2, 3)]),
    ("cos", lambda m, a: a.cos(), [U(2, 3)]),
    ("erf", lambda m, a: (a.erf(), m.erf(a * 2)), [U(2, 3)]),
    ("erfc", lambda m, a: (a.erfc(), m.erfc(a * 3)), [U(2, 3)]),
    ("erfc_tail", lambda m, a: m.erfc(a + 3), [Pos(4)]),  # 1 - erf(x) would have cancelled to nothing here
    # the in-place forms made from the table: x.exp_() holds x.exp(), gradients flow through the rebinding
    ("unary_in_place", lambda m, a: ((a * 1).exp_(), (a * 1).erfc_(), (a * 1).tanh_(), (a * 1).neg_()), [U(2, 3)]),
    ("clamp", lambda m, a: a.clamp(min=-0.6, max=0.6), [D(2, 4)]),
    ("clamp_min", lambda m, a: a.clamp(min=0.1), [D(2, 4)]),
    ("clamp_fn", lambda m, a: m.clamp(a, max=0.3), [D(2, 4)]),
    ("clamp_bounds_inclusive", lambda m, a: (a * 0 + 1).clamp(min=1.0, max=1.0) * a, [U(3)]),
    ("clamp_tensor_bounds", lambda m, a, lo: a.clamp(min=lo), [D(2, 3), D(3)]),
    ("maximum", lambda m, a, b: m.maximum(a, b), [D(2, 3), D(3)]),
    ("minimum", lambda m, a, b: m.minimum(a, b), [D(2, 3), D(2, 1)]),
    ("maximum_ties", lambda m, a, b: m.maximum(a * 0, b * 0) * (a + b), [U(3), U(3)]),
    ("where", lambda m, a, b: m.where(a > 0, a, b), [D(2, 3), U(3)]),
    ("where_scalar", lambda m, a: m.where(a > 0, a, 0.0), [D(2, 3)]),
    ("masked_fill", lambda m, a: a.masked_fill(a < 0, 1.5), [D(2, 3)]),
    # comparisons (bool results; tensors, broadcasting and scalars)
    ("eq", lambda m, a, b: (a == b, a == a, a != b), [D(2, 3), D(3)]),
    ("lt_gt", lambda m, a, b: (a < b, a > b, a <= 0.5, a >= -0.25, 1 < a), [D(2, 3), D(3)]),
    # reductions
    ("sum", lambda m, a: (a.sum(), a.sum(dim=1), a.sum(dim=(0, 2), keepdim=True), m.sum(a, -1)), [U(2, 3, 2)]),
    ("mean", lambda m, a: (a.mean(), a.mean(dim=0), a.mean(dim=-1, keepdim=True)), [U(2, 3)]),
    ("max_all", lambda m, a: a.max(), [D(2, 3)]),
    ("max_dim", lambda m, a: a.max(dim=1), [D(2, 3)]),
    ("max_dim_keepdim", lambda m, a: a.max(dim=0, keepdim=True), [D(2, 3)]),
    ("max_binary", lambda m, a, b: m.max(a, b), [D(2, 3), D(2, 3)]),
    ("min_dim", lambda m, a: a.min(dim=-1), [D(2, 3)]),
    ("min_all", lambda m, a: m.min(a), [D(2, 3)]),
    # ties: the full reduction shares the gradient; max(dim) sends it to the returned index only
    ("max_ties", lambda m, a: (a * 0 + m.tensor([[1.0, 3.0, 3.0]], dtype=a.dtype)).max() * a.sum(), [U(1, 3)]),
    ("max_dim_ties", lambda m, a: a.max(dim=1), [C([[1.0, 3.0, 3.0], [5.0, 5.0, 1.0]])]),
    ("max_dim_ties_grad", lambda m, a: (a * 0 + m.tensor([[1.0, 3.0, 3.0]], dtype=a.dtype) + a).max(dim=1).values,
     [In((1, 3), "const", None, [[0.0, 0.0, 0.0]], grad=True)]),
    ("amax", lambda m, a: (a.amax(dim=1), a.amax(dim=(0, 1), keepdim=True)), [D(2, 3, 2)]),
    ("argmax", lambda m, a: (a.argmax(), a.argmax(dim=1), a.argmax(dim=0, keepdim=True)), [D(2, 3)]),
    ("reductions_0d", lambda m, a: (a.sum(0), a.mean(-1), a.amax(0), a.max(dim=0).values, a.argmax(dim=0),
                                    a.softmax(0), a.sum(0, keepdim=True), a.var(dim=0, unbiased=False)), [U()]),
    ("size_zero_dims", lambda m, a, b: (a.sum(0), a.sum(1), a.reshape(3, 0), m.cat([a, b]), a.T @ a, a * 2),
     [U(0, 3), U(2, 3)]),
    ("var_std", lambda m, a: (a.var(), a.var(dim=1), a.std(dim=0, keepdim=True), a.var(dim=1, unbiased=False),
                              a.std(), a.var(dim=0, correction=0)), [U(3, 4)]),
    # subgradients PyTorch picks: std and norm have gradient 0 (not NaN) where they are 0
    ("std_zero_variance", lambda m, a: (a[m.tensor([1, 1])].std(), a[m.tensor([[0, 0], [1, 2]])].std(dim=1)), [U(3)]),
    ("norm", lambda m, a: (a.norm(), a.norm(dim=1), (a * 0).norm(), a.norm(p=1), a.norm(p=3, dim=0),
                           (a * 0).norm(p=3)), [U(2, 3)]),
    ("clamp_maximum_propagate_nan", lambda m, a: (a.clamp(min=0.0), m.maximum(a, m.zeros(3, dtype=a.dtype))),
     [C([np.nan, -1.0, 2.0])]),
    ("softmax_over_empty_dim", lambda m, a: (a.softmax(1), a.log_softmax(1), m.logsumexp(a, 1), m.logsumexp(a, 0)),
     [U(2, 0)]),
    ("logsumexp", lambda m, a: (m.logsumexp(a, 1), m.logsumexp(a * 300, 0)), [U(2, 3)]),
    # movement
    ("reshape_view", lambda m, a: (a.reshape(3, 2), a.view(-1), a.reshape(2, 1, 3), a.view(6, 1)), [U(2, 3)]),
    ("flatten", lambda m, a: (a.flatten(), a.flatten(1), a.flatten(0, 1)), [U(2, 3, 2)]),
    ("squeeze_unsqueeze", lambda m, a: (a.squeeze(), a.squeeze(1), a.squeeze(0), a.unsqueeze(0), a.unsqueeze(-1)),
     [U(2, 1, 3)]),
    ("transpose_permute_T", lambda m, a, b: (a.transpose(0, 2), a.permute(1, 2, 0), b.T, b.t(), a.transpose(-1, 0)),
     [U(2, 3, 4), U(2, 3)]),
    ("expand", lambda m, a: (a.expand(2, 3, 4), a.expand(-1, 5), a.expand_as(m.zeros(2, 3, 5))), [U(3, 1)]),
    # indexing: basic, advanced (repeated indices accumulate), boolean masks, lists
    ("index_basic", lambda m, a: (a[1], a[:, 1:3], a[..., ::2], a[None, -1], a[1, 2], a[0:1, None, 2]), [U(3, 4)]),
    ("index_repeated", lambda m, a: a[m.tensor([0, 2, 0, 0])], [U(3, 2)]),
    ("index_tensor_and_slice", lambda m, a: a[m.tensor([2, 0]), 1:], [U(3, 3)]),
    ("index_two_tensors", lambda m, a: a[m.tensor([0, 1, 1]), m.tensor([2, 0, 2])], [U(2, 3)]),
    ("index_list", lambda m, a: a[[1, 0, 1]], [U(2, 3)]),
    ("index_negative_tensor", lambda m, a: a[m.tensor([-1, 0])], [U(3, 2)]),
    ("index_mask", lambda m, a: a[a > 0], [D(3, 4)]),
    ("index_2d_index_tensor", lambda m, a: a[m.tensor([[0, 1], [1, 1]])], [U(2, 3)]),
    # an int beside an index tensor is applied first (PyTorch), not as one more advanced index (NumPy)
    ("index_int_beside_tensor", lambda m, a: (a[0, :, m.tensor([0, 1, 1])], a[m.tensor([1, 0]), :, -1],
                                              a[0, None, m.tensor([2])], a[0, ..., m.tensor([3, 0])]), [U(2, 3, 4)]),
    ("setitem_int_beside_tensor", _setitem(lambda m: (0, slice(None), m.tensor([0, 3]))), [U(2, 3, 4), U(3, 2)]),
    ("setitem_scalar", _setitem(lambda m: 0), [U(2, 3)]),
    ("setitem_slice_tensor", _setitem(lambda m: (slice(None), 1)), [U(2, 3), U(2)]),
    ("setitem_broadcast", _setitem(lambda m: slice(0, 2)), [U(3, 4), U(4)]),
    ("setitem_index_tensor", _setitem(lambda m: m.tensor([2, 0])), [U(3, 2), U(2, 2)]),
    ("setitem_mask", lambda m, a: _setitem(lambda m_: a.detach() > 0)(m, a), [D(3, 3)]),
    # joining and splitting
    ("cat", lambda m, a, b: (m.cat([a, b], dim=0), m.cat([a, a, b], 0)), [U(1, 3), U(2, 3)]),
    ("cat_dim", lambda m, a, b: m.cat([a, b], dim=-1), [U(2, 1), U(2, 3)]),
    ("stack", lambda m, a, b: (m.stack([a, b]), m.stack([a, b], dim=1), m.stack([b, a], dim=-1)), [U(2, 3), U(2, 3)]),
    ("split", lambda m, a: a.split(2, dim=1), [U(2, 5)]),
    ("split_sections", lambda m, a: a.split([1, 2], dim=0), [U(3, 2)]),
    ("split_fn", lambda m, a: m.split(a, 1), [U(3, 2)]),
    # matmul: 1-D operands, batches, broadcast batches
    ("matmul_2d", lambda m, a, b: a @ b, [U(2, 3), U(3, 4)]),
    ("matmul_vec_vec", lambda m, a, b: a @ b, [U(3), U(3)]),
    ("matmul_vec_mat", lambda m, a, b: a @ b, [U(3), U(3, 2)]),
    ("matmul_mat_vec", lambda m, a, b: a.matmul(b), [U(2, 3), U(3)]),
    ("matmul_batched", lambda m, a, b: m.matmul(a, b), [U(2, 2, 3), U(2, 3, 4)]),
    ("matmul_broadcast", lambda m, a, b: a @ b, [U(2, 1, 2, 3), U(3, 3, 2)]),
    ("matmul_batch_vec", lambda m, a, b: a @ b, [U(2, 2, 3), U(3)]),
    ("matmul_vec_batch", lambda m, a, b: a @ b, [U(3), U(2, 3, 2)]),
    # softmax family
    ("softmax", lambda m, a: (a.softmax(-1), m.softmax(a, dim=0)), [U(2, 3)]),
    ("log_softmax", lambda m, a: (a.log_softmax(1), m.log_softmax(a, dim=0)), [U(2, 3)]),
    ("softmax_large", lambda m, a: (a * 100).softmax(-1), [U(2, 3)]),  # the max shift keeps it finite
    # composites built from several ops, to exercise graph accumulation
    ("chain", lambda m, a, b: ((a @ b).tanh() * a.sum(1, keepdim=True) - b.mean()).exp().sum(0), [U(2, 3), U(3, 3)]),
]

# dtype promotion: the dtypes are part of the case (values, result dtypes and gradient dtypes must match)
PROMOTION = [
    ("int_plus_float", lambda m, i, f: i + f, [U(3, dtype="int64"), U(3, dtype="float32")]),
    ("f32_plus_f64", lambda m, a, b: a + b, [U(3, dtype="float32"), U(3, dtype="float64")]),
    ("f32_times_f64_0d", lambda m, a, b: a * b, [U(3, dtype="float32"), U(dtype="float64")]),
    ("i32_plus_i64_0d", lambda m, a, b: a + b, [U(3, dtype="int32"), U(dtype="int64")]),
    ("i64_plus_f64_0d", lambda m, a, b: a + b, [U(3, dtype="int64"), U(dtype="float64")]),
    ("int_plus_python_float", lambda m, i: (i + 2.5, 2.5 * i, i - 0.5), [U(3, dtype="int64")]),
    ("f32_with_python_scalars", lambda m, a: (a * 2, a + 2.5, 1 / a, a ** 2), [U(3, dtype="float32")]),
    ("f32_with_numpy_scalar", lambda m, a: a * np.float64(2.0), [U(3, dtype="float32")]),
    ("int_times_int", lambda m, i: (i * 2, i + i, -i, i ** 2), [U(3, dtype="int64")]),
    ("int32_max_dim", lambda m, i: (i.max(dim=0), i.min(dim=1).values, i.amax(), i.sum()), [U(2, 3, dtype="int32")]),
    ("int_pow_int", lambda m, i, j: (i ** j, 2 ** j, i ** 2), [C([2, 3], "int64"), C([2, 1], "int64")]),
    ("int_true_division", lambda m, i, j: i / j, [C([1, 4, 9], "int64"), C([2, 2, 4], "int64")]),
    ("bool_plus_int", lambda m, b: b + 1, [C([True, False], "bool")]),
    ("int_to_float_functions", lambda m, i: (i.exp(), m.erfc(i), i.sqrt(), i.abs(), -i), [C([1, -2, 3], "int64")]),
    ("bool_sum", lambda m, a: (a > 0).sum(), [D(2, 3)]),
    ("int_mean_of_float_cast", lambda m, i: i.float().mean(), [U(4, dtype="int64")]),
    ("where_mixed", lambda m, a, b: m.where(a > 0, a, b), [U(3, dtype="float32"), U(3, dtype="float64")]),
    ("cat_mixed", lambda m, a, b: m.cat([a, b]), [U(2, dtype="float32"), U(2, dtype="float64")]),
    ("to_dtype", lambda m, a: (a.to(m.float64), a.double(), a.float(), a.long()), [U(3, dtype="float32")]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn, specs", [pytest.param(f, s, id=i) for i, f, s in OPS])
def test_op_matches_torch(fn, specs, dtype):
    check(fn, specs, dtype)


@pytest.mark.parametrize("fn, specs", [pytest.param(f, s, id=i) for i, f, s in PROMOTION])
def test_dtype_promotion_matches_torch(fn, specs):
    check(fn, specs)


def test_every_primitive_with_generated_wrappers_has_a_case_here():
    # the table generates eager.X / Tensor.X / Tensor.X_ for these rows: each must be checked against torch
    from eager.primitives import PRIMITIVES
    names = {case[0] for case in OPS}
    missing = [n for n, p in PRIMITIVES.items() if p.api and n not in names]
    assert not missing, f"add a case to OPS for {missing}"


def test_relu_propagates_nan():
    check(lambda m, a: a.relu(), [C([np.nan, -1.0, 2.0])])


def test_matmul_promotes_mixed_float_dtypes_like_the_arithmetic_operators():
    # PyTorch refuses f32 @ f64; eager promotes as for +, -, * (NumPy and JAX do the same)
    a, b = eager.ones(2, 3), eager.ones(3, 2, dtype=eager.float64, requires_grad=True)
    out = a @ b
    out.sum().backward()
    assert out.dtype == eager.float64 and out.tolist() == [[3.0, 3.0], [3.0, 3.0]] and b.grad.dtype == eager.float64


def test_setitem_with_repeated_indices_keeps_one_of_the_written_values():
    # PyTorch leaves the winner unspecified (in practice the last); it must never be a mix of writes
    x = eager.zeros(3)
    x[eager.tensor([0, 0, 2])] = eager.tensor([1.0, 2.0, 3.0])
    assert x.tolist() == [2.0, 0.0, 3.0]


def test_negative_base_with_tensor_exponent_has_nan_exponent_gradient():
    # d(a**b)/db = a**b * log(a) is undefined for a < 0: NaN as in PyTorch and JAX, never a silent 0
    a = eager.tensor([-2.0, 0.0, 2.0], dtype=eager.float64)
    b = eager.tensor([2.0, 2.0, 2.0], dtype=eager.float64, requires_grad=True)
    (a ** b).sum().backward()
    g = b.grad.tolist()
    assert np.isnan(g[0]) and g[1] == 0.0 and g[2] == pytest.approx(4 * np.log(2))
