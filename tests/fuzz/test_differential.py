"""Differential fuzzing: random programs agree across modes, with float64 NumPy as the judge.

Properties (each checked on ``fuzz_examples`` programs; ``--fuzz-long`` for thousands):
- eager == float64 NumPy reference, within the written tolerances below;
- gradients of a scalar loss over the program == ``jax.grad`` of the same program (float64);
- traced == eager, and compiled == eager on the CPU, with the CUDA kernels under the SIMT emulator, and (with a
  GPU) on cuda.

Each is checked twice: on pure programs, and on programs with in-place blocks (tests/fuzz/inplace.py: views of
a clone, in-place writes through them, then the base and the views computed with). There NumPy writes through
real NumPy views and jax runs the functional equivalent (scatters into the base), so the values judge eager's
aliasing and jax.grad judges the gradients autograd gets by rebasing a written view's history onto its base.
In-place programs also run as a traced and a compiled training step (forward, ``backward()``, the gradients
returned), which must give eager's gradients.

A failure shrinks to a minimal program and prints it as readable Python.
"""

from __future__ import annotations

import shutil

import jax  # the gradient oracle; a required dependency (pyproject.toml), so it is never skipped
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

import compiler
import eager
import tracer

from .programs import EagerLib, JaxLib, NumpyLib, inplace_programs, programs, touches_empty

jax.config.update("jax_enable_x64", True)

# Relative tolerance per dtype, per instruction of the program; the absolute part scales with the largest
# magnitude the float64 reference saw anywhere in the program (cancellation can't beat that scale).
RTOL = {"float32": 2e-5, "float64": 1e-11}
F32_LIMIT = 1e30  # a float64 value beyond this would overflow float32: the program is not a fair float32 test

NP, JX, EG = NumpyLib(), JaxLib(), EagerLib()

# In-place ops the gradient property leaves out of its programs (none: fill_ and zero_ were, until the bug the
# fuzzer found, test_regressions.py::test_a_filled_non_leaf_has_no_gradient_from_its_old_values, was fixed)
GRAD_UNSAFE_WRITES: frozenset = frozenset()

# The in-place static property returns the program's result as it is (a stale view included: the tracer bug the
# fuzzer found, test_regressions.py::test_a_traced_result_that_is_a_view_sees_writes_after_it_was_taken, is fixed)
READ_INPLACE_RESULT_INSIDE = False

# Compiled in-place properties keep programs with empty values (the compiler bug the fuzzer found,
# test_regressions.py::test_compiling_a_reshape_of_a_tensor_with_an_empty_dim, is fixed)
COMPILED_SKIPS_EMPTY = False

# How many in-place programs a property checks, as a fraction of ``fuzz_examples`` (default run: ~18 s in all)
INPLACE_SHARE = {"values": 1 / 2, "grads": 1 / 2, "traced": 1 / 2, "compiled": 1 / 2, "compiled-simt": 1 / 12,
                 "compiled-cuda": 1 / 12, "traced-grads": 1 / 2, "compiled-grads": 1 / 4}


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=False, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _reference(prog, inputs):
    with np.errstate(all="ignore"):
        values = prog.run(NP, [x.astype(np.float64) for x in inputs])
    scale = max([1.0] + [float(np.max(np.abs(v))) for v in values if np.size(v)])
    return values, scale


def _assert_close(got, want, prog, scale, what):
    rtol = RTOL[prog.dtype] * (1 + len(prog.instrs))
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == np.shape(want), f"{what}: shape {got.shape} != reference {np.shape(want)}\n{prog!r}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=f"{what}\n{prog!r}")


def _eager_values(prog, inputs, requires_grad=False):
    tensors = [eager.tensor(x, requires_grad=requires_grad) for x in inputs]
    return tensors, prog.run(EG, tensors)


def _check_values(prog):
    inputs = prog.inputs()
    ref, scale = _reference(prog, inputs)
    assume(all(np.all(np.isfinite(v)) for v in ref))
    if prog.dtype == "float32":
        assume(scale < F32_LIMIT)
    _, values = _eager_values(prog, inputs)
    out = values[-1]
    assert out.dtype == np.dtype(prog.dtype), f"result dtype {out.dtype} != program dtype\n{prog!r}"
    _assert_close(out.numpy(), ref[-1], prog, scale, "eager vs float64 reference")


