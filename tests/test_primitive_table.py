"""Every row of the op table carries every fact the modes need, and nothing about a row lives in a side list.

``problems(prim)`` lists what a row lacks: a C expression for an elementwise op, a libm function its C calls
that the C vector prelude, the scratch logic or the SIMT emulator's ``using`` line does not read, a gradient
case (or a reason for none), a forward case, a JAX lowering that runs, the eager wrappers its ``api`` promises.
The table must have no problems, and the checker must find each kind in a row built to lack it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax  # a required dependency (pyproject.toml): never skipped
import numpy as np
import pytest
from test_primitive_grads import CASES, NON_DIFFERENTIABLE, _tensors

import eager
from compiler import fusion
from compiler.codegen import c as cgen
from compiler.codegen.dialect import CUDA, INSTRUCTION_FUNCTIONS, C, c_calls, cxx_using_line
from compiler.runtime.simt import runtime_source
from eager.autograd.mode import add_recorder
from eager.backend import to_numpy
from eager.control import CONTROL_OPS, RESULT
from eager.ops import TABLE_FUNCTIONS
from eager.primitives import (
    API_FLOAT,
    API_SAME,
    ELEMENTWISE,
    HOST,
    KERNEL,
    LIBRARY,
    PRIMITIVES,
    REDUCTION,
    VIEW,
    Primitive,
)
from eager.tensor import Tensor

SIMT_H = Path(cgen.__file__).parent.parent / "runtime" / "simt.h"


def _simt_using_names() -> set[str]:
    line = next(ln for ln in runtime_source().splitlines() if ln.startswith("using std::"))
    return {part.strip().removeprefix("using std::") for part in line.split(";") if part.strip()}


class _Calls:
    """A recorder keeping each primitive application's real inputs and output (for the JAX check)."""

    def __init__(self):
        self.calls = []

    def record(self, prim, inputs, params, out):
        arrays = [to_numpy(x._data) if isinstance(x, Tensor) else x for x in inputs]
        self.calls.append((prim.name, arrays, dict(params), to_numpy(out._data)))

    def mutate(self, x, new):
        pass

    def escape(self, t, kind, value):
        pass


def _jax_problem(prim: Primitive) -> str | None:
    """Run the row's JAX lowering (the XLA backend's override, or the impl with jax.numpy) on the inputs its
    first forward case gives it; it must return a JAX array equal to eager's output."""
    from compiler.xla import _overrides
    if prim.random:
        return None  # the XLA backend refuses these on purpose (they draw from graphduel's generator)
    cases = CASES.get(prim.name)
    if not cases:
        return None  # reported as a missing forward case
    rec = _Calls()
    if prim.decomposition is not None:  # a recorder would be handed the decomposition: call the row's impl directly
        inputs = _tensors(cases[0])
        out = cases[0].fn(*inputs)
        rec.calls.append((prim.name, [t._data for t in inputs], out.grad_fn.params, out.detach().numpy()))
    else:
        with add_recorder(rec):
            cases[0].fn(*_tensors(cases[0]))
    impl = _overrides().get(prim.name) or prim.impl
    with jax.enable_x64(True):
        for name, arrays, params, want in rec.calls:
            if name != prim.name:
                continue
            try:
                got = impl(jax.numpy, *[jax.numpy.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays],
                           **params)
            except Exception as e:  # the failure is the finding: report it, with its type
                return f"no JAX lowering that works: {type(e).__name__}: {e}"
            if not isinstance(got, jax.Array):
                return f"its JAX lowering returned {type(got).__name__}, not a jax.Array (it would not jit)"
            if not np.allclose(np.asarray(got, dtype=want.dtype), want, rtol=1e-6, atol=1e-9, equal_nan=True):
                return "its JAX lowering disagrees with eager"
            return None
    return f"its first case in test_primitive_grads.py never applies {prim.name}"


