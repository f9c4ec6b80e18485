"""End to end: compiled == eager == float64 reference on the tracer issue's workloads, fusion structure on
real models, training steps over 20 steps, the XLA and NumPy backends, the report and debug output."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

import compiler
import eager
import eager.nn as nn
import eager.nn.functional as F
import eager.optim as optim
from compiler.testing import cuda_compile_check, cuda_compilers, cuda_module_source, reference

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
COMPILED: list = []  # every program compiled here: its CUDA source must build with nvcc and NVRTC too


def _compile(fn, *args, **kwargs):
    c = compiler.compile(fn, *args, **kwargs)
    COMPILED.append(c)
    return c


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHDUEL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graphduel-cache"))
    mp.delenv("GRAPHDUEL_FUSION_FUEL", raising=False)
    mp.delenv("GRAPHDUEL_DEBUG", raising=False)
    yield
    mp.undo()


def _np(t):
    return [x.numpy() for x in (t if isinstance(t, (tuple, list)) else (t,))]


def composites(x, w, b, t):
    return (F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), F.softplus(x), F.softmax(x, dim=-1),
            F.log_softmax(x, dim=-1), F.layer_norm(x, (x.shape[-1],), w, b), F.linear(x, w.reshape(1, -1).expand(
                3, -1), b[:3]), F.mse_loss(x, x * 0.5), F.cross_entropy(x, t), F.relu(x), F.sigmoid(x), F.tanh(x),
            x.std(dim=0), x.var(dim=1), eager.logsumexp(x, dim=-1), x.norm(), F.leaky_relu(x))


def attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return F.softmax(scores, dim=-1) @ v


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.ln(x)
        return x + self.fc2(F.gelu(self.fc1(attention(h, h, h)), approximate="tanh"))


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((6, 10)).astype(dtype), rng.standard_normal(10).astype(dtype),
            rng.standard_normal(10).astype(dtype), rng.integers(0, 10, 6))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_functional_composites(dtype):
    arrays = _inputs(dtype)
    tensors = [eager.tensor(a) for a in arrays]
    f = _compile(composites, *tensors)
    fresh = [eager.tensor(a) for a in _inputs(dtype, seed=1)]
    got = _np(f(*fresh))
    with eager.no_grad():
        want = _np(composites(*fresh))
    judge = reference(f.lowered.source_graph, [t.numpy() for t in fresh])
    for i, (g, w, r) in enumerate(zip(got, want, judge)):
        np.testing.assert_allclose(g, w, err_msg=f"output {i}", **TOL[dtype])
        np.testing.assert_allclose(g, r, err_msg=f"output {i} vs float64", **TOL[dtype])
    assert len(f.kernels) < len(f.lowered.source_graph.calls) / 2


@pytest.fixture(scope="module")
def block():
    eager.manual_seed(0)
    model = Block(16)
    x = eager.randn(2, 8, 16)
    return model, x, _compile(model, x)


def test_attention_block_forward(block):
    model, x, f = block
    x2 = eager.randn(2, 8, 16)
    with eager.no_grad():
        want = model(x2).numpy()
    np.testing.assert_allclose(f(x2).numpy(), want, **TOL["float32"])
    params = {name: p.detach().numpy() for name, p in model.named_parameters()}
    graph = f.lowered.source_graph
    judge = reference(graph, [params.get(p.name, x2.numpy()) for p in graph.placeholders])
    np.testing.assert_allclose(f(x2).numpy(), judge[0], rtol=1e-4, atol=1e-4)


def test_fusion_on_real_modules(block):
    _, _, f = block
    kinds = [s.kind for s in f.lowered.program.steps]
    assert kinds.count("library") == 4  # qk^T, p@v, fc1, fc2: BLAS, nothing else is
    # the layer norm and the softmax are each one row kernel, the tanh-GELU (with fc1's bias) one kernel
    row = [s.group for s in f.lowered.program.steps if s.kind == "kernel" and s.group.reduced]
    assert len(row) == 2
    gelu = [s.group for s in f.lowered.program.steps if s.kind == "kernel" and "tanh" in
            {m.op for m in s.group.members}]
    assert len(gelu) == 1 and "add" in {m.op for m in gelu[0].members}


def _mlp_step(opt_name, dtype, seed=0):
    eager.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    model = model.double() if dtype == "float64" else model
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd" else \
        optim.Adam(model.parameters(), lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return model, step


def _batches(dtype, n=20):
    rng = np.random.default_rng(5)
    return [(eager.tensor(rng.standard_normal((16, 20)).astype(dtype)), eager.tensor(rng.integers(0, 5, 16)))
            for _ in range(n)]


@pytest.fixture(scope="module", params=["sgd", "adam"])
def trained(request):
    """20 steps each: compiled (float32), eager (float32) and the float64 judge (eager, float64)."""
    batches = _batches("float32")
    model_c, step_c = _mlp_step(request.param, "float32")
    compiled = _compile(step_c, *batches[0])
    losses_c = [float(compiled(x, y)) for x, y in batches]
    model_e, step_e = _mlp_step(request.param, "float32")
    losses_e = [float(step_e(x, y)) for x, y in batches]
    model_r, step_r = _mlp_step(request.param, "float64")
    losses_r = [float(step_r(x.double(), y)) for x, y in batches]
    return request.param, compiled, (model_c, losses_c), (model_e, losses_e), (model_r, losses_r)


def test_train_steps_match_eager_and_float64(trained):
    name, _, (mc, lc), (me, le), (mr, lr) = trained
    np.testing.assert_allclose(lc, le, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(lc, lr, rtol=1e-3, atol=1e-4, err_msg=name)
    for pc, pe in zip(mc.parameters(), me.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


def test_optimizer_update_is_one_kernel_per_parameter(trained):
    name, compiled, *_ = trained
    program = compiled.lowered.program
    params = [p for p, _ in program.graph.updates if p.role == "param"]
    writers = {}
    for s in program.steps:
        for n in s.writes:
            writers[n.id] = s
    update_steps = {id(writers[v.id]) for _, v in program.graph.updates}
    assert len(update_steps) == len(params), f"{name}: {len(update_steps)} kernels for {len(params)} params"
    assert all(writers[v.id].kind == "kernel" for _, v in program.graph.updates)


def test_xla_backend_agrees_on_the_same_graph():
    arrays = [eager.tensor(a) for a in _inputs("float32")]
    c = compiler.compile(composites, *arrays)
    x = compiler.compile(composites, *arrays, backend="xla")
    for a, b in zip(_np(c(*arrays)), _np(x(*arrays))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    assert x.backend == "xla"


def test_numpy_backend_runs_the_same_groups():
    arrays = [eager.tensor(a) for a in _inputs("float64")]
    c = compiler.compile(composites, *arrays)
    n = compiler.compile(composites, *arrays, backend="numpy")
    assert [k.name for k in c.kernels] == [k.name for k in n.kernels]
    for a, b in zip(_np(c(*arrays)), _np(n(*arrays))):
        np.testing.assert_allclose(a, b, **TOL["float64"])


def test_report_and_debug_output(block, capsys, monkeypatch):
    model, x, f = block
    f(x)
    df = f.report(repeat=2)
    out = capsys.readouterr().out
    assert {"ops", "source_lines", "bytes_read", "bytes_written", "time_us", "GB/s", "%copy_bw"} <= set(df.columns)
    assert df.attrs["kernels"] < df.attrs["eager_ops"] and df.attrs["compile_cached_est_s"] < 1.0
    assert "kernels" in out and "eager ops" in out
    monkeypatch.setenv("GRAPHDUEL_DEBUG", "3")
    compiler.compile(lambda t: t.exp() * 2, eager.ones(4))
    err = capsys.readouterr().err
    assert "graph after passes" in err and "fusion 1:" in err and "void k0" in err


def test_compile_rejects_unknown_device_and_backend():
    with pytest.raises(ValueError, match="device"):
        compiler.compile(lambda t: t * 2, eager.ones(2), device="tpu")
    with pytest.raises(ValueError, match="backend"):
        compiler.compile(lambda t: t * 2, eager.ones(2), backend="fortran")


@pytest.mark.gpu
def test_cuda_backend_matches_cpu():
    arrays = [eager.tensor(a) for a in _inputs("float32")]
    c = compiler.compile(composites, *arrays)
    g = compiler.compile(composites, *[a.to("cuda") for a in arrays], device="cuda")
    for a, b in zip(_np(c(*arrays)), _np(g(*[a.to("cuda") for a in arrays]))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_new_signature_retraces_and_compiles_a_new_program():
    f = _compile(lambda t: F.softmax(t * 2, dim=-1), eager.ones(4, 8))
    out = f(eager.ones(6, 8))
    assert out.shape == (6, 8) and f.retrace_count == 1
    np.testing.assert_allclose(out.numpy(), np.full((6, 8), 1 / 8, np.float32), rtol=1e-6)


def test_compile_accepts_a_traced_function():
    import tracer
    t = tracer.trace(lambda a: a.exp() + 1, eager.ones(3))
    f = _compile(t, eager.ones(3))
    assert f.backend == "cpu" and len(f.kernels) == 1
    np.testing.assert_allclose(f(eager.zeros(3)).numpy(), [2, 2, 2])


@pytest.mark.skipif(eager.cuda_available(), reason="checks the message shown when there is no GPU")
def test_cuda_device_without_cupy_or_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="cuda"):
        compiler.compile(lambda t: t * 2, eager.ones(2), device="cuda")


@pytest.mark.skipif(not cuda_compilers(), reason="neither nvcc nor NVRTC is installed: CUDA source not compiled")
def test_every_compiled_program_has_cuda_source_that_nvcc_and_nvrtc_build():
    from compiler.codegen.cuda import header
    assert COMPILED, "run with the other tests of this module"
    seen, bodies = set(), []
    for c in COMPILED:
        for lowered in c.lowerings:
            if lowered.program is None or id(lowered) in seen:
                continue
            seen.add(id(lowered))
            body = cuda_module_source(lowered.program).replace(header(), "")
            bodies.append(body.replace('extern "C" __global__ void k', f'extern "C" __global__ void p{len(bodies)}_k'))
    error = cuda_compile_check([header()] + bodies)
    assert error is None, error


def test_a_train_step_runs_as_few_kernels(trained):
    """The MLP step (cross-entropy, ReLU, SGD-momentum or Adam) in at most 12 kernels: one per parameter update
    (each with its bias-gradient sum), the ReLU forward and backward, and the loss. A value recomputed in
    several kernels must not look like a path between them (it once kept log-softmax's max in a kernel of
    its own: 13 kernels)."""
    name, compiled, *_ = trained
    steps = compiled.lowered.program.steps
    kernels = [s for s in steps if s.kind == "kernel"]
    assert len(kernels) <= 12, f"{name}: {[s.group for s in kernels]}"
    assert not any({m.op for m in s.group.members} <= {"max", "add"} for s in kernels), name


def _lowerings_compiled_here():
    seen = {}
    for c in COMPILED:
        for lowered in c.lowerings:
            if lowered.program is not None and lowered.example is not None:
                seen.setdefault(id(lowered), lowered)
    return list(seen.values())


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the SIMT emulator cannot build")
def test_every_compiled_program_runs_its_cuda_kernels_under_the_simt_emulator():
    """The CUDA kernels of every program above (models, train steps, composites in both dtypes), run with the
    cuda backend's launches under the emulator, agree with the C kernels; running each block's threads in
    reverse order gives bit-identical results (no shared-memory race)."""
    from compiler.runtime.cuda import build_cuda
    lowerings = _lowerings_compiled_here()
    assert len(lowerings) >= 6, "run with the other tests of this module"
    print(f"simt: {len(lowerings)} programs, {sum(len(lw.kernels) for lw in lowerings)} kernels")
    for lowered in lowerings:
        want = lowered.executable.run(lowered.example)
        ex = build_cuda(lowered.program, simulate=True)
        forward = [a.copy() for a in ex.run(lowered.example)]
        ex.module.reverse = True
        reverse = ex.run(lowered.example)
        for i, (w, f, r) in enumerate(zip(want, forward, reverse)):
            what = f"{[k.name for k in lowered.kernels][:3]}... output {i}"
            np.testing.assert_array_equal(f, r, err_msg=f"{what}: thread order changed the result")
            np.testing.assert_allclose(f, w, err_msg=what, **TOL.get(str(np.asarray(w).dtype), dict(rtol=0, atol=0)))


def test_the_first_call_program_of_a_train_step_is_compiled_only_if_it_runs_again():
    """A step that creates optimizer state has a first-call program that usually runs once: it runs on the
    static executor and is not compiled (half the compile time of the MLP step); reset the state and it runs
    again, now compiled. Every call matches eager."""
    batches = _batches("float32", n=5)
    model_c, step_c = _mlp_step("adam", "float32")
    model_e, step_e = _mlp_step("adam", "float32")
    compiled = _compile(step_c, *batches[0])
    assert len(compiled.lowerings) == 1 and compiled.lowerings[0].graph is not None
    first, steady = compiled.traced.entries
    assert compiled.lowered is steady.exe and first.exe is not steady.exe

    def opt_of(step):
        return next(c.cell_contents for c in step.__closure__ if hasattr(c.cell_contents, "param_groups"))
    losses = []
    for i, (x, y) in enumerate(batches):
        if i == 3:  # fresh optimizer state and no .grad in both: the first-call program's guards match again
            for model, step in ((model_c, step_c), (model_e, step_e)):
                opt_of(step).state.clear()
                for p in model.parameters():
                    p.grad = None
        losses.append((float(compiled(x, y)), float(step_e(x, y))))
    assert compiled.retrace_count == 0
    assert len(compiled.lowerings) == 2 and first.exe.lowered is compiled.lowerings[1]
    np.testing.assert_allclose([c for c, _ in losses], [e for _, e in losses], rtol=1e-5, atol=1e-6)
    for pc, pe in zip(model_c.parameters(), model_e.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-4, atol=1e-6)