def test_eager_matches_float64_reference(fuzz_examples):
    _settings(fuzz_examples)(given(programs())(_check_values))()


def test_in_place_programs_match_the_float64_reference_of_numpy_views(fuzz_examples):
    n = _inplace_examples(fuzz_examples, "values")
    _settings(n)(given(inplace_programs())(_check_values))()


def _inplace_examples(fuzz_examples: int, prop: str) -> int:
    return max(int(fuzz_examples * INPLACE_SHARE[prop]), 5)


def _check_gradients(prog, jit: bool):
    prog.dtype = "float64"
    inputs = prog.inputs()
    ref, scale = _reference(prog, inputs)
    assume(all(np.all(np.isfinite(v)) for v in ref))
    weights = np.random.default_rng(prog.seed + 1).standard_normal(np.shape(ref[-1]))

    def loss_jax(*xs):
        return jax.numpy.sum(prog.run(JX, list(xs))[-1] * weights)

    oracle = jax.value_and_grad(loss_jax, argnums=tuple(range(prog.n_inputs)))
    # jit: one XLA compile per program instead of one per new (op, shape, key) (in-place blocks scatter a lot)
    value, want = (jax.jit(oracle) if jit else oracle)(*[jax.numpy.asarray(x) for x in inputs])
    # the oracle's own check: jax's program (functional, for in-place blocks) computes NumPy's values
    loss_scale = max(1.0, float(np.sum(np.abs(ref[-1] * weights))))
    _assert_close(value, np.sum(ref[-1] * weights), prog, loss_scale, "jax's loss vs the NumPy reference's")
    tensors, values = _eager_values(prog, inputs, requires_grad=True)
    loss = (values[-1] * eager.tensor(weights)).sum()
    if not loss.requires_grad:  # the output does not depend on any input (e.g. a constant)
        return
    loss.backward()
    grad_scale = max([1.0] + [float(np.max(np.abs(np.asarray(g)))) for g in want if np.size(g)])
    for i, (t, g) in enumerate(zip(tensors, want)):
        got = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        _assert_close(got, np.asarray(g), prog, grad_scale, f"gradient of input v{i} vs jax.grad")


def test_eager_gradients_match_jax_grad(fuzz_examples):
    check = lambda prog: _check_gradients(prog, jit=False)  # noqa: E731
    _settings(fuzz_examples)(given(programs())(check))()


def test_in_place_gradients_match_jax_grad_of_the_functional_program(fuzz_examples):
    n = _inplace_examples(fuzz_examples, "grads")
    check = lambda prog: _check_gradients(prog, jit=True)  # noqa: E731
    _settings(n)(given(inplace_programs(exclude_writes=GRAD_UNSAFE_WRITES))(check))()


def _assert_ran_static(static, prog) -> None:
    """An in-place program freezes no value (a mask is a ``where``, not positions): every call ran the static
    program, none retraced or fell back to eager (which would make "equals eager" hold trivially)."""
    counts = (static.retrace_count, static.guard_failures, static.eager_fallbacks)
    assert counts == (0, 0, 0), f"retraces, guard failures, eager fallbacks: {counts}\n{prog!r}"


STATIC_MODES = ["traced", "compiled", "compiled-simt", pytest.param("compiled-cuda", marks=pytest.mark.gpu)]


