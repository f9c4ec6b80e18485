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
    """One product's launch: ``grid`` blocks of ``BLOCK`` threads (an empty product launches nothing)."""

    name: str
    source: str
    grid: int


def gemm_source(name: str, dtype: str, batch: tuple[tuple[int, int, int], ...], m: int, n: int, k: int,
                a_strides: tuple[int, int], b_strides: tuple[int, int]) -> str:
    """CUDA source of ``C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]``, C contiguous. ``batch``: per output
    batch dim, ``(size, A's stride, B's stride)`` in elements (0 where that operand is broadcast)."""
    if dtype not in _TYPES:
        raise TypeError(f"matmul kernel: dtype {dtype} is not supported (float32, float64, int64, int32)")
    t, acc_t, fma = _TYPES[dtype]
    tiles_m, tiles_n = -(-m // TILE), -(-n // TILE)
    offsets = []
    for size, sa, sb in reversed(batch):
        offsets.append(f"    {{ const long long i = bt % {size}; bt /= {size}; a += i * {sa}LL; b += i * {sb}LL; }}")
    step = fma.format(a=f"({acc_t})As[ty][kk]", b=f"({acc_t})Bs[kk][tx]", acc="acc")
    return f"""
extern "C" __global__ void {name}(const {t}* __restrict__ A, const {t}* __restrict__ B, {t}* __restrict__ C) {{
  __shared__ {t} As[{TILE}][{TILE + 1}];
  __shared__ {t} Bs[{TILE}][{TILE + 1}];
  const int ty = threadIdx.x / {TILE}, tx = threadIdx.x % {TILE};
  long long blk = blockIdx.x;
  const long long tn = blk % {tiles_n}; blk /= {tiles_n};
  const long long tm = blk % {tiles_m};
  long long bt = blk / {tiles_m};
  const long long c_offset = bt * {m * n}LL;
  const {t}* a = A;
  const {t}* b = B;
{chr(10).join(offsets)}
  const long long row = tm * {TILE} + ty, col = tn * {TILE} + tx;
  {acc_t} acc = 0;
  for (long long k0 = 0; k0 < {k}; k0 += {TILE}) {{
    const long long ka = k0 + tx, kb = k0 + ty;
    As[ty][tx] = (row < {m} && ka < {k}) ? a[row * {a_strides[0]}LL + ka * {a_strides[1]}LL] : ({t})0;
    Bs[ty][tx] = (kb < {k} && col < {n}) ? b[kb * {b_strides[0]}LL + col * {b_strides[1]}LL] : ({t})0;
    __syncthreads();
    for (int kk = 0; kk < {TILE}; ++kk) acc = {step};
    __syncthreads();
  }}
  if (row < {m} && col < {n}) C[c_offset + row * {n} + col] = ({t})acc;
}}
"""


def plan(name: str, a, b, out_shape: tuple[int, ...]) -> Gemm:
    """The kernel for ``a @ b`` with these arrays' layouts (NumPy or CuPy), written to a C-contiguous output of
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
    grid = math.prod(batch_shape) * -(-m // TILE) * -(-n // TILE)
    source = gemm_source(name, str(np.dtype(a.dtype)), tuple(batch), m, n, k, (sa[-2], sa[-1]), (sb[-2], sb[-1]))
    return Gemm(name, source, grid)


def _batch_stride(shape, strides, d: int, out_batch_dims: int) -> int:
    """An operand's element stride along output batch dim ``d``: 0 where it is missing or broadcast (size 1)."""
    j = d - (out_batch_dims - (len(shape) - 2))
    return 0 if j < 0 or shape[j] == 1 else strides[j]
