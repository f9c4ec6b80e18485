"""A matrix product as a generated CUDA kernel, for steps that cuBLAS cannot take part in.

CuPy refuses to call cuBLAS while a stream captures a CUDA graph (``NotImplementedError: calling cuBLAS API
during stream capture is currently unsupported``), so a step replayed as a graph (``cuda_graph=True``) runs its
matmuls with this kernel instead. Everything about one product is static and baked into the source: the
shapes, the element strides of both operands (a transposed weight is read in place), and the broadcast batch
dims; only the three pointers are arguments.

The kernel is a classic shared-memory tiling: a block of 16x16 threads computes a 16x16 tile of C, walking K
in 16-wide slabs of A and B staged in shared memory; products accumulate with an explicit fused multiply-add
(the module builds with ``--fmad=false``, which would otherwise split every one of them).

    >>> src = gemm_source("mm", "float32", (), 2, 3, 4, (4, 1), (3, 1))
    >>> "__global__ void mm(" in src and "fmaf(" in src
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TILE = 16
BLOCK = TILE * TILE
_TYPES = {"float32": ("float", "float", "fmaf({a}, {b}, {acc})"),
          "float64": ("double", "double", "fma({a}, {b}, {acc})"),
          "int64": ("long long", "long long", "{acc} + {a} * {b}"),
          "int32": ("int", "long long", "{acc} + (long long){a} * {b}")}


@dataclass(frozen=True)
class Gemm:
    """One product's launches. ``grid`` blocks of ``BLOCK`` threads run ``name``; with ``splits`` > 1 they write
    ``splits`` partial products over slices of K into a scratch buffer of ``scratch`` elements, and
    ``<name>_sum`` (``sum_grid`` blocks) adds them into C in a fixed order. An empty product launches nothing."""

    name: str
    source: str
    grid: int
    splits: int = 1
    scratch: int = 0
    sum_grid: int = 0


# few output tiles over a long K (a first layer's 64x256 output over 784 inputs: 64 blocks for 132 SMs) would
# leave most of the GPU idle: K is then split so that about SPLIT_BLOCKS blocks run, each over at least
# SPLIT_MIN_K of it
SPLIT_BLOCKS, SPLIT_MIN_K = 512, 4 * TILE


def split_count(tiles: int, k: int) -> int:
    """How many slices of K a product of ``tiles`` output tiles is split into (1: not split)."""
    if tiles >= SPLIT_BLOCKS // 2 or k < 2 * SPLIT_MIN_K:
        return 1
    splits = max(1, min(-(-SPLIT_BLOCKS // tiles), k // SPLIT_MIN_K))
    slice_k = -(-k // (splits * TILE)) * TILE  # whole tiles: the last slices could be left empty
    return -(-k // slice_k)


def gemm_source(name: str, dtype: str, batch: tuple[tuple[int, int, int], ...], m: int, n: int, k: int,
                a_strides: tuple[int, int], b_strides: tuple[int, int], splits: int = 1) -> str:
    """CUDA source of ``C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]``, C contiguous. ``batch``: per output
    batch dim, ``(size, A's stride, B's stride)`` in elements (0 where that operand is broadcast). With
    ``splits`` > 1 the kernel writes partial products ``P[split, batch, m, n]`` and ``<name>_sum`` adds them."""
    if dtype not in _TYPES:
        raise TypeError(f"matmul kernel: dtype {dtype} is not supported (float32, float64, int64, int32)")
    t, acc_t, fma = _TYPES[dtype]
    tiles_m, tiles_n = -(-m // TILE), -(-n // TILE)
    size = math.prod(b for b, _, _ in batch) * m * n
    slice_k = -(-k // (splits * TILE)) * TILE  # K per split, whole tiles
    offsets = []
    for dim, sa, sb in reversed(batch):
        offsets.append(f"    {{ const long long i = bt % {dim}; bt /= {dim}; a += i * {sa}LL; b += i * {sb}LL; }}")
    step = fma.format(a=f"({acc_t})As[ty][kk]", b=f"({acc_t})Bs[kk][tx]", acc="acc")
    out, split_index, k_range = "C", "const long long split = 0;", f"const long long k_begin = 0, k_end = {k};"
    if splits > 1:
        out = "P"
        split_index = f"const long long split = blk % {splits}; blk /= {splits};"
        k_range = (f"const long long k_begin = split * {slice_k}LL;\n"
                   f"  const long long k_end = k_begin + {slice_k}LL < {k}LL ? k_begin + {slice_k}LL : {k}LL;")
    source = f"""
