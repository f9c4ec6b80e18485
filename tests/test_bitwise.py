"""``&``, ``|``, ``^``, ``~`` and their torch names: bitwise on integer tensors, logical on bool, exactly as
PyTorch (values, result dtypes, promotion, Python ints, the errors for floats), in every mode: eager, traced,
compiled C and the CUDA kernels under the SIMT emulator.

Each case is one lambda ``fn(m, *tensors)`` run with ``m = torch`` and ``m = eager`` on the same arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import eager
import tracer
from compiler.runtime.simt import cxx_compiler

torch = pytest.importorskip("torch")


DTYPES = ["int8", "int32", "int64", "bool"]
RNG = np.random.default_rng(0)


def values(shape, dtype):
    """Both signs, and the extremes of small types (where a sign bit or a wrap-around shows)."""
    if dtype == "bool":
        return RNG.random(shape) < 0.5
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -300), min(int(info.max), 300)
    out = RNG.integers(lo, hi, shape, endpoint=True).astype(dtype)
    out.flat[:2] = [info.min, info.max][:out.size]
    return out


def run(m, fn, arrays):
    out = fn(m, *[m.tensor(a) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def check(fn, arrays):
    expected, got = run(torch, fn, arrays), run(eager, fn, arrays)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert str(g.dtype) == str(e.dtype), f"output {i}: eager gives {g.dtype}, torch {e.dtype}"
        np.testing.assert_array_equal(g, e, err_msg=f"output {i}")


BINARY = {
    "operators": lambda m, a, b: (a & b, a | b, a ^ b),
    "torch_names": lambda m, a, b: (m.bitwise_and(a, b), m.bitwise_or(a, b), m.bitwise_xor(a, b)),
    "methods": lambda m, a, b: (a.bitwise_and(b), a.bitwise_or(b), a.bitwise_xor(b)),
    "in_place": lambda m, a, b: (a.clone().__iand__(b), a.clone().__ior__(b), a.clone().__ixor__(b),
                                 a.clone().bitwise_or_(b)),
}


def test_the_issue_example_is_bitwise():
    a, b = eager.tensor([-1, 0, 2]), eager.tensor([0, 0, 1])
    assert (a | b).tolist() == [-1, 0, 3]
    assert (a & b).tolist() == [0, 0, 0] and (a ^ b).tolist() == [-1, 0, 3] and (~a).tolist() == [0, -1, -3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_ops_match_torch_with_broadcasting(name, dtype):
    check(BINARY[name], [values((3, 4), dtype), values((4,), dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_not_matches_torch(dtype):
    check(lambda m, a: (~a, m.bitwise_not(a), a.bitwise_not(), a.clone().bitwise_not_()), [values((2, 5), dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_python_scalars_on_either_side_match_torch(dtype):
    # ints (negative too) are weak: an int8 tensor stays int8; bool | int is int64, as in PyTorch
    check(lambda m, a: (a | 5, -6 & a, a ^ -1, 3 | a, a & True, False ^ a), [values((6,), dtype)])


@pytest.mark.parametrize("dtype", ["int8", "int32"])
def test_a_python_int_too_wide_for_the_dtype_wraps_as_in_torch(dtype):
    big = 1 << 40 if dtype == "int32" else 1000
    check(lambda m, a: (a | big, a & -(big + 1), a ^ (big + 44)), [values((5,), dtype)])


@pytest.mark.parametrize("a_dtype, b_dtype", [("int32", "int64"), ("bool", "int64"), ("bool", "int32"),
                                              ("int8", "int32"),
                                              ("bool", "int8")])
def test_mixed_dtypes_promote_as_in_torch(a_dtype, b_dtype):
    check(lambda m, a, b: (a & b, b | a, a ^ b), [values((4,), a_dtype), values((4,), b_dtype)])


@pytest.mark.parametrize("dtype", ["int8", "int32"])
def test_a_0d_tensor_does_not_widen_an_integer_tensor(dtype):
    check(lambda m, a, b: (a | b, b ^ a), [values((4,), dtype), np.array(7, dtype="int64")])


def test_logical_ops_give_bool_for_every_dtype():
    check(lambda m, a, b, f: (m.logical_and(a, b), m.logical_or(a, b), m.logical_xor(a, b), m.logical_not(a),
                              m.logical_and(f, a), a.logical_or(f), f.logical_not()),
          [values((5,), "int32"), values((5,), "int64"), np.array([0.0, 1.5, -2.0, 0.0, 3.0], np.float32)])


@pytest.mark.parametrize("fn", [lambda m, f, i: f | i, lambda m, f, i: i & f, lambda m, f, i: i ^ 1.5,
                                lambda m, f, i: m.bitwise_or(f, f), lambda m, f, i: m.bitwise_not(f)],
                         ids=["float_or_int", "int_and_float", "python_float", "torch_name", "bitwise_not"])
def test_float_operands_raise_as_in_torch(fn):
    f, i = np.array([1.0, 2.0], np.float32), np.array([1, 2])
    with pytest.raises(NotImplementedError) as expected:
        fn(torch, torch.tensor(f), torch.tensor(i))
    with pytest.raises(type(expected.value), match="bitwise_.*float.*integer or bool"):
        fn(eager, eager.tensor(f), eager.tensor(i))


def test_invert_of_a_float_tensor_raises_type_error_as_in_torch():
    with pytest.raises(TypeError):
        ~torch.tensor([1.0])
    with pytest.raises(TypeError, match="integer and bool"):
        ~eager.tensor([1.0])


# ---------------------------------------------------------------- traced and compiled


def program(a, b):
    return (a & b) | (~a ^ (b | 3)), a ^ -2, ~(a & b)


BACKENDS = ["c", "simt"]


def _needs_compiler(backend):
    if backend == "simt" and cxx_compiler() is None:
        pytest.skip("no C++ compiler for the SIMT emulator")


def expected(a, b):
    out = program(torch.tensor(a), torch.tensor(b))
    return [o.numpy() for o in out]


@pytest.mark.parametrize("dtype", DTYPES)
def test_traced_program_matches_torch(dtype):
    a, b = values((3, 8), dtype), values((8,), dtype)
    traced = tracer.trace(program, eager.tensor(a), eager.tensor(b))
    a2, b2 = values((3, 8), dtype), values((8,), dtype)
    for got, want in zip(traced(eager.tensor(a2), eager.tensor(b2)), expected(a2, b2)):
        assert str(got.dtype) == str(want.dtype)
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_program_matches_torch(dtype, backend):
    _needs_compiler(backend)
    a, b = values((5, 37), dtype), values((37,), dtype)
    f = compiler.compile(program, eager.tensor(a), eager.tensor(b), backend=backend)
    assert f.kernels
    assert any(op in k.source for k in f.kernels for op in (" & ", " | ", " ^ "))
    a2, b2 = values((5, 37), dtype), values((37,), dtype)
    for got, want in zip(f(eager.tensor(a2), eager.tensor(b2)), expected(a2, b2)):
        assert str(got.dtype) == str(want.dtype)
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_not_of_bool_is_logical_not(backend):
    # C's ~ on a bool gives -2 (true again): the kernel must flip the truth value instead
    _needs_compiler(backend)
    m = values((64,), "bool")
    f = compiler.compile(lambda t: ~t, eager.tensor(m), backend=backend)
    np.testing.assert_array_equal(f(eager.tensor(m)).numpy(), ~m)


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_max_of_negative_integers_starts_below_every_value(backend, dtype):
    # a running max starts at the type's minimum (an int8 one at -128: the int32 minimum would truncate to 0)
    _needs_compiler(backend)
    info = np.iinfo(dtype)
    x = np.array([[-5, -7, -100], [info.min, -1, -3]], dtype)
    f = compiler.compile(lambda t: (t | 0).amax(dim=1), eager.tensor(x), backend=backend)
    np.testing.assert_array_equal(f(eager.tensor(x)).numpy(), x.max(axis=1))


@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_arithmetic_with_a_python_int_too_wide_for_int8_wraps_as_in_torch(op):
    torch = pytest.importorskip("torch")
    ours, theirs = eager.tensor(np.int8([100, -100, 7])), torch.tensor([100, -100, 7], dtype=torch.int8)
    for expr in (f"x {op} 200", f"200 {op} x", f"x {op} -1000"):
        got, want = eval(expr, {"x": ours}), eval(expr, {"x": theirs})
        assert got.dtype == eager.int8 and got.tolist() == want.tolist(), expr
