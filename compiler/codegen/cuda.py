"""CUDA backend: CUDA C source for one kernel (``cupy.RawModule``/NVRTC, or ``nvcc`` in tests).

Shares the expression renderer and the statement emitter with the C backend; only the loop skeleton and a
few dialect entries differ:

- elementwise kernels: a grid-stride loop over the flat domain; when every access is contiguous or a scalar
  and the size is a multiple of 4 (float32), each thread moves ``float4`` vectors;
- row kernels: one block per row (grid-stride over rows), threads stride along the row, each reduction
  combined with warp shuffles and one shared-memory step; the row's scalars are then seen by every thread.
  Rows of at most ``WARP_ROW`` elements take one warp each instead (8 rows per block, shuffles only); a few
  very long rows are first reduced in chunks by many blocks (``split_chunks``), one launch per level of
  dependent reductions (softmax's max, then its sum of exponentials).
  When a row spans at most ``CACHE_SLOTS`` elements per thread, an input that several of the row's loops read
  (layer_norm's and softmax's x) is loaded once into registers, all loads issued together before the first
  reduction, and every loop is unrolled over the thread's elements: the row is read from memory once.
- column kernels (rows that run across memory: a sum over axis 0, bias gradients): a block takes 32
  neighbouring rows, one per lane, and its warps split the reduced dims, so a warp reads 128 contiguous bytes;
  the warps' partial results meet in shared memory.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.fusion import fuse
    >>> from compiler.kernel import lower
    >>> k = lower(fuse(dup_graph()).groups[0])
    >>> "__global__" in render(k, "k0", {n.id: i for i, n in enumerate(k.buffers + [s.node for s in k.stores])})
    True
"""

from __future__ import annotations

import math
from typing import NamedTuple

from compiler.codegen.dialect import CUDA, int_pow_function
from compiler.codegen.emit import Emitter, decompose
from compiler.kernel import Expr, KernelIR

BLOCK = 256
CACHE_SLOTS = 32  # register-cached row elements per thread, all cached inputs together (rows up to 8192)
WARPS = BLOCK // 32  # a column kernel's block: 32 rows (lanes) x WARPS slices of the reduced dims
WARP_ROW = 1024  # rows up to this long are reduced by one warp each (32 elements per lane at most)
# few long rows (a sum over a whole tensor) would leave most SMs idle with one block per row: the reductions
# are first computed in chunks of SPLIT_CHUNK elements by many blocks, one launch per dependency level
# (``<kernel>_partials<level>``), and the row kernel then combines at most SPLIT_MAX partials per row
SPLIT_ROWS, SPLIT_MIN, SPLIT_CHUNK, SPLIT_MAX = 64, 1 << 15, 1 << 12, 1024

HEADER = "\n" + int_pow_function("__device__ __forceinline__") + r"""#define GD_WARP_SUM(T) \
  __device__ __forceinline__ T gd_warp_sum(T v) { \
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o); return v; }
#define GD_WARP_MAX(T) \
  __device__ __forceinline__ T gd_warp_max(T v) { \
    for (int o = 16; o > 0; o >>= 1) { T w = __shfl_xor_sync(0xffffffffu, v, o); v = (w != w || w > v) ? w : v; } \
    return v; }
GD_WARP_SUM(float) GD_WARP_SUM(double) GD_WARP_SUM(long long) GD_WARP_SUM(int)
GD_WARP_MAX(float) GD_WARP_MAX(double) GD_WARP_MAX(long long) GD_WARP_MAX(int)

/* Reduce one value per thread across the block; every thread gets the result. */
template <typename T, bool IS_MAX>
__device__ __forceinline__ T gd_block_reduce(T v, T identity) {
  __shared__ unsigned long long gd_raw[32];
  T* sh = reinterpret_cast<T*>(gd_raw);
  v = IS_MAX ? gd_warp_max(v) : gd_warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = (lane < (int)((blockDim.x + 31) >> 5)) ? sh[lane] : identity;
    v = IS_MAX ? gd_warp_max(v) : gd_warp_sum(v);
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  return sh[0];
}
"""


