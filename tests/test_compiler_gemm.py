"""The generated matmul kernel (``compiler.codegen.gemm``) that CUDA-graph steps use instead of cuBLAS: every
layout, batch broadcast and dtype agrees with NumPy under the SIMT emulator, and the source builds with nvcc and
NVRTC."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from compiler.codegen import gemm
from compiler.testing import cuda_compilers

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the emulator cannot build")


def _run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from compiler.runtime.simt import SimtModule
    out_shape = np.matmul(a, b).shape
    plan = gemm.plan("mm", a, b, out_shape)
    out = np.full(out_shape, np.nan if a.dtype.kind == "f" else -7, a.dtype)
    if plan.grid == 0:
        return out
    module = SimtModule(plan.source)
    if plan.splits == 1:
        module.get_function("mm")((plan.grid,), (gemm.BLOCK,), (a, b, out))
    else:
        scratch = np.full(plan.scratch, np.nan if a.dtype.kind == "f" else -7, a.dtype)
        module.get_function("mm")((plan.grid,), (gemm.BLOCK,), (a, b, scratch))
        module.get_function("mm_sum")((plan.sum_grid,), (gemm.BLOCK,), (scratch, out))
    return out


CASES = {
    "square tile": ((16, 16), (16, 16), False, False),
    "ragged edges": ((37, 21), (21, 19), False, False),
    "mlp layer": ((64, 50), (50, 33), False, False),
    "transposed weight": ((8, 40), (33, 40), False, True),     # x @ W.T, W read in place
    "transposed input": ((40, 24), (40, 17), True, False),     # x.T @ g (a weight gradient)
    "both transposed": ((20, 9), (11, 20), True, True),
    "k of zero": ((5, 0), (0, 3), False, False),
    "one row": ((1, 30), (30, 1), False, False),
    "split k (first layer)": ((64, 784), (256, 784), False, True),  # 64 tiles over K=784: split in slices
    "split k, ragged slices": ((3, 333), (333, 5), False, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matmul_kernel_matches_numpy_for_each_layout(name):
    sa, sb, ta, tb = CASES[name]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    a, b = (a.T if ta else a), (b.T if tb else b)
    np.testing.assert_allclose(_run(a, b), a @ b, rtol=1e-5, atol=1e-6 * max(1, a.shape[1]))  # K sums


def test_batched_and_broadcast_batches_match_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 1, 18, 20))
    b = rng.standard_normal((4, 20, 5))
    np.testing.assert_allclose(_run(a, b), a @ b, rtol=1e-12)  # batch (3, 4) from (3, 1) and (4,)
    c = rng.standard_normal((2, 20, 7)).transpose(0, 2, 1)  # batched and transposed: (2, 7, 20), strided
    d = rng.standard_normal((2, 9, 7))
    np.testing.assert_allclose(_run(d, c), d @ c, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_integer_products_are_exact(dtype):
    rng = np.random.default_rng(2)
    a, b = rng.integers(-50, 50, (19, 23)).astype(dtype), rng.integers(-50, 50, (23, 17)).astype(dtype)
    assert (_run(a, b) == a @ b).all()


def test_few_tiles_over_a_long_k_are_split_and_many_tiles_are_not():
    a, b = np.zeros((64, 784), np.float32), np.zeros((784, 256), np.float32)
    assert gemm.plan("mm", a, b, (64, 256)).splits == 7  # 64 tiles: 448 blocks over 112-wide slices of K
    assert gemm.plan("mm", np.zeros((1024, 784)), np.zeros((784, 256)), (1024, 256)).splits == 1
    assert gemm.plan("mm", np.zeros((64, 16)), np.zeros((16, 16)), (64, 16)).splits == 1  # K too short


def test_an_empty_product_launches_nothing():
    assert gemm.plan("mm", np.zeros((0, 4), np.float32), np.zeros((4, 3), np.float32), (0, 3)).grid == 0


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="matmul kernel: dtype bool"):
        gemm.plan("mm", np.zeros((2, 2), bool), np.zeros((2, 2), bool), (2, 2))


@pytest.mark.skipif(not cuda_compilers(), reason="neither nvcc nor NVRTC is installed: CUDA source not compiled")
def test_matmul_kernel_source_builds_with_nvcc_and_nvrtc():
    from compiler.testing import cuda_compile_check
    a, b = np.zeros((64, 784), np.float32), np.zeros((256, 784), np.float32).T  # split K, transposed weight
    sources = [gemm.plan("mm", a, b, (64, 256)).source,
               gemm.plan("mm2", np.zeros((3, 9, 7)), np.zeros((7, 5)), (3, 9, 5)).source]  # batched, float64
    assert cuda_compile_check(sources) is None