def _static_check(mode: str, inplace: bool = False):
    """The property for one static mode: on new inputs of the example's signature it equals eager, three calls
    in a row (buffers reused, a held result unchanged)."""
    device = "cuda" if mode == "compiled-cuda" else "cpu"
    if mode == "compiled-simt" and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the SIMT emulator cannot build")
    if mode == "traced":
        build = tracer.trace
    else:
        backend = "simt" if mode == "compiled-simt" else None
        build = lambda fn, *xs: compiler.compile(fn, *xs, device=device, backend=backend)  # noqa: E731

    def host(t):
        return t.cpu().numpy()

    def check(prog):
        if inplace and COMPILED_SKIPS_EMPTY and mode != "traced":
            assume(not touches_empty(prog))
        inputs = prog.inputs()
        ref, scale = _reference(prog, inputs)
        assume(all(np.all(np.isfinite(v)) for v in ref))
        if prog.dtype == "float32":
            assume(scale < F32_LIMIT)
        tensors = [eager.tensor(x, device=device) for x in inputs]
        fn = lambda *xs: prog.run(EG, list(xs))[-1]
        if inplace and READ_INPLACE_RESULT_INSIDE:
            fn = lambda *xs: prog.run(EG, list(xs))[-1] * 1  # noqa: E731
        static = build(fn, *tensors)
        # fresh inputs of the same signature: the static program must not have baked in the example values
        fresh = [eager.tensor(x[::-1].copy() if x.ndim else x, device=device) for x in inputs]
        want = host(fn(*fresh))
        got = host(static(*fresh))
        _assert_close(got, want, prog, scale, f"{mode} vs eager")
        # more calls: buffers of dropped results are reused, and a held result must not change under its holder
        held = static(*tensors)
        held_values = host(held).copy()
        del got
        again = host(static(*fresh))
        _assert_close(again, want, prog, scale, f"{mode} vs eager, third call")
        np.testing.assert_array_equal(host(held), held_values, err_msg=f"{prog}: a held result changed")
        if inplace:
            _assert_ran_static(static, prog)
            # the caller's tensors are inputs, never written: every block writes into a clone
            for t, x in zip(fresh, inputs):
                np.testing.assert_array_equal(host(t), x[::-1] if x.ndim else x, err_msg=f"{prog}: an input changed")
        checked.append(prog)

    checked = []
    return check, checked


@pytest.mark.parametrize("mode", STATIC_MODES)
def test_static_modes_match_eager(fuzz_examples, mode):
    check, checked = _static_check(mode)
    _settings(max(fuzz_examples // 2, 10))(given(programs(max_ops=5))(check))()
    print(f"\n{mode}: {len(checked)} programs compared with eager")


@pytest.mark.parametrize("mode", STATIC_MODES)
def test_in_place_programs_in_static_modes_match_eager(fuzz_examples, mode):
    check, checked = _static_check(mode, inplace=True)
    _settings(_inplace_examples(fuzz_examples, mode))(given(inplace_programs(max_ops=5))(check))()
    print(f"\n{mode}: {len(checked)} in-place programs compared with eager")


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_in_place_gradients_of_a_traced_or_compiled_step_match_eager(fuzz_examples, mode):
    build = tracer.trace if mode == "traced" else compiler.compile

    def check(prog):
        if COMPILED_SKIPS_EMPTY and mode == "compiled":
            assume(not touches_empty(prog))
        inputs = prog.inputs()
        ref, scale = _reference(prog, inputs)
        assume(all(np.all(np.isfinite(v)) for v in ref))
        if prog.dtype == "float32":
            assume(scale < F32_LIMIT)
        weights = eager.tensor(np.random.default_rng(prog.seed + 1).standard_normal(np.shape(ref[-1])),
                               dtype=prog.dtype)

        def step(*xs):  # a training step's backward: the leaves are made inside, as a model's parameters are
            leaves = [x.detach().requires_grad_(True) for x in xs]
            (prog.run(EG, leaves)[-1] * weights).sum().backward()
            return tuple(eager.zeros_like(t) if t.grad is None else t.grad for t in leaves)

        fresh = [x[::-1].copy() if x.ndim else x for x in inputs]
        want = [g.numpy() for g in step(*[eager.tensor(x) for x in fresh])]
        static = build(step, *[eager.tensor(x) for x in inputs])
        grad_scale = max([1.0] + [float(np.max(np.abs(g))) for g in want if np.size(g)])
        for call in ("first", "second"):
            got = static(*[eager.tensor(x) for x in fresh])
            for i, (g, w) in enumerate(zip(got, want)):
                _assert_close(g.numpy(), w, prog, grad_scale, f"{mode} gradient of v{i} vs eager, {call} call")
        _assert_ran_static(static, prog)

    n = _inplace_examples(fuzz_examples, f"{mode}-grads")
    _settings(n)(given(inplace_programs(max_ops=5, exclude_writes=GRAD_UNSAFE_WRITES))(check))()