def _c_problems(prim: Primitive) -> list[str]:
    out = []
    for dialect in (C, CUDA):
        template = dialect.overrides.get(prim.name, prim.c_expr)
        try:
            template.format("a", "b", "c", ctype="float")
        except (IndexError, KeyError) as e:
            out.append(f"its {dialect.name} template {template!r} does not render: {e!r}")
    using = _simt_using_names()
    for f in c_calls(CUDA.overrides.get(prim.name, prim.c_expr)):
        if f not in using:
            out.append(f"its CUDA expression calls {f}, which the SIMT runtime's `using std::` line does not name")
    for f, n in c_calls(prim.c_expr).items():
        if f in INSTRUCTION_FUNCTIONS:
            continue
        if cgen.VECTOR_FUNCTIONS.get(f) != n:
            out.append(f"its C expression calls {f}, which the C vector prelude does not read")
        if prim.name not in cgen.SCRATCH_OPS:
            out.append(f"it calls the libm function {f}, but the C scratch logic does not keep it")
    return out


def _api_problems(prim: Primitive) -> list[str]:
    if prim.api not in (API_FLOAT, API_SAME):
        return [f"api {prim.api!r} is neither API_FLOAT nor API_SAME"]
    out = []
    if TABLE_FUNCTIONS.get(prim.name) is None or getattr(eager, prim.name, None) is not TABLE_FUNCTIONS[prim.name]:
        out.append(f"no eager wrapper: eager.{prim.name} is not the table's function")
    for method in (prim.name, prim.name + "_"):
        if not callable(getattr(Tensor, method, None)):
            out.append(f"no eager wrapper: Tensor.{method} is missing")
    return out


def _control_problems(prim: Primitive) -> list[str]:
    """Control-flow rows take regions, not arrays: their cases live in tests/test_control_flow.py."""
    text = open(os.path.join(os.path.dirname(__file__), "test_control_flow.py")).read()
    api = "eager.cond" if prim.name in ("cond", "result") else f"eager.{prim.name}"
    return [] if api + "(" in text else [f"no test in tests/test_control_flow.py calls {api}"]


def problems(prim: Primitive) -> list[str]:
    """What the row ``prim`` lacks; empty when every mode has what it needs."""
    if prim.name in CONTROL_OPS or prim is RESULT:
        return _control_problems(prim)
    out = []
    if prim.kind == ELEMENTWISE and prim.c_expr is None:
        out.append("elementwise without c_expr (the C and CUDA kernels cannot compute it)")
    if prim.lowering not in (KERNEL, VIEW, LIBRARY, HOST):
        out.append(f"lowering {prim.lowering!r} is none of kernel/view/library/host")
    elif prim.lowering == KERNEL and prim.name not in fusion.ELEMENTWISE_OPS | fusion.REDUCE_OPS:
        out.append("lowered as a kernel, but compiler.fusion does not fuse it")
    if prim.c_expr is not None:
        out += _c_problems(prim)
    if prim.vjp is None and prim.name not in NON_DIFFERENTIABLE:
        out.append("no VJP and no reason in test_primitive_grads.NON_DIFFERENTIABLE")
    if prim.vjp is not None and not any(c.differentiable for c in CASES.get(prim.name, [])):
        out.append("no gradient test covering it (a differentiable case in test_primitive_grads.CASES)")
    if prim.name not in CASES and not prim.random:  # random rows: test_random_primitives_draw_the_right_...
        out.append("no forward case in test_primitive_grads.CASES")
    if prim.api is not None:
        out += _api_problems(prim)
    jax_problem = _jax_problem(prim)
    if jax_problem:
        out.append(jax_problem)
    return out


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_every_row_has_every_fact_the_modes_need(name):
    assert problems(PRIMITIVES[name]) == []


def test_compiler_op_sets_are_the_table_rows_of_each_lowering():
    table = {lowering: {n for n, p in PRIMITIVES.items() if p.lowering == lowering}
             for lowering in (KERNEL, VIEW, LIBRARY)}
    assert fusion.ELEMENTWISE_OPS | fusion.REDUCE_OPS == table[KERNEL]
    assert fusion.REDUCE_OPS == {n for n in table[KERNEL] if PRIMITIVES[n].kind == REDUCTION} == {"sum", "max"}
    assert fusion.VIEW_OPS == table[VIEW] == {"reshape", "broadcast_to", "permute"}
    assert fusion.LIBRARY_OPS == table[LIBRARY] == {"matmul"}