extern "C" __global__ void {name}(const {t}* __restrict__ A, const {t}* __restrict__ B, {t}* __restrict__ {out}) {{
  __shared__ {t} As[{TILE}][{TILE + 1}];
  __shared__ {t} Bs[{TILE}][{TILE + 1}];
  const int ty = threadIdx.x / {TILE}, tx = threadIdx.x % {TILE};
  long long blk = blockIdx.x;
  {split_index}
  const long long tn = blk % {tiles_n}; blk /= {tiles_n};
  const long long tm = blk % {tiles_m};
  long long bt = blk / {tiles_m};
  const long long c_offset = split * {size}LL + bt * {m * n}LL;
  const {t}* a = A;
  const {t}* b = B;
{chr(10).join(offsets)}
  const long long row = tm * {TILE} + ty, col = tn * {TILE} + tx;
  {k_range}
  {acc_t} acc = 0;
  for (long long k0 = k_begin; k0 < k_end; k0 += {TILE}) {{
    {_tile_load("As", "a", "tm", m, a_strides, t, rows_first=True)}
    {_tile_load("Bs", "b", "tn", n, b_strides, t, rows_first=False)}
    __syncthreads();
    for (int kk = 0; kk < {TILE}; ++kk) acc = {step};
    __syncthreads();
  }}
  if (row < {m} && col < {n}) {out}[c_offset + row * {n} + col] = ({t})acc;
}}
"""
    if splits > 1:
        source += f"""
extern "C" __global__ void {name}_sum(const {t}* __restrict__ P, {t}* __restrict__ C) {{
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < {size}LL;
       i += (long long)gridDim.x * blockDim.x) {{
    {acc_t} acc = 0;
    for (int s = 0; s < {splits}; ++s) acc += ({acc_t})P[s * {size}LL + i];
    C[i] = ({t})acc;
  }}
}}
"""
    return source


def _tile_load(tile: str, ptr: str, block: str, extent: int, strides: tuple[int, int], t: str,
               rows_first: bool) -> str:
    """One thread's load of a 16x16 operand tile into shared memory, with consecutive lanes (``tx``) on the
    operand's unit-stride dim so a warp's loads coalesce: A is ``[m, k]`` (``rows_first``), B is ``[k, n]``;
    a transposed operand (a weight read as ``W.T``) is loaded along its other dim and stored transposed."""
    outer, inner = strides
    across = inner != 1 and outer == 1  # the tile's second dim is strided, its first contiguous: swap lanes
    fast, slow = ("ty", "tx") if across else ("tx", "ty")
    if rows_first:  # A[m, k]: dim 0 from the block's rows, dim 1 from K
        i, j = f"{block} * {TILE} + {slow}", f"k0 + {fast}"
        ok = f"{i} < {extent} && {j} < k_end"
    else:  # B[k, n]: dim 0 from K, dim 1 from the block's columns
        i, j = f"k0 + {slow}", f"{block} * {TILE} + {fast}"
        ok = f"{i} < k_end && {j} < {extent}"
    return f"{tile}[{slow}][{fast}] = ({ok}) ? {ptr}[({i}) * {outer}LL + ({j}) * {inner}LL] : ({t})0;"


def plan(name: str, a, b, out_shape: tuple[int, ...]) -> Gemm:
    """The kernels for ``a @ b`` with these arrays' layouts (NumPy or CuPy), written to a C-contiguous output of
    ``out_shape`` (``matmul``'s broadcasting of batch dims; both operands at least 2-D)."""
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul kernel: operands must be at least 2-D (got {a.shape} and {b.shape}); the eager "
                         "op promotes vectors before it reaches here")
    m, k = a.shape[-2:]
    n = b.shape[-1]
    item = a.dtype.itemsize
    sa, sb = [s // item for s in a.strides], [s // item for s in b.strides]
    batch_shape = out_shape[:-2]
    batch = []
    for d, size in enumerate(batch_shape):
        batch.append((size, _batch_stride(a.shape, sa, d, len(batch_shape)),
                      _batch_stride(b.shape, sb, d, len(batch_shape))))
    tiles = math.prod(batch_shape) * -(-m // TILE) * -(-n // TILE)
    splits = split_count(tiles, k) if tiles else 1
    source = gemm_source(name, str(np.dtype(a.dtype)), tuple(batch), m, n, k, (sa[-2], sa[-1]), (sb[-2], sb[-1]),
                         splits)
    size = math.prod(out_shape)
    if splits == 1:
        return Gemm(name, source, tiles)
    return Gemm(name, source, tiles * splits, splits, splits * size, min(-(-size // BLOCK), 1024))


def _batch_stride(shape, strides, d: int, out_batch_dims: int) -> int:
    """An operand's element stride along output batch dim ``d``: 0 where it is missing or broadcast (size 1)."""
    j = d - (out_batch_dims - (len(shape) - 2))
    return 0 if j < 0 or shape[j] == 1 else strides[j]
