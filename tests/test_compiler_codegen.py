"""Code generation, table-driven: every elementwise op's template reads exactly its operands in both dialects,
and every op, broadcast, reduction and view compiles to C, and to CUDA run under the SIMT emulator, that agree
with eager; the same programs' CUDA source builds with nvcc (where nvcc exists, even without a GPU)."""

from __future__ import annotations

import string

import numpy as np
import pytest

import eager
from compiler.codegen.dialect import CUDA, C, full_template_table
from compiler.passes import optimize
from compiler.program import build
from compiler.runtime.cpu import build_executable
from compiler.runtime.cuda import build_cuda
from compiler.testing import capture, cuda_compile_check, cuda_compilers, cuda_module_source
from eager.primitives import ELEMENTWISE, PRIMITIVES

CUDA_SOURCES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graphduel-cache"))
    yield
    mp.undo()


UNARY = {"neg": lambda x: -x, "exp": eager.exp, "log": lambda x: eager.log(x.abs() + 0.5),
         "sqrt": lambda x: x.abs().sqrt(), "tanh": eager.tanh, "sin": eager.sin, "cos": eager.cos,
         "abs": eager.abs, "sign": eager.sign, "relu": eager.relu, "sigmoid": eager.sigmoid, "erf": eager.erf,
         "erfc": eager.erfc,
         "stop_gradient": eager.detach, "copy": eager.clone}
BINARY = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
          "div": lambda x, y: x / (y.abs() + 1), "pow": lambda x, y: (x.abs() + 0.1) ** y,
          "maximum": eager.maximum, "minimum": eager.minimum,
          "eq": lambda x, y: x == y, "ne": lambda x, y: x != y, "lt": lambda x, y: x < y,
          "le": lambda x, y: x <= y, "gt": lambda x, y: x > y, "ge": lambda x, y: x >= y}
OTHER = {"where": lambda x, y: eager.where(x > y, x, y), "cast": lambda x, y: x.to(eager.float64) + 1}
# integer and bool only; written with operators, so the same lambdas run on NumPy arrays
BITWISE = {"bitwise_and": lambda x, y: x & y, "bitwise_or": lambda x, y: x | y, "bitwise_xor": lambda x, y: x ^ y}
BITWISE_UNARY = {"bitwise_not": lambda x: ~x}
TOL = {np.dtype("float32"): dict(rtol=2e-5, atol=2e-6), np.dtype("float64"): dict(rtol=1e-12, atol=1e-13)}


ARITY = {**dict.fromkeys(UNARY, 1), **dict.fromkeys(BINARY, 2), **dict.fromkeys(BITWISE, 2),
         **dict.fromkeys(BITWISE_UNARY, 1), "where": 3, "cast": 1}


def _fields(template: str) -> tuple[set[int], set[str]]:
    """The positional operands and the named fields a template reads."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    return {int(f) for f in names if f.isdigit()}, {f for f in names if not f.isdigit()}


def test_every_elementwise_template_reads_exactly_its_operands_in_every_dialect():
    elementwise = {n for n, p in PRIMITIVES.items() if p.kind == ELEMENTWISE}
    assert elementwise <= set(ARITY), f"ops without a codegen test: {elementwise - set(ARITY)}"
    for dialect in (C, CUDA):
        table = full_template_table(dialect)
        assert elementwise <= set(table), f"{dialect.name}: no template for {elementwise - set(table)}"
        by_dtype = {key: t for key, t in dialect.overrides.items() if ":" in key}  # "pow:int": integer pow
        for key, template in {**{op: table[op] for op in elementwise}, **by_dtype}.items():
            op = key.split(":")[0]
            operands, named = _fields(template)
            assert operands == set(range(ARITY[op])), f"{dialect.name} {key}: reads operands {operands}"
            assert named <= {"ctype"}, f"{dialect.name} {key}: reads {named}"  # the kernel's C type, nothing else
    assert "ctype" in _fields(full_template_table(C)["cast"])[1]


def _run_compiled(fn, *arrays):
    """``fn``'s program run by its C kernels and by its CUDA kernels under the SIMT emulator, and by eager."""
    g = optimize(capture(fn, *[eager.tensor(a) for a in arrays]))
    program = build(g)
    ex = build_executable(program, fallback_ok=False)
    CUDA_SOURCES.append(cuda_module_source(program))
    got = ex.run(list(arrays))
    simt = build_cuda(program, simulate=True).run(list(arrays))
    with eager.no_grad():
        out = fn(*[eager.tensor(a) for a in arrays])
    want = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
    return {"c": got, "cuda (simt)": simt}, want, ex


