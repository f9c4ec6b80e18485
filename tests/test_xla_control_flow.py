"""The XLA backend on control flow: ``cond``, ``while_loop`` and ``scan`` nodes become ``jax.lax.cond`` /
``while_loop`` / ``scan`` inside ONE jitted program (no region compiled on its own, nothing decided on the host),
and a traced-then-XLA program equals eager on inputs that take each branch or trip count.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import eager
import tracer
from compare import workloads
from compare.correctness import compare_outputs, named
from compare.modes import as_tuple


def _xla(fn, *example):
    compiled = compiler.compile(fn, *example, backend="xla")
    assert compiled.backend == "xla"
    return compiled


def _jaxpr(compiled, *inputs) -> str:
    """The one jaxpr XLA is given (the graph's placeholders fed with ``inputs``)."""
    return compiled.lowered.executable.jaxpr([t.numpy() for t in inputs])


def _same(got, want, rtol=1e-6):
    for g, w in zip(as_tuple(got), as_tuple(want), strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w.detach().numpy(), rtol=rtol, atol=1e-6)


# ---------------------------------------------------------------- cond


def _branchy(x, w):
    return eager.cond(x.sum() > 0, lambda v: (v * w).exp(), lambda v: -v + w, (x,))


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["branch_traced", "other_branch"])
def test_xla_cond_equals_eager_on_either_branch(sign):
    x, w = eager.ones(3), eager.tensor([1.0, 2.0, 3.0])
    compiled = _xla(_branchy, x, w)
    _same(compiled(x * sign, w), _branchy(x * sign, w))
    assert compiled.retrace_count == 0


def test_xla_cond_is_one_lax_cond_in_one_jitted_program_with_no_region_compiled_apart():
    x, w = eager.ones(3), eager.tensor([1.0, 2.0, 3.0])
    compiled = _xla(_branchy, x, w)
    text = _jaxpr(compiled, x, w)
    assert text.count("cond[") == 1 and "exp" in text and "neg" in text  # both branches inside the one cond
    regions = [r for n in compiled.graph.nodes for r in tracer.ir.regions_of(n)]
    assert [r.label for r in regions] == ["true", "false"]
    assert all(r._executor is None for r in regions)  # not lowered apart: jax.jit took them with the graph


# ---------------------------------------------------------------- while_loop


def _grow(x):
    return eager.while_loop(lambda i, v: v.sum() < 100, lambda i, v: (i + 1, v * 2), (eager.tensor(0), x))


@pytest.mark.parametrize("scale,trips", [(1.0, 6), (5.0, 3), (40.0, 0)])
def test_xla_while_loop_runs_the_trip_count_the_data_asks_for(scale, trips):
    compiled = _xla(_grow, eager.ones(3))
    i, v = compiled(eager.ones(3) * scale)
    want_i, want_v = _grow(eager.ones(3) * scale)
    assert i.item() == want_i.item() == trips
    assert i.dtype == eager.int64  # the int64 counter is not narrowed to int32: the program runs under x64
    assert v.tolist() == want_v.tolist()
    assert "while[" in _jaxpr(compiled, eager.ones(3))


def test_xla_while_loop_reads_captured_tensors_on_every_trip():
    step = eager.tensor([0.5, 1.5])

    def f(x):
        return eager.while_loop(lambda v: v.sum() < 20, lambda v: v + step, x)
    compiled = _xla(f, eager.zeros(2))
    for start in ([0.0, 0.0], [9.0, 9.0], [30.0, 0.0]):
        x = eager.tensor(start)
        assert compiled(x).tolist() == f(x).tolist()


# ---------------------------------------------------------------- scan


