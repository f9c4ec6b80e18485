"""The SIMT emulator runs generated CUDA on the CPU with CUDA's semantics: warp shuffles, block barriers,
shared memory per block; it reports what would hang on a GPU and exposes order-dependent (racy) kernels.
Then: every kernel the cuda backend generates for real models runs under it and matches the C backend."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

import compiler
import eager
import eager.nn.functional as F
from compiler.codegen.cuda import BLOCK, header
from compiler.runtime.cuda import build_cuda
from compiler.runtime.simt import SimtError, SimtModule
from compiler.testing import cuda_compilers

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the emulator cannot build")

ROW_SUM = header() + r"""
extern "C" __global__ void row_sum(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ n) {
  for (long long o = blockIdx.x; o < n[0]; o += gridDim.x) {
    float acc = 0;
    for (long long r = threadIdx.x; r < n[1]; r += blockDim.x) acc += x[o * n[1] + r];
    const float total = gd_block_reduce<float, false>(acc, 0.0f);
    if (threadIdx.x == 0) out[o] = total;
  }
}
extern "C" __global__ void row_max(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ n) {
  for (long long o = blockIdx.x; o < n[0]; o += gridDim.x) {
    float acc = -__int_as_float(0x7f800000);
    for (long long r = threadIdx.x; r < n[1]; r += blockDim.x) acc = x[o * n[1] + r] > acc ? x[o * n[1] + r] : acc;
    out[o] = gd_block_reduce<float, true>(acc, -__int_as_float(0x7f800000));
  }
}
"""

KERNELS = r"""
extern "C" __global__ void divergent_barrier(float* __restrict__ out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}
extern "C" __global__ void divergent_shuffle(float* __restrict__ out) {
  float v = threadIdx.x;
  if (threadIdx.x % 2 == 0) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}
