"""``where`` on NumPy selects through bit masks above a size (NumPy's own where branches per element and is
~5x slower on a random condition): the result must equal ``np.where`` bit for bit, for every dtype, every
broadcast of condition and branches, scalars, NaN, infinities and signed zeros."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eager
from eager.primitives import BITSELECT_MIN_SIZE, PRIMITIVES

where = PRIMITIVES["where"].impl
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.bool_]
BIG = (64, 128)
assert np.prod(BIG) >= BITSELECT_MIN_SIZE


def _values(rng, shape, dtype):
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind == "f":
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype)
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        a.reshape(-1)[: specials.size * 10] = np.tile(specials, 10)[: a.size]
        return a
    return rng.integers(-100, 100, shape).astype(dtype)


def _same_bits(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shapes", [(BIG, BIG, BIG), (BIG, (128,), BIG), ((64, 1), BIG, (1, 128)),
                                    ((1, 128), (64, 1), BIG), ((), BIG, BIG), ((), (), BIG)], ids=str)
def test_large_where_equals_numpy_bit_for_bit(dtype, shapes):
    rng = np.random.default_rng(0)
    c = rng.random(shapes[0]) < 0.5
    x, y = _values(rng, shapes[1], dtype), _values(rng, shapes[2], dtype)
    _same_bits(where(np, c, x, y), np.where(c, x, y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32], ids=lambda d: np.dtype(d).name)
def test_a_python_scalar_branch_keeps_the_tensor_dtype(dtype):
    rng = np.random.default_rng(1)
    x = _values(rng, BIG, dtype)
    c = rng.random(BIG) < 0.5
    _same_bits(where(np, c, 0, x), np.where(c, dtype(0), x))
    _same_bits(where(np, c, x, 3), np.where(c, x, dtype(3)))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 80), cols=st.integers(1, 200), seed=st.integers(0, 2**16),
       broadcast_c=st.booleans())
def test_where_matches_numpy_on_random_shapes_either_side_of_the_fast_path(rows, cols, seed, broadcast_c):
    rng = np.random.default_rng(seed)
    c = rng.random((rows, 1) if broadcast_c else (rows, cols)) < 0.5
    x, y = _values(rng, (rows, cols), np.float32), _values(rng, (cols,), np.float32)
    _same_bits(where(np, c, x, y), np.where(c, x, y))


def test_a_0d_condition_selects_a_whole_large_tensor():
    big = eager.randn(64, 64)
    assert np.array_equal(big.masked_fill(eager.tensor(True), 0.0).numpy(), np.zeros((64, 64), np.float32))
    assert eager.ops.logical_and(eager.tensor(True), big > 0).numpy().sum() == (big.numpy() > 0).sum()


def test_relu_keeps_nan_and_gives_zero_gradient_at_zero_on_the_fast_path():
    a = np.linspace(-2, 2, 8192, dtype=np.float32)
    a[[0, 1, 4096]] = [np.nan, -np.inf, 0.0]
    x = eager.tensor(a, requires_grad=True)
    y = eager.nn.functional.relu(x)
    y.sum().backward()
    np.testing.assert_array_equal(y.detach().numpy(), np.where(a > 0, a, np.where(np.isnan(a), a, 0)))
    assert x.grad.numpy()[4096] == 0.0 and np.isnan(y.detach().numpy()[0])


def test_the_mask_path_runs_from_the_size_threshold_on(monkeypatch):
    import eager.primitives as prims
    calls = []
    real = prims._bitselect
    monkeypatch.setattr(prims, "_bitselect", lambda *a: calls.append(1) or real(*a))
    c = np.ones(BITSELECT_MIN_SIZE, bool)
    where(np, c[:-1], np.zeros(BITSELECT_MIN_SIZE - 1, np.float32), 1.0)
    assert calls == []
    where(np, c, np.zeros(BITSELECT_MIN_SIZE, np.float32), 1.0)
    assert calls == [1]
