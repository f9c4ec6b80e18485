"""Differential fuzzing: random programs agree across modes, with float64 NumPy as the judge.

Properties (each checked on ``fuzz_examples`` programs; ``--fuzz-long`` for thousands):
- eager == float64 NumPy reference, within the written tolerances below;
- gradients of a scalar loss over the program == ``jax.grad`` of the same program (float64);
- traced == eager, and compiled == eager on the CPU, with the CUDA kernels under the SIMT emulator, and (with a
  GPU) on cuda.

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

from .programs import EagerLib, JaxLib, NumpyLib, programs

jax.config.update("jax_enable_x64", True)

# Relative tolerance per dtype, per instruction of the program; the absolute part scales with the largest
# magnitude the float64 reference saw anywhere in the program (cancellation can't beat that scale).
RTOL = {"float32": 2e-5, "float64": 1e-11}
F32_LIMIT = 1e30  # a float64 value beyond this would overflow float32: the program is not a fair float32 test

NP, JX, EG = NumpyLib(), JaxLib(), EagerLib()


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


def test_eager_matches_float64_reference(fuzz_examples):
    @_settings(fuzz_examples)
    @given(programs())
    def check(prog):
        inputs = prog.inputs()
        ref, scale = _reference(prog, inputs)
        assume(all(np.all(np.isfinite(v)) for v in ref))
        if prog.dtype == "float32":
            assume(scale < F32_LIMIT)
        _, values = _eager_values(prog, inputs)
        out = values[-1]
        assert out.dtype == np.dtype(prog.dtype), f"result dtype {out.dtype} != program dtype\n{prog!r}"
        _assert_close(out.numpy(), ref[-1], prog, scale, "eager vs float64 reference")

    check()


def test_eager_gradients_match_jax_grad(fuzz_examples):
    @_settings(fuzz_examples)
    @given(programs())
    def check(prog):
        prog.dtype = "float64"
        inputs = prog.inputs()
        ref, scale = _reference(prog, inputs)
        assume(all(np.all(np.isfinite(v)) for v in ref))
        weights = np.random.default_rng(prog.seed + 1).standard_normal(np.shape(ref[-1]))

        def loss_jax(*xs):
            return jax.numpy.sum(prog.run(JX, list(xs))[-1] * weights)

        want = jax.grad(loss_jax, argnums=tuple(range(prog.n_inputs)))(*[jax.numpy.asarray(x) for x in inputs])
        tensors, values = _eager_values(prog, inputs, requires_grad=True)
        loss = (values[-1] * eager.tensor(weights)).sum()
        if not loss.requires_grad:  # the output does not depend on any input (e.g. a constant)
            return
        loss.backward()
        grad_scale = max([1.0] + [float(np.max(np.abs(np.asarray(g)))) for g in want if np.size(g)])
        for i, (t, g) in enumerate(zip(tensors, want)):
            got = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
            _assert_close(got, np.asarray(g), prog, grad_scale, f"gradient of input v{i} vs jax.grad")

    check()


@pytest.mark.parametrize("mode", ["traced", "compiled", "compiled-simt",
                                  pytest.param("compiled-cuda", marks=pytest.mark.gpu)])
def test_static_modes_match_eager(fuzz_examples, mode):
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

    @_settings(max(fuzz_examples // 2, 10))
    @given(programs(max_ops=5))
    def check(prog):
        inputs = prog.inputs()
        ref, scale = _reference(prog, inputs)
        assume(all(np.all(np.isfinite(v)) for v in ref))
        if prog.dtype == "float32":
            assume(scale < F32_LIMIT)
        tensors = [eager.tensor(x, device=device) for x in inputs]
        fn = lambda *xs: prog.run(EG, list(xs))[-1]
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
        checked.append(prog)

    checked = []
    check()
    print(f"\n{mode}: {len(checked)} programs compared with eager")