def _rnn(xs, w, h0, dim, reverse):
    return eager.scan(lambda h, x: ((h @ w + x).tanh(), h * x), h0, xs, dim=dim, reverse=reverse)


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_xla_scan_equals_eager_forward_and_reverse_along_any_dim(dim, reverse):
    rng = np.random.default_rng(0)
    w, h0 = eager.tensor(rng.standard_normal((3, 3)) * 0.5), eager.tensor(rng.standard_normal(3))
    shape = (5, 3) if dim == 0 else (3, 5)

    def f(xs, w, h0):
        return _rnn(xs, w, h0, dim, reverse)
    compiled = _xla(f, eager.tensor(rng.standard_normal(shape)), w, h0)
    other = eager.tensor(rng.standard_normal(shape))
    (h, ys), (want_h, want_ys) = compiled(other, w, h0), f(other, w, h0)
    assert ys.shape == shape  # stacked along dim, as xs is laid out
    np.testing.assert_allclose(h.numpy(), want_h.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ys.numpy(), want_ys.numpy(), rtol=1e-12)
    assert "scan[" in _jaxpr(compiled, other, w, h0)


def test_xla_scan_stacks_ys_along_dim_when_dim_is_not_zero():
    def f(xs):
        return eager.scan(lambda c, x: (c + x, c * x), eager.zeros(2), xs, dim=1, reverse=True)
    xs = eager.randn(2, 5)
    compiled = _xla(f, xs)
    other = eager.randn(2, 5)
    (c, ys), (want_c, want_ys) = compiled(other), f(other)
    assert ys.shape == want_ys.shape == (2, 5)
    _same((c, ys), (want_c, want_ys))


def test_xla_cond_nested_in_a_scan_body_is_a_lax_cond_inside_a_lax_scan():
    def f(xs):
        def step(c, x):
            return eager.cond(x > 0, lambda a, b: a + b, lambda a, b: a - b, (c, x)), c
        return eager.scan(step, eager.tensor(0.0), xs)
    compiled = _xla(f, eager.tensor([1.0, -2.0, 3.0, -4.0]))
    for values in ([-1.0, -2.0, 5.0, 0.5], [1.0, 1.0, 1.0, 1.0], [-3.0, -1.0, -2.0, -0.5]):
        other = eager.tensor(values)
        _same(compiled(other), f(other))
    text = _jaxpr(compiled, eager.tensor([1.0, -2.0, 3.0, -4.0]))
    assert text.index("scan[") < text.index("cond[")  # the cond sits in the scan's body


def test_a_float64_value_only_inside_a_region_keeps_float64():
    def f(x):
        return eager.cond(x.sum() > 0, lambda v: (v.double() * 3).exp().float(), lambda v: v, (x,))
    x = eager.tensor([0.5, 0.25])
    compiled = _xla(f, x)
    text = _jaxpr(compiled, x)
    assert "f64[2]" in text  # JAX would narrow it to f32 without x64, found inside the true branch
    _same(compiled(x), f(x))


# ---------------------------------------------------------------- training through regions, and state


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_an_xla_train_step_through_scan_gets_eager_gradients(reverse):
    rng = np.random.default_rng(1)
    w = eager.tensor(rng.standard_normal((3, 3)) * 0.5, requires_grad=True)
    h0 = eager.tensor(rng.standard_normal(3), requires_grad=True)

    def step(xs):
        h, ys = _rnn(xs, w, h0, 0, reverse)
        loss = h.sum() + (ys * ys).sum()
        loss.backward()
        return loss
    compiled = _xla(step, eager.tensor(rng.standard_normal((5, 3))))
    assert compiled.graph.op_counts()["scan"] >= 2  # the forward scan and the backward (reverse) scans
    other = eager.tensor(rng.standard_normal((5, 3)))
    w.grad = h0.grad = None
    loss = compiled(other).item()
    got = [w.grad.numpy().copy(), h0.grad.numpy().copy()]
    w.grad = h0.grad = None
    want_loss = step(other).item()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    for g, t in zip(got, (w, h0)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["true", "false"])