def _check(got: dict, want, dtype, names):
    """Each backend's outputs (``got``: backend -> outputs) against ``want``, one per name."""
    for backend, outputs in got.items():
        assert len(outputs) == len(want) == len(names), backend
        for name, a, b in zip(names, outputs, want):
            what = f"{backend}: {name}"
            assert a.shape == b.shape and a.dtype == b.dtype, what
            if a.dtype.kind == "f":
                np.testing.assert_allclose(a, b, err_msg=what, equal_nan=True, **TOL[np.dtype(dtype)])
            else:
                np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_ops_with_broadcasting_match_numpy(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7)).astype(dtype)
    ys = [rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal(7).astype(dtype),
          rng.standard_normal((5, 1)).astype(dtype)]
    x[0, 0], ys[0][0, 1] = np.nan, np.nan  # NaN propagation through maximum/minimum and comparisons
    names, fns = [], []
    for name, f in UNARY.items():
        names.append(name)
        fns.append(lambda x, *ys, f=f: f(x * 0.7))
    for name, f in {**BINARY, **OTHER}.items():
        for j in range(3):
            names.append(f"{name}[{j}]")
            fns.append(lambda x, *ys, f=f, j=j: f(x, ys[j]))
    names += ["scalar", "scalar_lhs"]
    fns += [lambda x, *ys: x * 0.1 + 3, lambda x, *ys: 2.5 - x]
    got, want, ex = _run_compiled(lambda *a: [f(*a) for f in fns], x, *ys)
    _check(got, want, dtype, names)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_bitwise_ops_are_bitwise_on_integers_and_logical_on_bools_like_numpy(dtype):
    rng = np.random.default_rng(4)
    x, y, row = (rng.integers(-50, 50, shape) for shape in [(5, 7), (5, 7), (7,)])
    x, y, row = (a > 0 if dtype == "bool" else a.astype(dtype) for a in (x, y, row))
    cases = {**{f"{name}[{j}]": (lambda x, y, r, f=f, j=j: f(x, (y, r)[j])) for name, f in BITWISE.items()
                for j in range(2)},
             **{name: (lambda x, y, r, f=f: f(x)) for name, f in BITWISE_UNARY.items()}}
    got, want, _ = _run_compiled(lambda *a: [f(*a) for f in cases.values()], x, y, row)
    _check({**got, "eager": want}, [f(x, y, row) for f in cases.values()], dtype, list(cases))  # NumPy's values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_over_every_axis_pattern(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5, 4)).astype(dtype)
    big = rng.standard_normal((3, 20000)).astype(dtype)   # long rows: double accumulators, inner parallel
    nanx = x.copy()
    nanx[1, 2, 3] = np.nan
    cases = {}
    for axes in [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2), (0, 1, 2)]:
        for keep in (False, True):
            cases[f"sum{axes}{keep}"] = lambda x, b, n, a=axes, k=keep: (x.exp() * 2).sum(dim=a, keepdim=k)
            cases[f"max{axes}{keep}"] = lambda x, b, n, a=axes, k=keep: eager.amax(x - 1, dim=a, keepdim=k)
    cases["nanmax"] = lambda x, b, n: eager.amax(n, dim=2)
    cases["long_sum"] = lambda x, b, n: (b * b).sum(dim=1)
    cases["total"] = lambda x, b, n: (b * b).mean()
    cases["softmax_mid_axis"] = lambda x, b, n: eager.softmax(x, dim=1)
    cases["int_sum"] = lambda x, b, n: (x > 0).to(eager.int64).sum(dim=0)
    got, want, _ = _run_compiled(lambda *a: [f(*a) for f in cases.values()], x, big, nanx)
    _check(got, want, dtype, list(cases))


def test_views_transposes_and_non_affine_reshapes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y = rng.standard_normal((6, 4)).astype(np.float32)
    cases = {
        "transpose": lambda x, y: x.T.exp() + y,
        "reshape_split": lambda x, y: x.reshape(4, 2, 3).exp() * 2,
        "reshape_of_transpose": lambda x, y: (x.T * 1.5).reshape(24) + 1,   # not affine: materialised
        "expand": lambda x, y: x[:, :1].expand(4, 6) * x,
        "permute3": lambda x, y: x.reshape(2, 2, 6).permute(2, 0, 1).exp(),
        "row_broadcast_of_reduction": lambda x, y: x - x.sum(dim=1, keepdim=True).reshape(4, 1),
    }
    got, want, ex = _run_compiled(lambda *a: [f(*a) for f in cases.values()], x, y)
    _check(got, want, "float32", list(cases))


def test_literals_take_the_kernels_type():
    # 0.1 is not representable: a float32 kernel must round it as NumPy's weak scalar does, not compute in double
    x = np.full(8, 3.0, np.float32)
    got, want, ex = _run_compiled(lambda x: x * 0.1, x)
    for backend, outputs in got.items():
        np.testing.assert_array_equal(outputs[0], want[0], err_msg=backend)  # exactly: no tolerance hides a double
    assert "((float)0.1)" in ex.kernels[0].source