extern "C" __global__ void rotate(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ sync) {
  __shared__ float tile[256];
  tile[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  if (sync[0]) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}
extern "C" __global__ void butterfly(const int* __restrict__ x, int* __restrict__ out) {
  int v = x[threadIdx.x];
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 5) * 1000 + __shfl_down_sync(0xffffffffu, v, 3);
}
"""


@pytest.fixture(scope="module")
def rows():
    return SimtModule(ROW_SUM)


@pytest.mark.parametrize("shape", [(5, 1000), (3, 7), (1, 256), (300, 33)])
def test_block_reductions_of_the_cuda_header_give_row_sums_and_maxima(rows, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    n = np.array(shape, np.int32)
    total, top = np.zeros(shape[0], np.float32), np.zeros(shape[0], np.float32)
    grid = (min(shape[0], 4),)  # fewer blocks than rows: the grid-stride loop over rows is exercised too
    rows.get_function("row_sum")(grid, (BLOCK,), (x, total, n))
    rows.get_function("row_max")(grid, (BLOCK,), (x, top, n))
    np.testing.assert_allclose(total, x.astype(np.float64).sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(top, x.max(axis=1))


def test_a_block_that_is_not_whole_warps_cannot_shuffle_with_a_full_mask(rows):
    x, n, out = np.ones((2, 8), np.float32), np.array([2, 8], np.int32), np.zeros(2, np.float32)
    with pytest.raises(SimtError, match="full warp"):
        rows.get_function("row_sum")((2,), (48,), (x, out, n))


@pytest.fixture(scope="module")
def kernels():
    return SimtModule(KERNELS), SimtModule(KERNELS, reverse=True)


def test_a_barrier_in_divergent_code_is_reported_not_hung(kernels):
    with pytest.raises(SimtError, match="divergent code"):
        kernels[0].get_function("divergent_barrier")((1,), (64,), (np.zeros(64, np.float32),))


def test_a_shuffle_by_half_a_warp_is_reported(kernels):
    with pytest.raises(SimtError, match=r"warp 0: 16 of 32 lanes wait at a full-mask shuffle"):
        kernels[0].get_function("divergent_shuffle")((1,), (32,), (np.zeros(32, np.float32),))


def test_shuffles_read_the_source_lanes_value(kernels):
    x = np.arange(64, dtype=np.int32) * 7
    out = np.zeros(64, np.int32)
    kernels[0].get_function("butterfly")((1,), (64,), (x, out))
    lane = np.arange(64) % 32
    warp = np.arange(64) // 32 * 32
    down = np.where(lane + 3 < 32, x[warp + np.minimum(lane + 3, 31)], x)  # past the warp's end: own value
    np.testing.assert_array_equal(out, x[warp + (lane ^ 5)] * 1000 + down)


def test_a_missing_barrier_shows_as_results_that_depend_on_thread_order(kernels):
    forward, reverse = kernels
    x = np.arange(2 * BLOCK, dtype=np.float32)
    want = np.roll(x.reshape(2, BLOCK), -1, axis=1).ravel()
    results = {}
    for sync in (0, 1):
        for name, module in (("forward", forward), ("reverse", reverse)):
            out = np.zeros_like(x)
            module.get_function("rotate")((2,), (BLOCK,), (x, out, np.array([sync], np.int32)))
            results[sync, name] = out
    np.testing.assert_array_equal(results[1, "forward"], want)
    np.testing.assert_array_equal(results[1, "reverse"], want)
    assert not np.array_equal(results[0, "forward"], results[0, "reverse"])


def test_a_kernel_marked_barrier_free_that_synchronises_is_an_error():
    module = SimtModule(KERNELS, direct={"divergent_barrier"})
    with pytest.raises(SimtError, match="without fibers reached __syncthreads"):
        module.get_function("divergent_barrier")((1,), (32,), (np.zeros(32, np.float32),))


def test_unknown_kernels_and_2d_launches_are_clear_errors(kernels):
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        kernels[0].get_function("nope")
    with pytest.raises(ValueError, match="1-D launches"):
        kernels[0].get_function("butterfly")((1, 1), (32,), (np.zeros(32, np.int32), np.zeros(32, np.int32)))


# ---------------------------------------------------------------- the cuda backend's own kernels

def test_simt_backend_runs_vectorised_and_scalar_paths_of_one_kernel():
    f = compiler.compile(lambda t: F.gelu(t, approximate="tanh") * 3, eager.randn(8, 64), backend="simt")
    assert f.backend == "simt" and len(f.kernels) == 1 and "float4" in f.kernels[0].source
    x = eager.randn(8, 64)
    want = compiler.compile(lambda t: F.gelu(t, approximate="tanh") * 3, x)(x).numpy()
    np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-6, atol=1e-6)
    # a misaligned input (a view one float in) takes the scalar loop the kernel checks for at run time
    (program,) = [lw.program for lw in f.lowerings]
    ex = build_cuda(program, simulate=True)
    base = np.random.default_rng(1).standard_normal(8 * 64 + 1).astype(np.float32)
    shifted = base[1:].reshape(8, 64)
    assert shifted.ctypes.data % 16 != 0
    aligned = shifted.copy()
    np.testing.assert_array_equal(ex.run([shifted])[0], ex.run([aligned])[0])


def test_simt_is_only_for_the_cpu_device():
    with pytest.raises(ValueError, match="simt"):
        compiler.compile(lambda t: t * 2, eager.ones(2), device="cuda", backend="simt")


@pytest.mark.parametrize("width", [1000, 4096, 8192, 9000])
@pytest.mark.parametrize("workload", ["layer_norm", "softmax"])
def test_row_kernels_read_a_row_once_from_registers_when_it_fits(workload, width):
    """Up to CACHE_SLOTS elements per thread (8192 with 256 threads), the input that the row's loops all read
    is loaded once into registers; wider rows stream it in each loop. Both agree with the C backend."""
    from compiler.codegen.cuda import CACHE_SLOTS
    fn = {"layer_norm": lambda t: F.layer_norm(t, (width,)), "softmax": lambda t: F.softmax(t, dim=-1)}[workload]
    x = eager.randn(3, width)
    f = compiler.compile(fn, x, backend="simt")
    (kernel,) = f.kernels
    cached = width <= CACHE_SLOTS * BLOCK
    assert ("#pragma unroll" in kernel.source) == cached
    assert kernel.source.count("p0[") == (1 if cached else 1 + len(kernel.ir.reductions))
    assert ("if (r < " in kernel.source) == (cached and width % BLOCK != 0)
    np.testing.assert_allclose(f(x).numpy(), compiler.compile(fn, x)(x).numpy(), rtol=2e-5, atol=2e-6)


def test_an_optimizer_update_with_a_float64_step_count_still_moves_float4_vectors():
    """Adam's update reads and writes its float64 step count (a scalar) beside float32 tensors: the kernel keeps
    the float4 path, reads the scalar once and writes it from one thread; three steps match eager."""
    import eager.nn as nn
    import eager.optim as optim

    def make():
        eager.manual_seed(0)
        model = nn.Linear(16, 8)
        opt = optim.Adam(model.parameters(), lr=1e-2)

        def step(x):
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            opt.step()
            return loss
        return model, opt, step
    model_s, opt_s, step_s = make()
    model_e, opt_e, step_e = make()
    xs = [eager.randn(4, 16) for _ in range(3)]
    f = compiler.compile(step_s, xs[0], backend="simt")
    for x in xs:
        np.testing.assert_allclose(float(f(x)), float(step_e(x)), rtol=1e-5)
    weight_update = [k for k in f.kernels if not k.ir.is_row_kernel and math.prod(k.ir.loops[0][:1]) == 128]
    assert len(weight_update) == 1 and "float4" in weight_update[0].source
    assert "if (t == 0) p" in weight_update[0].source.split("} else {")[0]
    for ps, pe in zip(model_s.parameters(), model_e.parameters()):
        np.testing.assert_allclose(ps.detach().numpy(), pe.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert float(opt_s.state[ps]["step"]) == float(opt_e.state[pe]["step"]) == 3


COLUMN_SOURCES: list[str] = []


@pytest.mark.parametrize("shape", [(6, 1000), (300, 70), (5, 33), (1000, 3), (4, 50, 40)])
@pytest.mark.parametrize("op", ["sum", "var", "softmax", "max"])
def test_reductions_over_leading_dims_run_as_coalesced_column_kernels(shape, op):
    """Rows that run across memory: 32 of them per block, one per lane, the warps splitting the reduced dims
    (partial tiles, a tile of 3 rows, two reduced dims). Equal to the C backend; the source builds with nvcc
    (below)."""
    dims = tuple(range(len(shape) - 1))
    fn = {"sum": lambda t: t.sum(dim=dims), "var": lambda t: t.var(dim=0),
          "softmax": lambda t: F.softmax(t, dim=0), "max": lambda t: t.max(dim=0)}[op]
    x = eager.randn(*shape) * 2 + 3  # a mean far from 0: a second pass that misses it is visibly wrong
    f = compiler.compile(fn, x, backend="simt")
    columns = [k for k in f.kernels if k.ir.columnar]
    assert columns and all("gd_col" in k.source for k in columns)
    got, want = f(x), compiler.compile(fn, x)(x)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    COLUMN_SOURCES.extend(k.source.replace('void k', f'void c{len(COLUMN_SOURCES)}_k') for k in f.kernels)


@pytest.mark.skipif(not cuda_compilers(), reason="neither nvcc nor NVRTC is installed: CUDA source not compiled")
def test_column_kernels_build_with_nvcc_and_nvrtc():
    from compiler.testing import cuda_compile_check
    if not COLUMN_SOURCES:  # run alone: generate the sources here
        test_reductions_over_leading_dims_run_as_coalesced_column_kernels((300, 70), "softmax")
    assert cuda_compile_check([header()] + COLUMN_SOURCES) is None


@pytest.mark.parametrize("shape", [(37, 10), (9, 1000), (100, 33), (5, 1024), (3, 1025)])
def test_short_rows_take_one_warp_each_and_long_rows_a_block(shape):
    """Up to WARP_ROW elements a row is one warp's (8 rows per block, shuffles only, no barrier), beyond it a
    block's; both give the C backend's softmax and cross-entropy, including a last block with idle warps."""
    from compiler.codegen.cuda import WARP_ROW, launch_config
    x, t = eager.randn(*shape), eager.tensor(np.arange(shape[0]) % shape[1])
    fn = lambda a, b: (F.softmax(a, dim=-1), F.cross_entropy(a, b))  # noqa: E731
    f = compiler.compile(fn, x, t, backend="simt")
    by_warp = shape[1] <= WARP_ROW
    softmax = next(k for k in f.kernels if k.ir.is_row_kernel and k.ir.inner == [shape[1]] and "exp" in k.ops)
    assert ("__syncthreads" in softmax.source or "gd_block_reduce" in softmax.source) != by_warp
    assert launch_config(softmax.ir)[0] == (-(-shape[0] // 8) if by_warp else shape[0])
    for got, want in zip(f(x, t), compiler.compile(fn, x, t)(x, t)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=2e-6)


def test_shared_memory_a_kernel_never_wrote_reads_as_nan_not_zero():
    """On a GPU unwritten shared memory holds garbage; the emulator fills it with NaN bytes at every block, so a
    reduction that forgets a partial shows up (a C++ static would start at zero: a sum's identity)."""
    src = r"""
    extern "C" __global__ void forgets_a_partial(const float* __restrict__ x, float* __restrict__ out) {
      __shared__ float part[8];
      const int warp = threadIdx.x >> 5;
      if ((threadIdx.x & 31) == 0 && warp < 7) part[warp] = x[blockIdx.x];
      __syncthreads();
      if (threadIdx.x == 0) { float s = 0; for (int w = 0; w < 8; w++) s += part[w]; out[blockIdx.x] = s; }
    }"""
    out = np.zeros(2, np.float32)
    SimtModule(src).get_function("forgets_a_partial")((2,), (256,), (np.ones(2, np.float32), out))
    assert np.isnan(out).all()


def test_an_empty_row_builds_without_a_zero_sized_register_array():
    f = compiler.compile(lambda t: F.softmax(t, dim=-1), eager.zeros(3, 0), backend="simt")
    assert f(eager.zeros(3, 0)).shape == (3, 0)
    assert all("[0];" not in k.source for k in f.kernels)
    if cuda_compilers():  # nvcc and NVRTC reject zero-sized arrays; g++ would not have noticed
        from compiler.testing import cuda_compile_check
        assert cuda_compile_check([header()] + [k.source for k in f.kernels]) is None


SPLIT_SOURCES: list[str] = []


@pytest.mark.parametrize("shape", [(1, 100000), (3, 70000), (2, 3, 40000)])
@pytest.mark.parametrize("op", ["sum", "norm", "max", "softmax", "var", "layer_norm"])
def test_a_few_long_rows_are_reduced_by_many_blocks(shape, op):
    """Fewer rows than SPLIT_ROWS, each long: every reduction is first reduced in chunks by a block each, one
    launch per dependency level (``_partials0``: a sum, a max; ``_partials1``: softmax's sum of exponentials or
    a variance's second pass, after combining the level below), then the row kernel combines the partials. Same
    results as the C backend, for one row (a whole-tensor sum) or several."""
    from compiler.codegen.cuda import split_chunks
    rows = shape[0]
    fn = {"sum": lambda t: t.sum(), "norm": lambda t: t.norm(), "max": lambda t: t.max(),
          "softmax": lambda t: F.softmax(t.reshape(rows, -1), dim=-1),
          "var": lambda t: t.reshape(rows, -1).var(dim=-1),
          "layer_norm": lambda t: F.layer_norm(t.reshape(rows, -1), (t.numel() // rows,))}[op]
    x = eager.randn(*shape) * 2 + 3  # a mean far from 0: a second pass that misses it is visibly wrong
    f = compiler.compile(fn, x, backend="simt")
    split = [k for k in f.kernels if split_chunks(k.ir)]
    assert split and all("_partials0(" in k.source for k in split)
    if op in ("softmax", "var", "layer_norm") and rows > 1:  # one row: fusion keeps the max apart
        assert any("_partials1(" in k.source for k in split)
    np.testing.assert_allclose(f(x).numpy(), compiler.compile(fn, x)(x).numpy(), rtol=1e-5, atol=2e-5)
    SPLIT_SOURCES.extend(k.source.replace("void k", f"void s{len(SPLIT_SOURCES)}_k") for k in split)


@pytest.mark.skipif(not cuda_compilers(), reason="neither nvcc nor NVRTC is installed: CUDA source not compiled")
def test_split_reductions_build_with_nvcc_and_nvrtc():
    from compiler.testing import cuda_compile_check
    if not SPLIT_SOURCES:  # run alone: generate the sources here
        test_a_few_long_rows_are_reduced_by_many_blocks((3, 70000), "layer_norm")
    assert cuda_compile_check([header()] + SPLIT_SOURCES) is None


def test_no_rows_launch_no_partials_and_an_empty_launch_is_an_error():
    """A reduction over zero rows of a long dim has nothing to split (found in review: its partials kernel was
    launched with a grid of 0, which CUDA rejects); the emulator refuses empty launches as CUDA does."""
    f = compiler.compile(lambda t: t.sum(dim=-1), eager.zeros(0, 40000), backend="simt")
    assert f(eager.zeros(0, 40000)).shape == (0,)
    assert all("_partials" not in k.source for k in f.kernels)
    with pytest.raises(SimtError, match="empty launch"):
        SimtModule(KERNELS).get_function("butterfly")((0,), (32,), (np.zeros(32, np.int32), np.zeros(32, np.int32)))