def test_simt_using_line_is_generated_from_the_cuda_templates():
    names = {f for p in PRIMITIVES.values() if p.c_expr for f in c_calls(CUDA.template(p.name))}
    assert _simt_using_names() == names
    assert cxx_using_line(CUDA) in runtime_source().splitlines()
    assert "using std::" not in SIMT_H.read_text()  # written once: generated, never pasted


def test_vector_prelude_and_scratch_read_the_c_functions_the_table_calls():
    assert {"exp", "log", "sin", "cos", "tanh", "erf", "erfc"} <= set(cgen.VECTOR_FUNCTIONS)
    assert cgen.VECTOR_FUNCTIONS["pow"] == 2  # declared with two vector arguments
    assert "sigmoid" in cgen.SCRATCH_OPS and "sqrt" not in cgen.SCRATCH_OPS and "add" not in cgen.SCRATCH_OPS
    if cgen.vector_math_prelude():  # libmvec present: every one it has is declared
        assert "extern float erfcf(float);" in cgen.vector_math_prelude()


# ---------------------------------------------------------------- the checker can fail


def _bogus(**kw) -> Primitive:
    fields = dict(name="bogus", kind=ELEMENTWISE, impl=lambda xp, a: a + 1, shape_rule=lambda a: a,
                  vjp=lambda g, out, a: (g,))
    return Primitive(**{**fields, **kw})


def test_checker_reports_an_elementwise_row_without_c_expr_tests_or_jax_lowering():
    found = problems(_bogus())
    assert any("without c_expr" in p for p in found)
    assert any("no gradient test" in p for p in found)
    assert any("no forward case" in p for p in found)
    assert any("does not fuse" in p for p in found) is False  # no c_expr: lowered on the host, not fused


def test_checker_reports_a_transcendental_the_c_side_does_not_read_and_a_missing_wrapper():
    found = problems(_bogus(c_expr="expm1({0})", api=API_FLOAT))
    assert any("SIMT runtime" in p and "expm1" in p for p in found)
    assert any("vector prelude" in p for p in found)
    assert any("scratch" in p for p in found)
    assert any("does not fuse" in p for p in found)
    assert any("eager.bogus" in p for p in found) and any("Tensor.bogus_" in p for p in found)


def test_checker_reports_a_jax_lowering_that_does_not_run():
    def numpy_only(xp, a):
        if xp is not np:
            raise ModuleNotFoundError("No module named 'cupyx'")  # what erf's old impl did under jax.numpy
        return a
    erf = PRIMITIVES["erf"]
    row = Primitive("erf", ELEMENTWISE, numpy_only, erf.shape_rule, erf.vjp, erf.c_expr, api=API_FLOAT)
    assert any("no JAX lowering" in p for p in problems(row))


def test_checker_reports_a_non_differentiable_row_without_a_reason():
    assert any("no VJP" in p for p in problems(_bogus(name="bogus", vjp=None, c_expr="{0}")))


# ---------------------------------------------------------------- the README's worked example, in every mode


@pytest.mark.parametrize("mode", ["eager", "traced", "c", "simt", "xla"])
def test_erfc_from_the_readme_runs_in_every_mode_and_matches_torch(mode):
    import compiler
    import tracer
    torch = pytest.importorskip("torch")
    x = np.linspace(-3, 6, 40, dtype=np.float32).reshape(4, 10)  # the tail, where 1 - erf(x) cancels
    fn = lambda t: (t.erfc() * 2 + eager.erfc(t * 0.5)).erfc()  # noqa: E731  (several erfc in one kernel)
    run = {"eager": lambda: fn, "traced": lambda: tracer.trace(fn, eager.tensor(x))}.get(mode)
    run = run() if run else compiler.compile(fn, eager.tensor(x), backend=mode)
    want = (torch.erfc(torch.tensor(x)) * 2 + torch.erfc(torch.tensor(x) * 0.5)).erfc().numpy()
    np.testing.assert_allclose(run(eager.tensor(x)).numpy(), want, rtol=2e-6, atol=1e-7)
    if mode in ("c", "simt"):
        assert all("erfc(" in k.source for k in run.kernels)