@pytest.mark.skipif(not cuda_compilers(), reason="neither nvcc nor NVRTC is installed: CUDA source not compiled")
def test_generated_cuda_source_compiles_with_nvcc_and_nvrtc():
    assert CUDA_SOURCES, "run with the other tests of this module"
    from compiler.codegen.cuda import header
    bodies = [s.replace(header(), "") for s in CUDA_SOURCES]
    # kernel names repeat across programs: give each program's kernels a unique prefix
    renamed = [b.replace('extern "C" __global__ void k', f'extern "C" __global__ void p{i}_k')
               for i, b in enumerate(bodies)]
    error = cuda_compile_check([header()] + renamed)
    assert error is None, error


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_integer_powers_are_exact_and_wrap_like_numpy(dtype):
    """Through double, 40**13 would be off in its last digits; NumPy's integer power is exact and wraps."""
    x = np.array([0, 1, 2, 3, -3, 7, 40, 1000003], dtype=dtype)
    e = np.array([0, 5, 62, 3, 5, 20, 13, 3], dtype=dtype)
    g = optimize(capture(lambda a, b: a ** b, eager.tensor(x), eager.tensor(e)))
    program = build(g)
    for got in (build_executable(program).run([x, e])[0], build_cuda(program, simulate=True).run([x, e])[0]):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, x ** e)
    if cuda_compilers():
        assert cuda_compile_check([cuda_module_source(program)]) is None


def test_cuda_float4_loop_runs_only_on_16_byte_aligned_pointers():
    """x[1:] of a (9, 2) float32 array starts 8 bytes into its buffer: a float4 load there is a sticky
    cudaErrorMisalignedAddress, so the kernel checks its pointers and otherwise takes the scalar loop."""
    from compiler.runtime.cuda import generate
    x = np.random.default_rng(0).standard_normal((9, 8)).astype(np.float32)
    program = build(optimize(capture(lambda a: (a[1:] * 2 + 1).tanh(), eager.tensor(x))))
    (kernel,) = generate(program)
    src = kernel.source
    assert "& 15ULL) == 0)" in src and "float4" in src
    vector, scalar = src.split("} else {")
    assert "reinterpret_cast<float4*>" in vector and "float4" not in scalar
    got = build_cuda(program, simulate=True).run([x])[0]
    np.testing.assert_allclose(got, np.tanh(x[1:] * 2 + 1), rtol=2e-6, atol=1e-7)
    if cuda_compilers():
        assert cuda_compile_check([cuda_module_source(program)]) is None


def _one_kernel(fn, x):
    import compiler
    c = compiler.compile(fn, x)
    assert len(c.kernels) == 1
    return c, c.kernels[0].source


def _exp_calls(source: str) -> int:
    return sum(line.count("exp(") for line in source.splitlines())


def test_softmax_computes_exp_once_per_element_and_keeps_it_for_the_output():
    import eager.nn.functional as F
    x = eager.randn(32, 200)
    c, src = _one_kernel(lambda x: F.softmax(x, dim=-1), x)
    assert _exp_calls(src) == 1 and "float s" in src
    np.testing.assert_allclose(c(x).numpy(), F.softmax(x, dim=-1).numpy(), rtol=1e-6, atol=1e-7)


def test_a_value_reached_later_only_through_a_kept_value_is_not_kept_itself():
    def f(x):
        y = (x - x.max(dim=-1, keepdim=True)[0]).exp().tanh()
        return y / y.sum(dim=-1, keepdim=True)
    x = eager.randn(16, 64)
    c, src = _one_kernel(f, x)
    assert src.count("[64];") == 1  # one scratch row: tanh's, not exp's
    assert _exp_calls(src) == 1 and src.count("tanh(") == 1
    np.testing.assert_allclose(c(x).numpy(), f(x).numpy(), rtol=1e-6, atol=1e-7)


def test_rows_longer_than_the_scratch_limit_recompute_instead():
    import eager.nn.functional as F
    from compiler.codegen.c import SCRATCH_BYTES
    x = eager.randn(2, SCRATCH_BYTES // 4 + 1)
    c, src = _one_kernel(lambda x: F.softmax(x, dim=-1), x)
    assert _exp_calls(src) == 2 and "float s" not in src
    np.testing.assert_allclose(c(x).numpy(), F.softmax(x, dim=-1).numpy(), rtol=1e-6, atol=1e-9)


def test_log_softmax_keeps_nothing_its_exp_feeds_only_the_sum():
    import eager.nn.functional as F
    x = eager.randn(8, 100)
    c, src = _one_kernel(lambda x: F.log_softmax(x, dim=-1), x)
    assert _exp_calls(src) == 1 and "float s" not in src


def test_scratch_rows_of_one_kernel_stay_within_the_stack_budget():
    from compiler.codegen.c import SCRATCH_BYTES
    n = SCRATCH_BYTES // 4 // 3  # float32 rows: room for 3, and the kernel has 5 candidates

    def f(x):
        vals = [(x * k).tanh() for k in range(1, 6)]
        total = 1 + (vals[0] * vals[0]).sum(dim=-1, keepdim=True)  # positive: no cancellation to amplify
        for v in vals[1:]:
            total = total + (v * v).sum(dim=-1, keepdim=True)
        return sum(vals) / total
    x = eager.randn(4, n)
    c, src = _one_kernel(f, x)
    assert src.count(f"[{n}];") == 3
    np.testing.assert_allclose(c(x).numpy(), f(x).numpy(), rtol=1e-5, atol=1e-6)
