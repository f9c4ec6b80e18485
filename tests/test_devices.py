"""CPU (NumPy) and CUDA (CuPy) run the same code paths and agree: values and gradients.

Skipped, with the reason, where CuPy or a CUDA GPU is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

import eager

pytestmark = pytest.mark.gpu

TOL = {np.dtype("float32"): dict(rtol=1e-5, atol=1e-6), np.dtype("float64"): dict(rtol=1e-11, atol=1e-12)}

# fn(x, y) with x: [3, 4] and y: [4] (both require grad); each returns one tensor
OPS = {
    "add_broadcast": lambda x, y: x + y,
    "mul_div": lambda x, y: x * y / (y.abs() + 1),
    "pow": lambda x, y: x.abs() ** y.sigmoid(),
    "unary": lambda x, y: x.exp() + x.tanh() + x.sin() * x.cos() + x.abs().sqrt() + (x.abs() + 1).log(),
    "erf_relu_sigmoid": lambda x, y: x.erf() + x.relu() + x.sigmoid(),
    "compare_where": lambda x, y: eager.where(x > y, x, y * 2),
    "maximum_clamp": lambda x, y: eager.maximum(x, y) + x.clamp(-0.5, 0.5),
    "reductions": lambda x, y: x.sum(0) + x.mean(0) + x.amax(0) + x.var(0) + x.max(dim=0).values + y,
    "softmax": lambda x, y: x.softmax(-1) + x.log_softmax(0),
    "matmul": lambda x, y: x @ y,
    "matmul_batched": lambda x, y: x.reshape(2, 2, 3) @ x.reshape(2, 3, 2),
    "movement": lambda x, y: x.T.reshape(2, 6).permute(1, 0).flatten() + x.unsqueeze(0).expand(2, 3, 4).sum((0, 1))[0],
    "indexing": lambda x, y: x[1:, ::2].sum() + x[eager.tensor([0, 2, 0], device=x.device)].sum(0) + x[x > 0].sum(),
    "cat_stack_split": lambda x, y: eager.cat([x, y[None]]).sum(0) + eager.stack(x.split(2, dim=1), 0).sum((0, 1, 2)),
    "argmax": lambda x, y: x.argmax(dim=1).float().sum() + x,
}


def _run(fn, arrays, device):
    ts = [eager.tensor(a, device=device, requires_grad=True) for a in arrays]
    out = fn(*ts)
    assert out.device == device
    (out * out).sum().backward()
    return out.detach().cpu().numpy(), [None if t.grad is None else t.grad.cpu().numpy() for t in ts]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(OPS))
def test_cpu_and_cuda_agree(name, dtype):
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(-2, 2, (3, 4)).astype(dtype), rng.uniform(-2, 2, (4,)).astype(dtype)]
    cpu_out, cpu_grads = _run(OPS[name], arrays, "cpu")
    gpu_out, gpu_grads = _run(OPS[name], arrays, "cuda")
    np.testing.assert_allclose(gpu_out, cpu_out, **TOL[np.dtype(dtype)])
    for g, c in zip(gpu_grads, cpu_grads):
        assert (g is None) == (c is None)
        if c is not None:
            np.testing.assert_allclose(g, c, **TOL[np.dtype(dtype)])


def test_moving_between_devices_carries_the_gradient_back():
    x = eager.tensor([1.0, 2.0], requires_grad=True)
    y = (x.to("cuda") * 3).cpu()
    assert y.device == "cpu"
    y.sum().backward()
    assert x.grad.device == "cpu" and x.grad.tolist() == [3.0, 3.0]


def test_repeated_index_gradients_and_writes_on_cuda():
    x = eager.tensor([1.0, 2.0, 3.0], device="cuda", requires_grad=True)
    x[eager.tensor([0, 0, 2], device="cuda")].sum().backward()
    assert x.grad.tolist() == [2.0, 0.0, 1.0]
    y = eager.zeros(3, device="cuda")
    y[eager.tensor([0, 0, 2], device="cuda")] = eager.tensor([1.0, 2.0, 3.0], device="cuda")
    assert y.tolist() == [2.0, 0.0, 3.0]


def test_creation_and_random_on_cuda():
    eager.manual_seed(0)
    a = eager.randn(1000, device="cuda")
    assert a.device == "cuda" and a.dtype == eager.float32 and abs(a.mean().item()) < 0.15
    assert eager.zeros(2, 3, device="cuda").device == "cuda" and eager.ones(2, device="cuda").tolist() == [1.0, 1.0]


def test_an_out_of_range_index_tensor_is_an_error_on_cuda_too():
    """CuPy wraps such an index around (x[5] of 3 elements reads x[2]); eager checks it, as NumPy does."""
    x = eager.arange(3.0, device="cuda", requires_grad=True)
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 3"):
        x[eager.tensor([0, 5], device="cuda")]
    with pytest.raises(IndexError, match="out of bounds for axis 1 with size 3"):
        eager.zeros(2, 3, device="cuda")[..., eager.tensor([-4], device="cuda")]
    y = eager.zeros(3, device="cuda")
    with pytest.raises(IndexError):
        y[eager.tensor([3], device="cuda")] = 1.0
    assert x[eager.tensor([-1, 0], device="cuda")].tolist() == [2.0, 0.0]