def test_an_xla_train_step_through_cond_gets_the_taken_branchs_gradient(sign):
    w = eager.tensor([0.5, -1.0, 2.0], dtype=eager.float64, requires_grad=True)

    def step(x):
        loss = eager.cond(x.sum() > 0, lambda v: (v * w).sin(), lambda v: v * w * w, (x,)).sum()
        loss.backward()
        return loss
    x = eager.tensor([1.0, 2.0, 3.0], dtype=eager.float64)
    compiled = _xla(step, x)
    w.grad = None
    compiled(x * sign)
    got = w.grad.numpy().copy()
    w.grad = None
    step(x * sign)
    np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-12)


def test_xla_dynamic_net_with_cond_on_a_state_tensor_agrees_with_eager_on_every_call():
    from eager import nn

    class DynamicNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear1, self.linear2 = nn.Linear(4, 8), nn.Linear(8, 2)
            self.register_buffer("counter", eager.tensor(0))

        def forward(self, x):
            self.counter.add_(1)
            h = eager.cond((self.counter & 1) == 0, lambda v: self.linear1(v), lambda v: self.linear1(v * 2), (x,))
            return self.linear2(h.clamp(min=0))
    eager.manual_seed(0)
    model, twin = DynamicNet(), DynamicNet()
    twin.load_state_dict(model.state_dict())
    x = eager.randn(3, 4)
    compiled = _xla(model, x)
    for _ in range(4):
        np.testing.assert_allclose(compiled(x).numpy(), twin(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert model.counter.item() == twin.counter.item() == 4 and compiled.retrace_count == 0


# ---------------------------------------------------------------- the control-flow workloads


@pytest.mark.parametrize("name", ["rnn_scan", "power_iteration", "branch_gate"])
def test_the_control_flow_workloads_compiled_for_xla_match_float64(name):
    wl = workloads.get(name)
    arrays = wl.make_inputs("small", seed=0)
    prog = wl.build(eager, arrays)
    compiled = _xla(prog.fn, *prog.args)
    op = {"rnn_scan": "scan", "power_iteration": "while_loop", "branch_gate": "cond"}[name]
    assert compiled.graph.op_counts()[op] == 1
    got = named(as_tuple(compiled(*prog.args)), wl.outputs)
    result = compare_outputs(got, wl.run_reference(arrays))
    assert result.ok, result.summary()


def test_branch_gate_compiled_for_xla_takes_the_other_branch_when_the_batch_mean_flips():
    wl = workloads.get("branch_gate")
    arrays = wl.make_inputs("small", seed=0)
    prog = wl.build(eager, arrays)
    compiled = _xla(prog.fn, *prog.args)
    flipped = {**arrays, "x": -arrays["x"]}
    got = compiled(eager.tensor(flipped["x"]), *prog.args[1:]).numpy()
    want = wl.run_reference(flipped)["out"]
    assert (arrays["x"].mean() > 0) != (flipped["x"].mean() > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_harness_compiled_mode_on_the_xla_backend_passes_every_control_flow_workload(monkeypatch):
    """compare/modes.py has no XLA mode of its own; its compiled mode forced onto backend='xla' (as the SIMT
    test does for 'simt') passes the harness's float64 and eager checks, DynamicNet's retraces included."""
    from compare.harness import RunConfig, correctness_failures, run
    backends = []
    real = compiler.compile

    def xla_compile(fn, *args, **kwargs):
        compiled = real(fn, *args, backend="xla", **kwargs)
        backends.append(compiled.backend)
        return compiled
    monkeypatch.setattr(compiler, "compile", xla_compile)
    names = ["rnn_scan", "power_iteration", "branch_gate", "dynamic_net"]
    df = run(RunConfig(workloads=names, modes=["eager", "compiled"], sizes=["small"], repeats=3, warmup=1,
                       target_s=1e-3))
    runs = df[(df.metric == "run") & (df["mode"] == "compiled")]
    assert len(runs) == len(names) and (runs.status == "ok").all(), runs[runs.status != "ok"][["workload", "detail"]]
    assert set(backends) == {"xla"}
    fails = correctness_failures(df)
    assert fails.empty, fails[["workload", "mode", "metric", "detail"]].to_string()
