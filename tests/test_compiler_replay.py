"""cuda_graph=True: a step replayed on fixed buffers. New state is written over the old (donated) where the
kernel may, and copied back inside the step where it may not, so a training step copies in only its batch and
out only what is not state (the loss, the gradients). Proven on the CPU by replaying the same buffers with the
CUDA kernels under the SIMT emulator; the GPU test (a captured CUDA graph) skips without a GPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import compiler
import eager
from compiler.bench import mlp_adam_step
from compiler.memory import plan_memory

needs_cxx = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the SIMT emulator cannot build")


def _mlp_step(device="cpu"):
    return mlp_adam_step(device, sizes=(12, 16, 4), lr=1e-2)


def _batches(n=6, device="cpu"):
    rng = np.random.default_rng(3)
    return [(eager.tensor(rng.standard_normal((8, 12)).astype(np.float32), device=device),
             eager.tensor(rng.integers(0, 4, 8), device=device)) for _ in range(n)]


def test_state_updates_are_donated_where_the_kernel_reads_only_the_element_it_writes():
    model, opt, step = _mlp_step()
    batches = _batches(2)
    f = compiler.compile(step, *batches[0])
    f(*batches[0])
    f(*batches[1])
    program = f.lowered.program
    plan = plan_memory(program, donate_state=True)
    kinds = {p.name: plan.kind[v.id] for p, v in program.graph.updates}
    weights = [name for name in kinds if ".weight" in name and not name.endswith(".step")]
    assert len(weights) == 6 and all(kinds[w] == "donated" for w in weights)  # weights, exp_avg, exp_avg_sq
    # written once per row (a bias update fused with its gradient's sum over the batch) or once per kernel (the
    # step count), while other threads may still read the old value: never in place, copied back in the step
    assert [kinds[name] for name in kinds if name not in weights] == ["output"] * 10
    assert "donated" not in plan_memory(program).kind.values()  # only when asked for


@needs_cxx
def test_a_replayed_train_step_matches_eager_and_copies_only_its_batch():
    model_r, opt_r, step_r = _mlp_step()
    model_e, opt_e, step_e = _mlp_step()
    batches = _batches()
    f = compiler.compile(step_r, *batches[0], backend="simt", cuda_graph=True)
    losses = []
    for x, y in batches:
        losses.append((f(x, y), float(step_e(x, y))))
    held = [float(loss) for loss, _ in losses]
    np.testing.assert_allclose(held, [e for _, e in losses], rtol=1e-5, atol=1e-6)
    for pr, pe in zip(model_r.parameters(), model_e.parameters()):
        np.testing.assert_allclose(pr.detach().numpy(), pe.detach().numpy(), rtol=1e-4, atol=1e-6)
        assert float(opt_r.state[pr]["step"]) == float(opt_e.state[pe]["step"]) == len(batches)
        np.testing.assert_allclose(opt_r.state[pr]["exp_avg_sq"].numpy(), opt_e.state[pe]["exp_avg_sq"].numpy(),
                                   rtol=1e-4, atol=1e-9)
    replay = f.lowered.replay
    n_inputs = len(replay.static_inputs)
    # call 1 ran the first-call program (it creates the optimizer state); the replay started at call 2
    assert replay.copies_in == n_inputs + 2 * (len(batches) - 2)


@needs_cxx
def test_replay_updates_state_in_place_and_keeps_returned_losses():
    model, opt, step = _mlp_step()
    batches = _batches(4)
    f = compiler.compile(step, *batches[0], backend="simt", cuda_graph=True)
    f(*batches[0])
    loss = f(*batches[1])
    weight = model[0].weight._data
    value, loss_value = weight.copy(), float(loss)
    f(*batches[2])
    assert model[0].weight._data is weight and not np.array_equal(weight, value)  # in place, as in PyTorch
    assert float(loss) == loss_value  # a returned loss is a copy: later steps leave it alone


@needs_cxx
def test_a_new_state_array_from_the_caller_is_copied_in():
    w = eager.ones(4)

    def step(x):
        w.add_(x)
        return w.sum()
    f = compiler.compile(step, eager.ones(4), backend="simt", cuda_graph=True)
    assert float(f(eager.ones(4))) == 8.0
    w.mul_(0)  # eager code gives w a new array: the replay must copy it in, not keep using its own buffer
    assert float(f(eager.ones(4))) == 4.0 and w.tolist() == [1.0] * 4


def test_cuda_graph_needs_a_cuda_or_simt_backend():
    with pytest.raises(ValueError, match="cuda_graph"):
        compiler.compile(lambda t: t * 2, eager.ones(2), cuda_graph=True)


@pytest.mark.gpu
def test_a_cuda_graph_train_step_matches_the_cpu():
    model_g, _, step_g = _mlp_step("cuda")
    model_c, _, step_c = _mlp_step("cpu")
    gpu, cpu = _batches(device="cuda"), _batches()
    g = compiler.compile(step_g, *gpu[0], device="cuda", cuda_graph=True)
    c = compiler.compile(step_c, *cpu[0])
    for (xg, yg), (xc, yc) in zip(gpu, cpu):
        np.testing.assert_allclose(float(g(xg, yg)), float(c(xc, yc)), rtol=1e-4, atol=1e-6)
    for pg, pc in zip(model_g.parameters(), model_c.parameters()):
        np.testing.assert_allclose(pg.detach().cpu().numpy(), pc.detach().numpy(), rtol=1e-3, atol=1e-5)
    assert g.lowered.replay.copies_in == len(g.lowered.replay.static_inputs) + 2 * (len(gpu) - 2)


@needs_cxx
def test_two_state_tensors_taking_one_new_value_both_advance():
    """Only one of them can have the value written over its buffer; the other gets it copied in the step
    (found in review: both were taken as written over, and one never changed)."""
    def make(a, b):
        def step(x):
            t = a + b + x
            a.copy_(t)
            b.copy_(t)
            return x.sum()
        return step
    ab = [eager.tensor(np.full(8, v, np.float32)) for v in (1, 2)]
    ref = [eager.tensor(np.full(8, v, np.float32)) for v in (1, 2)]
    f = compiler.compile(make(*ab), eager.ones(8), backend="simt", cuda_graph=True)
    g = compiler.compile(make(*ref), eager.ones(8))
    for _ in range(3):
        f(eager.ones(8))
        g(eager.ones(8))
        assert [t.tolist() for t in ab] == [t.tolist() for t in ref]


@needs_cxx
def test_a_transposed_state_array_advances_under_replay():
    """The static buffers are C-ordered copies: a transposed (Fortran-ordered) parameter is updated in them,
    not in a contiguous temporary made each call (found in review)."""
    def make(w):
        def step(x):
            w.add_(x)
            return w.sum()
        return step
    results = []
    for kw in ({}, {"backend": "simt", "cuda_graph": True}):
        w = eager.zeros(4, 4)
        w.data = eager.tensor(np.arange(16, dtype=np.float32).reshape(4, 4)).t()
        f = compiler.compile(make(w), eager.ones(4, 4), **kw)
        results.append(([float(f(eager.ones(4, 4))) for _ in range(4)], w.tolist()))
    assert results[0] == results[1] and results[0][0] == [136.0, 152.0, 168.0, 184.0]


@needs_cxx
def test_integer_and_boolean_matmul_under_replay_keep_the_library_product():
    """Only float products need the generated kernel (CuPy captures its own integer and boolean kernels); found in
    review: a boolean matmul under cuda_graph=True failed at its first call."""
    rng = np.random.default_rng(0)
    for a, b in [(np.arange(6).reshape(2, 3), np.arange(12).reshape(3, 4)),
                 (rng.random((2, 3)) > 0.5, rng.random((3, 4)) > 0.5)]:
        f = compiler.compile(lambda x, y: x @ y, eager.tensor(a), eager.tensor(b), backend="simt", cuda_graph=True)
        assert f(eager.tensor(a), eager.tensor(b)).tolist() == (a @ b).tolist()
