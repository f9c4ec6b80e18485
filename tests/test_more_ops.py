"""tril/triu, cumsum/cumprod, sort/argsort/topk, einsum, bmm/outer, repeat/flip/roll/unbind, new_* and the
rounding divisions (``//``, ``%``, ``div(rounding_mode=)``, floor/ceil/trunc/round): values, dtypes and gradients
against PyTorch in float64, then the same program eager, traced and compiled, then bad inputs.

Each case is one lambda ``fn(m, *tensors)`` run with ``m = torch`` and ``m = eager`` on the same arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import eager
import tracer
from eager.dispatch import OpError
from eager.primitives import ShapeError

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(0)

A = RNG.standard_normal((3, 4))
B3 = RNG.standard_normal((2, 3, 4))
TIES = np.array([[2.0, 1.0, 2.0, 0.0, 1.0], [np.nan, 3.0, -1.0, 3.0, 0.0]])
ZEROS = np.array([[1.5, 0.0, 2.0, 0.0, -1.2], [0.0, 0.7, 0.0, 3.0, 1.1]])

# name -> (fn(m, *tensors), float64 arrays); every output is compared, and float outputs are differentiated
CASES = {
    "tril": (lambda m, x: m.tril(x), [B3]),
    "tril_diag": (lambda m, x: x.tril(1), [A]),
    "triu_neg_diag": (lambda m, x: m.triu(x, -1), [B3]),
    "causal_mask": (lambda m, x: m.softmax(x.masked_fill(m.ones(4, 4).tril() == 0, float("-inf")), -1),
                    [RNG.standard_normal((2, 4, 4))]),
    "cumsum": (lambda m, x: x.cumsum(1), [A]),
    "cumsum_neg_dim": (lambda m, x: m.cumsum(x, -3), [B3]),
    "cumprod": (lambda m, x: x.cumprod(-1), [A]),
    "cumprod_zeros": (lambda m, x: m.cumprod(x, 1), [ZEROS]),
    "sort": (lambda m, x: m.sort(x, 1), [A]),
    "sort_descending_stable_ties": (lambda m, x: x.sort(dim=1, descending=True, stable=True), [TIES]),
    "sort_ascending_stable_ties": (lambda m, x: x.sort(dim=-1, stable=True), [TIES]),
    "argsort": (lambda m, x: m.argsort(x, 0, descending=True), [A]),
    "topk": (lambda m, x: m.topk(x, 2, dim=1), [A]),
    "topk_smallest_dim0": (lambda m, x: x.topk(2, 0, largest=False), [A]),
    "einsum_attention": (lambda m, q, k: m.einsum("bqd,bkd->bqk", q, k), [B3, RNG.standard_normal((2, 5, 4))]),
    "einsum_ellipsis": (lambda m, x, w: m.einsum("...i,oi->...o", x, w), [B3, RNG.standard_normal((2, 4))]),
    "einsum_implicit_three": (lambda m, a, b, c: m.einsum("ij,jk,k", a, b, c),
                              [A, RNG.standard_normal((4, 2)), RNG.standard_normal(2)]),
    "einsum_list_and_sum": (lambda m, a: m.einsum("ij->", [a]), [A]),
    "einsum_outer_broadcast": (lambda m, a, b: m.einsum("...i,...j->...ij", a, b),
                               [RNG.standard_normal((2, 1, 3)), RNG.standard_normal((4, 2))]),
    "bmm": (lambda m, a, b: m.bmm(a, b), [B3, RNG.standard_normal((2, 4, 2))]),
    "outer": (lambda m, a, b: m.outer(a, b), [A[0], A[1, :3]]),
    "repeat": (lambda m, x: x.repeat(2, 1, 3), [A]),
    "repeat_same_rank": (lambda m, x: x.repeat(1, 2, 1), [B3]),
    "flip": (lambda m, x: m.flip(x, (0, 2)), [B3]),
    "flip_method_and_lr_ud": (lambda m, x: (x.flip(1), m.fliplr(x), m.flipud(x)), [A]),
    "roll": (lambda m, x: m.roll(x, 2, 1), [A]),
    "roll_many_negative": (lambda m, x: x.roll((-1, 5), (0, 2)), [B3]),
    "roll_flat": (lambda m, x: m.roll(x, 5), [A]),
    "unbind": (lambda m, x: m.unbind(x, 1), [A]),
    "remainder": (lambda m, a, b: (a % b, m.remainder(a, 2.5)),
                  [np.array([[5.3, -5.3, 2.2], [-0.7, 7.9, -3.4]]), np.array([2.0, -1.5, 0.8])]),
    "rounding": (lambda m, x: (x.floor(), m.ceil(x), x.trunc(), m.round(x)),
                 [np.array([[-1.7, -0.3, 0.4], [1.2, 2.6, 3.9]])]),
}

INT_CASES = {  # integer inputs: values and dtypes only
    "floor_divide_ints": (lambda m, a, b: (a // b, m.floor_divide(a, 3), -7 // b, a // 2.5),
                          [np.array([[7, -7, 5], [-5, 0, 13]]), np.array([2, -3, 4])]),
    "remainder_ints": (lambda m, a, b: (a % b, m.remainder(a, -3), 10 % b),
                       [np.array([[7, -7, 5], [-5, 0, 13]]), np.array([2, -3, 4])]),
    "div_rounding_modes": (lambda m, a, b: (m.div(a, b, rounding_mode="trunc"), a.div(b, rounding_mode="floor"),
                                            m.div(a, -2, rounding_mode="trunc"), m.div(-9, b, rounding_mode="trunc"),
                                            a.div(b)),
                           [np.array([[7, -7, 5], [-5, 0, 13]]), np.array([2, -3, 4])]),
    "div_rounding_floats": (lambda m, a, b: (m.div(a, b, rounding_mode="trunc"), m.div(a, b, rounding_mode="floor"),
                                             a // b, 7.0 % b, 7.0 // b),
                            [np.array([[7.5, -7.5, 0.3]]), np.array([2.0, -2.0, -0.1])]),
    "cumsum_bool_int32": (lambda m, a, b: (a.cumsum(0), b.cumsum(1), b.cumprod(1)),
                          [np.array([True, False, True]), np.array([[1, 2, 3], [4, 5, 6]], np.int32)]),
    "topk_ints": (lambda m, a: m.topk(a, 2), [np.array([5, 1, 5, 3])]),
    "tril_bool": (lambda m, a: (a.tril(), a.triu()), [np.ones((3, 3), bool)]),
    "float_floor_divide_by_zero": (lambda m, a: (a // 0.0, a % 0.0), [np.array([1.0, -1.0, 0.0])]),
}


def _outputs(out):
    if isinstance(out, (tuple, list)):
        return [o for item in out for o in _outputs(item)]
    return [out]


def _run(m, fn, arrays, grad: bool):
    ts = [m.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    return ts, _outputs(fn(m, *ts))


def _assert_same(got, want, rtol=1e-12):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert str(g.dtype) == str(w.dtype).replace("torch.", ""), f"output {i}: {g.dtype} vs {w.dtype}"
        assert tuple(g.shape) == tuple(w.shape), f"output {i}"
        np.testing.assert_allclose(g.detach().numpy(), w.detach().numpy(), rtol=rtol, atol=1e-12,
                                   err_msg=f"output {i}")


@pytest.mark.parametrize("name", CASES)
def test_values_and_gradients_equal_torch(name):
    fn, arrays = CASES[name]
    ts, got = _run(eager, fn, arrays, True)
    tt, want = _run(torch, fn, arrays, True)
    _assert_same(got, want)
    floats = [(g, w) for g, w in zip(got, want) if w.is_floating_point() and w.requires_grad]
    if not floats:
        return
    loss_e = sum((g * eager.tensor(c)).sum() for (g, _), c in zip(floats, _cotangents(floats)))
    loss_t = sum((w * torch.tensor(c)).sum() for (_, w), c in zip(floats, _cotangents(floats)))
    loss_e.backward()
    loss_t.backward()
    for t, u in zip(ts, tt):
        if u.grad is not None:
            np.testing.assert_allclose(t.grad.numpy(), u.grad.numpy(), rtol=1e-10, atol=1e-12)


def _cotangents(pairs):
    rng = np.random.default_rng(1)
    return [rng.uniform(0.5, 1.5, tuple(w.shape)) for _, w in pairs]


@pytest.mark.parametrize("name", INT_CASES)
def test_integer_values_and_dtypes_equal_torch(name):
    fn, arrays = INT_CASES[name]
    _assert_same(_run(eager, fn, arrays, False)[1], _run(torch, fn, arrays, False)[1])


def test_in_place_forms_and_operators_equal_torch():
    def fn(m, a, b):
        x = a.clone()
        x //= b
        y = a.clone()
        y %= b
        z = a.clone().float()
        z.div_(2, rounding_mode="floor")
        return x, y, z, a.clone().float().tril_(), a.clone().cumsum_(0), a.clone().remainder_(4)
    arrays = [np.array([[7, -7, 5], [-5, 0, 13]]), np.array([2, -3, 4])]
    _assert_same(_run(eager, fn, arrays, False)[1], _run(torch, fn, arrays, False)[1])


def test_new_tensors_take_the_dtype_and_device_of_self():
    x = eager.ones(2, dtype=eager.float64)
    assert x.new_zeros(2, 3).dtype == np.float64 and x.new_zeros((2, 3)).shape == (2, 3)
    assert x.new_ones(1, dtype=eager.int64).tolist() == [1] and x.new_full((2,), 7.0).tolist() == [7.0, 7.0]
    assert x.new_empty(4).shape == (4,) and x.new_tensor([1, 2]).dtype == np.float64
    assert x.new_zeros(2, requires_grad=True).requires_grad


def test_flip_is_a_copy_and_unbind_gives_views_as_in_torch():
    x = eager.arange(4.0)
    f = x.flip(0)
    f[0] = 100.0
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]
    m = eager.zeros(2, 2)
    m.unbind(0)[1][0] = 5.0
    assert m.tolist() == [[0.0, 0.0], [5.0, 0.0]]


def test_cumprod_second_order_gradient_at_zeros_equals_torch():
    x = eager.tensor(ZEROS, requires_grad=True)
    t = torch.tensor(ZEROS, requires_grad=True)
    (g,) = eager.autograd.grad(x.cumprod(1).sum(), x, create_graph=True)
    (u,) = torch.autograd.grad(t.cumprod(1).sum(), t, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), u.detach().numpy(), rtol=1e-12)
    v = np.random.default_rng(3).uniform(-1, 1, ZEROS.shape)
    (h,) = eager.autograd.grad((g * eager.tensor(v)).sum(), x)
    (w,) = torch.autograd.grad((u * torch.tensor(v)).sum(), t)
    np.testing.assert_allclose(h.numpy(), w.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- traced and compiled


def program(m, x, w, k):
    """A little causal-attention block with every new op in it."""
    scores = m.einsum("bqd,bkd->bqk", x, x) / 2.0
    scores = scores.masked_fill(m.ones(4, 4).triu(1) == 1, float("-inf"))
    att = m.softmax(scores, -1)
    mixed = m.bmm(att, x).cumsum(1).flip(2).roll(1, 1)
    top = m.topk(mixed, 2, dim=-1).values + m.sort(mixed, -1).values[..., :2]
    tiled = top.repeat(1, 1, 2) * m.outer(w, w)[:4].sum()
    steps = (k // 3) + (k % 3) + m.div(k, 2, rounding_mode="trunc")
    return tiled.cumprod(-1).sum() + tiled.floor().sum() * 0.0, steps, m.unbind(tiled, 0)[1]


def _program_inputs():
    rng = np.random.default_rng(5)
    return (rng.standard_normal((2, 4, 3)).astype(np.float32) * 0.5, rng.standard_normal(6).astype(np.float32),
            np.array([7, -7, 11, -1]))


@pytest.mark.parametrize("mode", ["traced", "c", "xla"])
def test_the_program_runs_the_same_in_every_mode(mode):
    arrays = _program_inputs()
    want = [t.detach().numpy() for t in _outputs(program(torch, *[torch.tensor(a) for a in arrays]))]
    fn = lambda x, w, k: program(eager, x, w, k)  # noqa: E731
    ts = [eager.tensor(a) for a in arrays]
    run = tracer.trace(fn, *ts) if mode == "traced" else compiler.compile(fn, *ts, backend=mode)
    for _ in range(2):  # the first call and a replay
        got = [t.numpy() for t in _outputs(run(*ts))]
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_a_traced_gradient_through_the_new_ops_equals_eager():
    x = eager.tensor(RNG.standard_normal((2, 4, 3)).astype(np.float32), requires_grad=True)

    def loss(x):
        s = eager.einsum("bqd,bkd->bqk", x, x).tril()
        return (s.cumsum(-1).cumprod(1) + x.sort(1).values.sum() + x.topk(2, 2).values.sum() +
                (x % 0.7).sum() + x.repeat(1, 2, 1).flip(1).roll(1, 0).sum()).sum()
    loss(x).backward()
    np.testing.assert_allclose(tracer.grad(loss, x)(x).numpy(), x.grad.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_clearly():
    with pytest.raises(OpError, match="ZeroDivisionError"):
        eager.tensor([1, 2]) // eager.tensor([1, 0])
    with pytest.raises(OpError, match="ZeroDivisionError"):
        eager.tensor([1, 2]) % 0
    with pytest.raises(ValueError, match="rounding_mode to be one of None, 'trunc', or 'floor'"):
        eager.div(eager.ones(2), 2, rounding_mode="round")
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        eager.ones(3).tril()
    with pytest.raises(IndexError, match=r"topk: k \(5\) is out of range"):
        eager.ones(4).topk(5)
    with pytest.raises(ShapeError, match="subscript 'j' is 3 in one place and 4 in another"):
        eager.einsum("ij,jk->ik", eager.ones(2, 3), eager.ones(4, 2))
    with pytest.raises(ValueError, match="names 2 operands, got 1"):
        eager.einsum("ij,jk->ik", eager.ones(2, 3))
    with pytest.raises(NotImplementedError, match="repeated subscript"):
        eager.einsum("ii->i", eager.ones(3, 3, requires_grad=True)).sum().backward()
    with pytest.raises(ShapeError, match=r"bmm: expected \[B, n, m\] and \[B, m, p\]"):
        eager.bmm(eager.ones(2, 3), eager.ones(3, 2))
    with pytest.raises(ShapeError, match="can not be smaller"):
        eager.ones(2, 3).repeat(2)
    with pytest.raises(ValueError, match="same length"):
        eager.ones(2, 3).roll((1, 2), 0)
    with pytest.raises(IndexError, match="Dimension out of range"):
        eager.ones(2, 3).cumsum(2)