def header() -> str:
    return HEADER


class _RowThreads(NamedTuple):
    """How a row kernel's threads cover a row of ``size`` elements: ``width`` threads (a warp when ``by_warp``),
    this one at ``tid``, each taking at most ``per_thread`` elements; ``chunks``: the row is split among that
    many blocks (0: not split); ``cached``: the row's shared loads sit in registers, its loops are unrolled."""

    size: int
    width: int
    tid: str
    per_thread: int
    by_warp: bool
    chunks: int
    cached: bool


def _outer_names(k: KernelIR) -> list[str]:
    return [f"i{j}" for j in range(k.n_outer)]


def _inner_names(k: KernelIR) -> list[str]:
    return [f"r{j}" for j in range(len(k.inner))]



class _CudaKernel:
    def __init__(self, k: KernelIR, name: str, arg_of: dict[int, int]):
        self.k, self.name, self.arg_of = k, name, arg_of
        self.em = Emitter(CUDA, self.load_text)
        self.lane = None
        self.cached: dict[tuple, str] = {}  # (buffer id, form) -> register array holding the thread's elements

    def params(self) -> str:
        written = {self.arg_of[s.node.id] for s in self.k.stores}
        seen, out = {}, []
        for n in self.k.buffers + [s.node for s in self.k.stores]:
            a = self.arg_of[n.id]
            if a not in seen:
                seen[a] = n
        for a in sorted(seen):
            const = "" if a in written else "const "
            out.append(f"{const}{CUDA.ctype(seen[a].dtype)}* __restrict__ p{a}")
        if split_chunks(self.k):
            out.append("unsigned long long* __restrict__ gd_part")
        return ", ".join(out)

    def index(self, form, names) -> str:
        terms = [f"{c}LL*{v}" if c != 1 else v for c, v in zip(form, names) if c]
        return " + ".join(terms) or "0"

    def load_text(self, e: Expr) -> str:
        cached = self.cached.get((e.buffer.id, e.form))
        if cached is not None:
            return f"{cached}[j]"
        if self.lane is not None and e.form and e.form[-1] == 1:
            return f"q{self.arg_of[e.buffer.id]}.{'xyzw'[self.lane]}"
        return f"p{self.arg_of[e.buffer.id]}[{self.index(e.form, self.names)}]"

    # ------------------------------------------------------------ elementwise
    def elementwise(self) -> list[str]:
        k = self.k
        total = math.prod(s for s, _ in k.loops)
        grid = "for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < {n}LL; " \
               "t += (long long)gridDim.x * blockDim.x) {{"
        scalar = self.scalar_loop(grid, total)
        if not vectorizable(k):
            return scalar
        # float4 loads need 16-byte aligned pointers, which a view (x[1:]) or a host step's result may not have:
        # the kernel checks at run time and falls back to the scalar loop (a misaligned vector load would be a
        # sticky cudaErrorMisalignedAddress)
        self.em = Emitter(CUDA, self.load_text)
        vector = self.vector_loop(grid, total)
        vectors = {e.buffer.id for e in k.order if e.op == "load" and e.form == (1,)} | \
            {s.node.id for s in k.stores if s.form == (1,)}
        pointers = " | ".join(f"(unsigned long long)p{a}" for a in sorted({self.arg_of[i] for i in vectors}))
        return [f"if ((({pointers}) & 15ULL) == 0) {{"] + ["  " + s for s in vector] + ["} else {"] + \
               ["  " + s for s in scalar] + ["}"]

    def scalar_loop(self, grid: str, total: int) -> list[str]:
        k, em = self.k, self.em
        loop_idx = [f"i{j}" for j in range(len(k.loops))]
        self.names = loop_idx
        em.new_loop()
        stores = [("if (t == 0) " if not any(s.form) else "") +
                  f"p{self.arg_of[s.node.id]}[{self.index(s.form, loop_idx)}] = {em.ref(s.expr)};"
                  for s in k.stores]
        # every loop dim is inside the grid-stride loop here, so "per row" values are per thread too
        body = decompose("t", [s for s, _ in k.loops], loop_idx, "long long") + em.outer + em.inner + stores
        return em.hoisted + [grid.format(n=total)] + ["  " + s for s in body] + ["}"]

    def vector_loop(self, grid: str, total: int) -> list[str]:
        k, em = self.k, self.em
        self.names = ["t"]
        pre = []
        for b in k.buffers:
            forms = {e.form for e in k.order if e.op == "load" and e.buffer.id == b.id}
            if (1,) in forms:
                a = self.arg_of[b.id]
                pre.append(f"const float4 q{a} = reinterpret_cast<const float4*>(p{a})[t];")
        body = []
        vector_stores = [s for s in k.stores if any(s.form)]
        lanes = {s.node.id: [] for s in vector_stores}
        for lane in range(4):
            self.lane = lane
            em.new_loop()
            vals = [(s, em.ref(s.expr)) for s in vector_stores]
            body += em.inner
            for s, v in vals:
                lanes[s.node.id].append(v)
        self.lane = None
        for s in vector_stores:
            a = self.arg_of[s.node.id]
            body.append(f"reinterpret_cast<float4*>(p{a})[t] = make_float4({', '.join(lanes[s.node.id])});")
        for s in k.stores:
            if not any(s.form):  # a value of the whole kernel (computed from scalars): written once
                body.append(f"if (t == 0) p{self.arg_of[s.node.id]}[0] = {em.ref(s.expr)};")
        return em.hoisted + em.outer + [grid.format(n=total // 4)] + ["  " + s for s in pre + body] + ["}"]

    # ------------------------------------------------------------ row kernels
    def row(self) -> list[str]:
        k = self.k
        self.names = _outer_names(k) + _inner_names(k)
        size = math.prod(k.inner)
        by_warp = warp_per_row(k)
        width, tid = (32, "(threadIdx.x & 31)") if by_warp else (BLOCK, "threadIdx.x")
        per_thread = -(-size // width)
        keys = self.cache_keys(per_thread)
        chunks = split_chunks(k)
        assert not (chunks and keys), "a split row is longer than the register cache"
        row = _RowThreads(size, width, tid, per_thread, by_warp, chunks, bool(keys))
        # every phase appends to the emitter's per-row list itself: the values its expressions compute once per
        # row land there too, each just before the first statement that reads it
        lines = self.em.outer
        if keys:
            self.row_preload(row, keys, lines)
        self.row_reductions(row, lines)
        self.row_stores(row, lines)
        return self.em.hoisted + self.rows_loop(row, lines)

    def row_loop(self, row: _RowThreads, body: list[str]) -> list[str]:
        """``body`` for each of this thread's elements of the row, ``r`` being the element's index."""
        inside = decompose("r", self.k.inner, _inner_names(self.k), "long long") + body
        if row.chunks:
            return self.chunk_row_loop(row, inside)
        if row.cached:
            return self.unrolled_row_loop(row, inside)
        return self.strided_row_loop(row, inside)

    def strided_row_loop(self, row: _RowThreads, inside: list[str]) -> list[str]:
        return [f"for (long long r = {row.tid}; r < {row.size}LL; r += {row.width}) {{"] + \
            ["  " + s for s in inside] + ["}"]

    def chunk_row_loop(self, row: _RowThreads, inside: list[str]) -> list[str]:
        """A split row: this block's chunk only."""
        return [_chunk_loop(self.k, row.tid, row.width)] + ["  " + s for s in inside] + ["}"]

    def unrolled_row_loop(self, row: _RowThreads, inside: list[str]) -> list[str]:
        """Unrolled over the thread's elements, so the cache arrays are indexed by constants (registers)."""
        inside = ["  " + s for s in inside]
        if row.size % row.width:
            inside = [f"  if (r < {row.size}LL) {{"] + ["  " + s for s in inside] + ["  }"]
        return ["#pragma unroll", f"for (int j = 0; j < {row.per_thread}; j++) {{",
                f"  const long long r = {row.tid} + (long long)j * {row.width};"] + inside + ["}"]

    def row_preload(self, row: _RowThreads, keys: dict[tuple, Expr], lines: list[str]) -> None:
        """A register array per cached load, all filled by one loop: the row's loads are issued together."""
        preload = []
        for key, e in keys.items():
            name = self.em.fresh("c")
            lines.append(f"{CUDA.ctype(e.dtype)} {name}[{row.per_thread}];")
            preload.append(f"{name}[j] = {self.load_text(e)};")
            self.cached[key] = name
        lines += self.row_loop(row, preload)

    def row_reductions(self, row: _RowThreads, lines: list[str]) -> None:
        """Each reduction: this thread's share (its elements, or its row's partials when split), then combined
        across the warp or the block, so every thread sees the row's value."""
        em = self.em
        slots = {id(e): i for i, e in enumerate(split_reductions(self.k))}
        for e in self.k.reductions:
            ctype = CUDA.ctype(e.dtype)
            acc = em.fresh("acc")
            if row.chunks:  # combine the partials the ``<kernel>_partials<level>`` kernels left for this row
                lines += self.combine_partials(e, slots[id(e)], acc, row.tid, row.width)
            else:
                lines += self.accumulate(row, e, acc)
            red = em.fresh("red")
            combined = f"gd_warp_{e.op}({acc})" if row.by_warp else _block_reduce(e, acc)
            lines.append(f"const {ctype} {red} = ({ctype}){combined};")
            em.bind(e, red)

    def accumulate(self, row: _RowThreads, e: Expr, acc: str) -> list[str]:
        """A new ``acc`` holding reduction ``e`` over this thread's elements of the row."""
        em = self.em
        acc_t, identity, combine = _accumulator(e, CUDA.ctype(e.dtype))
        em.new_loop()
        v = em.ref(e.args[0])
        return [f"{acc_t} {acc} = ({acc_t}){identity};"] + self.row_loop(row, em.inner + [combine.format(a=acc, b=v)])

    def row_stores(self, row: _RowThreads, lines: list[str]) -> None:
        """Values stored per element, in one more row loop; values stored per row (or once), by one thread."""
        k, em = self.k, self.em
        inner_stores = [s for s in k.stores if any(s.form[k.n_outer:])]
        if inner_stores:
            em.new_loop()
            body = [f"p{self.arg_of[s.node.id]}[{self.index(s.form, self.names)}] = {em.ref(s.expr)};"
                    for s in inner_stores]
            lines += self.row_loop(row, em.inner + body)
        for s in [s for s in k.stores if s not in inner_stores]:
            v = em.ref(s.expr)
            once = (" && o == 0" if not any(s.form) else "") + (" && c == 0" if row.chunks else "")
            target = f"p{self.arg_of[s.node.id]}[{self.index(s.form, self.names)}]"
            lines.append(f"if ({row.tid} == 0{once}) {target} = {v};")

    def rows_loop(self, row: _RowThreads, lines: list[str]) -> list[str]:
        """``lines`` for each of this block's rows: a block per (row, chunk) when split (each combines its row's
        partials and writes its chunk of the row), ``WARPS`` rows per block by warp, else a block per row."""
        k = self.k
        n_outer = math.prod(k.outer)
        head = decompose("o", k.outer, _outer_names(k), "long long")
        if row.chunks:
            rows = f"for (long long b = blockIdx.x; b < {n_outer * row.chunks}LL; b += gridDim.x) {{"
            head = _chunk_of_block(k) + head
        elif row.by_warp:
            rows = (f"for (long long o = blockIdx.x * {WARPS}LL + (threadIdx.x >> 5); o < {n_outer}LL; "
                    f"o += gridDim.x * {WARPS}LL) {{")
        else:
            rows = f"for (long long o = blockIdx.x; o < {n_outer}LL; o += gridDim.x) {{"
        return [rows] + ["  " + s for s in head + lines] + ["}"]

    # ------------------------------------------------------------ column kernels
    def columns(self) -> list[str]:
        k, em = self.k, self.em
        self.names = _outer_names(k) + _inner_names(k)
        n_outer, n_inner = math.prod(k.outer), math.prod(k.inner)
        lines = em.outer

        def loop(body):
            head = decompose("r", k.inner, _inner_names(k), "long long")
            return [f"for (long long r = warp; r < {n_inner}LL; r += {WARPS}) {{"] + \
                   ["  " + s for s in head + body] + ["}"]

        for e in k.reductions:
            em.new_loop()
            v = em.ref(e.args[0])
            ctype, acc, red = CUDA.ctype(e.dtype), em.fresh("acc"), em.fresh("red")
            acc_t, ident, combine = _accumulator(e, ctype)
            lines += [f"{acc_t} {acc} = ({acc_t}){ident};"] + loop(em.inner + [combine.format(a=acc, b=v)])
            # each warp's partial for each lane's row, summed by every thread in one fixed order
            lines += ["__syncthreads();", f"reinterpret_cast<{acc_t}*>(gd_col)[threadIdx.x] = {acc};",
                      "__syncthreads();", f"{acc_t} {red} = ({acc_t}){ident};",
                      f"for (int w = 0; w < {WARPS}; w++) {{",
                      f"  const {acc_t} part = reinterpret_cast<const {acc_t}*>(gd_col)[w * 32 + lane];",
                      "  " + combine.format(a=red, b="part"), "}"]
            em.bind(e, f"(({ctype}){red})")
        inner_stores = [s for s in k.stores if any(s.form[k.n_outer:])]
        if inner_stores:
            em.new_loop()
            body = [f"if (valid) p{self.arg_of[s.node.id]}[{self.index(s.form, self.names)}] = {em.ref(s.expr)};"
                    for s in inner_stores]
            lines += loop(em.inner + body)
        for s in k.stores:
            if s not in inner_stores:
                guard = "valid && warp == 0" if any(s.form) else "ob == 0 && threadIdx.x == 0"
                lines.append(f"if ({guard}) p{self.arg_of[s.node.id]}[{self.index(s.form, self.names)}] = "
                             f"{em.ref(s.expr)};")
        # a lane past the last row works on the last row (no out-of-bounds reads) and stores nothing
        head = [f"const bool valid = ob + lane < {n_outer}LL;",
                f"const long long o = valid ? ob + lane : {n_outer - 1}LL;"] + \
            decompose("o", k.outer, _outer_names(k), "long long")
        return [f"__shared__ unsigned long long gd_col[{BLOCK}];",
                "const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;"] + em.hoisted + \
            [f"for (long long ob = blockIdx.x * 32LL; ob < {n_outer}LL; ob += gridDim.x * 32LL) {{"] + \
            ["  " + s for s in head + lines] + ["}"]

    def cache_keys(self, per_thread: int) -> dict[tuple, Expr]:
        """Row-varying loads that more than one of the row's loops reads (each reduction is a loop, the stores
        another), while their register arrays fit in ``CACHE_SLOTS`` per thread. Blocks must be ``BLOCK``
        threads (``launch_config``)."""
        k = self.k
        if per_thread == 0:  # an empty row: nothing to keep (and a zero-sized array is no CUDA)
            return {}
        phases = [r.args[0] for r in k.reductions]
        phases.append([s.expr for s in k.stores if any(s.form[k.n_outer:])])
        counts: dict[tuple, list] = {}
        for roots in phases:
            found: dict[tuple, Expr] = {}
            seen: set[int] = set()
            for root in roots if isinstance(roots, list) else [roots]:
                _row_loads(root, seen, found)
            for key, e in found.items():
                counts.setdefault(key, []).append(e)
        keys, slots = {}, 0
        for key, uses in counts.items():
            if len(uses) > 1 and slots + per_thread <= CACHE_SLOTS:
                keys[key] = uses[0]
                slots += per_thread
        return keys

    # ------------------------------------------------------------ split reductions
    def combine_partials(self, e: Expr, slot: int, acc: str, tid: str, width: int) -> list[str]:
        """A thread's share of row ``o``'s partials of reduction ``e`` (8-byte aligned whatever its type: the
        scratch is a region of 8-byte words), accumulated into a new ``acc``; the caller reduces across threads."""
        k, chunks = self.k, split_chunks(self.k)
        acc_t, ident, combine = _accumulator(e, CUDA.ctype(e.dtype))
        part = f"reinterpret_cast<const {acc_t}*>(gd_part + {slot * math.prod(k.outer) * chunks}LL)" \
               f"[o * {chunks}LL + q]"
        return [f"{acc_t} {acc} = ({acc_t}){ident};", f"for (long long q = {tid}; q < {chunks}LL; q += {width}) {{",
                f"  const {acc_t} part = {part};", "  " + combine.format(a=acc, b="part"), "}"]

    def partials(self, level: int) -> list[str]:
        """``<kernel>_partials<level>``: block ``b`` reduces chunk ``b % chunks`` of row ``b / chunks`` for every
        reduction of this level, leaving one partial per (reduction, row, chunk) in ``gd_part``. The reductions
        of lower levels that these read (softmax's max for its sum of exponentials, a mean for a variance) are
        first combined from the partials the earlier launches left."""
        k, em = self.k, self.em
        self.names = _outer_names(k) + _inner_names(k)
        n_outer, chunks = math.prod(k.outer), split_chunks(k)
        levels = reduction_levels(k)
        slots = {id(e): i for i, e in enumerate(split_reductions(k))}
        lines = em.outer
        for e in [e for lower in levels[:level] for e in lower]:
            acc, red, ctype = em.fresh("acc"), em.fresh("red"), CUDA.ctype(e.dtype)
            lines += self.combine_partials(e, slots[id(e)], acc, "threadIdx.x", BLOCK)
            lines.append(f"const {ctype} {red} = ({ctype}){_block_reduce(e, acc)};")
            em.bind(e, red)
        for e in levels[level]:
            em.new_loop()
            v = em.ref(e.args[0])
            acc_t, ident, combine = _accumulator(e, CUDA.ctype(e.dtype))
            acc, red = em.fresh("acc"), em.fresh("red")
            head = decompose("r", k.inner, _inner_names(k), "long long")
            lines += [f"{acc_t} {acc} = ({acc_t}){ident};", _chunk_loop(k, "threadIdx.x", BLOCK)] + \
                ["  " + s for s in head + em.inner + [combine.format(a=acc, b=v)]] + ["}"]
            lines += [f"const {acc_t} {red} = {_block_reduce(e, acc)};",
                      f"if (threadIdx.x == 0) reinterpret_cast<{acc_t}*>(gd_part + {slots[id(e)] * n_outer * chunks}LL)"
                      f"[o * {chunks}LL + c] = {red};"]
        head = _chunk_of_block(k) + decompose("o", k.outer, _outer_names(k), "long long")
        return em.hoisted + [f"for (long long b = blockIdx.x; b < {n_outer * chunks}LL; b += gridDim.x) {{"] + \
            ["  " + s for s in head + lines] + ["}"]

    def render(self) -> str:
        k = self.k
        out = []
        for level in range(len(reduction_levels(k)) if split_chunks(k) else 0):
            out += [f'extern "C" __global__ void {self.name}_partials{level}({self.params()}) {{'] + \
                ["  " + s for s in self.partials(level)] + ["}", ""]
            self.em, self.cached = Emitter(CUDA, self.load_text), {}  # each kernel starts afresh
        body = self.columns() if k.columnar else self.row() if k.is_row_kernel else self.elementwise()
        return "\n".join(out + [f'extern "C" __global__ void {self.name}({self.params()}) {{'] +
                         ["  " + s for s in body] + ["}", ""])


def vectorizable(k: KernelIR) -> bool:
    """An elementwise kernel whose threads move ``float4`` vectors: one flat loop of a multiple of 4 whose every
    access is a float32 element of a contiguous array (one lane of a float4) or a scalar of any type (read once,
    or written once: an optimizer's float64 step count beside its float32 update)."""
    if k.is_row_kernel or len(k.loops) != 1 or k.loops[0][0] % 4:
        return False
    accesses = [(e.form, e.dtype) for e in k.order if e.op == "load"] + [(s.form, s.node.dtype) for s in k.stores]
    return any(s.form == (1,) for s in k.stores) and all(
        form == (0,) or (form == (1,) and str(dtype) == "float32") for form, dtype in accesses)


def warp_per_row(k: KernelIR) -> bool:
    """Rows of at most ``WARP_ROW`` elements (a classifier's softmax, attention over a short sequence) take one
    warp each, ``WARPS`` rows per block, reduced by shuffles alone: a block per row would leave most of its
    threads idle and wait at block barriers."""
    return k.is_row_kernel and not k.columnar and math.prod(k.inner) <= WARP_ROW


def split_chunks(k: KernelIR) -> int:
    """How many chunks each row is split into (0: not split). Only for a row kernel with few rows (fewer than
    SPLIT_ROWS, so a block per row leaves SMs idle) that are long."""
    if not k.is_row_kernel or k.columnar or warp_per_row(k):
        return 0
    n_inner, n_outer = math.prod(k.inner), math.prod(k.outer)
    if not 0 < n_outer < SPLIT_ROWS or n_inner < SPLIT_MIN:  # no rows: no partials (a grid of 0 is no launch)
        return 0
    return min(SPLIT_MAX, -(-n_inner // SPLIT_CHUNK))


def _chunk_size(k: KernelIR) -> int:
    return -(-math.prod(k.inner) // split_chunks(k))


def _chunk_of_block(k: KernelIR) -> list[str]:
    """A split kernel's block ``b`` takes chunk ``c`` of row ``o``: elements ``[c * size, end)``."""
    chunks, size, n_inner = split_chunks(k), _chunk_size(k), math.prod(k.inner)
    return [f"const long long o = b / {chunks}LL, c = b % {chunks}LL;",
            f"const long long end = (c + 1) * {size}LL < {n_inner}LL ? (c + 1) * {size}LL : {n_inner}LL;"]


def _chunk_loop(k: KernelIR, tid: str, width: int) -> str:
    """The head of a loop over this block's chunk of the row, ``width`` threads striding from ``tid``."""
    return f"for (long long r = c * {_chunk_size(k)}LL + {tid}; r < end; r += {width}) {{"


def _block_reduce(e: Expr, acc: str) -> str:
    """``acc`` combined across the block (every thread gets the result) for reduction ``e``."""
    acc_t, ident, _ = _accumulator(e, CUDA.ctype(e.dtype))
    return f"gd_block_reduce<{acc_t}, {'true' if e.op == 'max' else 'false'}>({acc}, ({acc_t}){ident})"


def reduction_levels(k: KernelIR) -> list[list[Expr]]:
    """The row's reductions by dependency: level 0 reads no other reduction (a sum, a max), level n reads one of
    level n - 1 (a variance's second pass reads the mean; softmax's sum of exponentials reads the max). A split
    row kernel computes each level's partials in a launch of its own, in order."""
    depth: dict[int, int] = {}
    levels: list[list[Expr]] = []
    for e in k.reductions:  # operands first (``KernelIR.reductions``): every reduction e reads has its level
        n = 1 + max((depth[id(r)] for r in _reductions_read(e.args[0], set())), default=-1)
        depth[id(e)] = n
        levels += [[] for _ in range(n + 1 - len(levels))]
        levels[n].append(e)
    return levels


def split_reductions(k: KernelIR) -> list[Expr]:
    """Every reduction in level order: its position is its slot in the partials scratch."""
    return [e for level in reduction_levels(k) for e in level]


def _reductions_read(e, seen: set[int]) -> list[Expr]:
    """The reductions ``e`` reads, not looking inside them; an explicit stack, as expressions may be thousands
    of ops deep."""
    out, stack = [], [e]
    while stack:
        e = stack.pop()
        if not isinstance(e, Expr) or id(e) in seen:
            continue
        seen.add(id(e))
        if e.is_reduction:
            out.append(e)
        else:
            stack.extend(reversed(e.args))
    return out


class Accumulator(NamedTuple):
    """How a thread accumulates a reduction: its C ``type``, ``identity``, and ``combine``, a statement template
    that folds ``{b}`` into ``{a}``."""

    type: str
    identity: str
    combine: str


def _accumulator(e: Expr, ctype: str) -> Accumulator:
    """The accumulator of a sum or max reduction of C type ``ctype``; a max keeps NaN, as NumPy's does."""
    acc_t = "long long" if ctype == "bool" else ctype
    if e.op == "sum":
        return Accumulator(acc_t, "0", "{a} += {b};")
    return Accumulator(acc_t, CUDA.lowest(e.dtype), "{a} = ({b} != {b} || {b} > {a}) ? {b} : {a};")


def _row_loads(e: Expr, seen: set[int], found: dict[tuple, Expr]) -> None:
    """The loads varying along the row that computing ``e`` inside a row loop reads (reductions are values by
    then, per-row values were computed outside the loop), in depth-first order, on an explicit stack."""
    stack = [e]
    while stack:
        e = stack.pop()
        if not isinstance(e, Expr) or id(e) in seen or e.is_reduction or not e.inner:
            continue
        seen.add(id(e))
        if e.op == "load":
            found.setdefault((e.buffer.id, e.form), e)
        else:
            stack.extend(reversed(e.args))


def render_function(k: KernelIR, name: str, arg_of: dict[int, int]) -> str:
    return _CudaKernel(k, name, arg_of).render()


def render(k: KernelIR, name: str, arg_of: dict[int, int]) -> str:
    return header() + "\n" + render_function(k, name, arg_of)


def launch_config(k: KernelIR) -> tuple[int, int]:
    """(grid, block): one block per row for row kernels; enough blocks to cover the domain otherwise (a float4
    per thread where the kernel is ``vectorizable``)."""
    if k.columnar:
        return max(1, min(-(-math.prod(k.outer) // 32), 65535 * 32)), BLOCK
    if warp_per_row(k):
        return max(1, min(-(-math.prod(k.outer) // WARPS), 65535 * 32)), BLOCK
    if split_chunks(k):  # the row kernel, a block per (row, chunk) as its ``_partials<level>`` kernels
        return max(1, min(partials_grid(k), 65535 * 32)), BLOCK
    if k.is_row_kernel:
        return max(1, min(math.prod(k.outer), 65535 * 32)), BLOCK
    total = math.prod(s for s, _ in k.loops)
    grid = max(1, min(-(-total // BLOCK), 65535 * 32))
    return (max(1, -(-grid // 4)) if vectorizable(k) else grid), BLOCK


def partials_grid(k: KernelIR) -> int:
    """Blocks of a split kernel's launches (each ``_partials<level>`` and the row kernel): one per chunk of every
    row."""
    return math.prod(k.outer) * split_chunks(k)


def partials_bytes(k: KernelIR) -> int:
    """Scratch the partials take: 8 bytes per (reduction, row, chunk)."""
    return 8 * len(k.reductions) * partials_grid(k)
