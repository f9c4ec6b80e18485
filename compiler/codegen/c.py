"""CPU backend: C source for one kernel, an OpenMP-parallel loop nest built by the system C compiler.

Elementwise kernels are one ``#pragma omp parallel for simd`` loop (or rows x ``omp simd`` when the domain
does not flatten); row kernels run one loop per reduction over each row, then the elementwise tail. Small
kernels stay on one thread (``if(...)``): waking the thread team costs more than they do.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.fusion import fuse
    >>> from compiler.kernel import lower
    >>> k = lower(fuse(dup_graph()).groups[0])
    >>> print(render(k, "k0", {n.id: i for i, n in enumerate(k.buffers + [s.node for s in k.stores])}))
    ... # doctest: +ELLIPSIS
    #include <stdint.h>
    ...
    void k0(void** restrict args) {
    ...
"""

from __future__ import annotations

import ctypes
import functools
import math

from compiler.codegen.dialect import C, int_pow_function, transcendental_calls
from compiler.codegen.emit import Emitter, decompose
from compiler.kernel import Expr, KernelIR

# loop iterations (x phases) below which a kernel runs on one thread: waking the sleeping (PASSIVE) OpenMP team
# costs ~50 us, more than a 64x256 layer_norm takes alone (measured 46 us with the team vs 12 us without)
PARALLEL_WORK = 1 << 18
DOUBLE_ACC_LENGTH = 1 << 13  # float32 sums longer than this accumulate in double
COLUMN_TILE = 128  # rows of a column kernel run together: one contiguous vector of this many lanes per load
# a transcendental value that several loops of a row kernel read is computed once into a per-row scratch array
# instead of being recomputed: softmax's exp(x - max) feeds both its sum and its output (measured 2048x2048
# float32: 1.44-1.56 ms recomputed, 1.19-1.31 ms kept). The arrays live on the stack of every thread, so one
# kernel's together stay under SCRATCH_BYTES (musl's default thread stack is 128 KiB); the rest are recomputed.
SCRATCH_BYTES = 32 << 10
SCRATCH_OPS = frozenset(transcendental_calls(C))
# libm function -> number of arguments, in table order: what the vector prelude may declare
VECTOR_FUNCTIONS = {f: n for calls in transcendental_calls(C).values() for f, n in calls.items()}


@functools.cache
def vector_math_prelude() -> str:
    """``declare simd`` prototypes for the libm functions glibc's libmvec vectorises on this machine, so
    ``tanh``/``exp``/``erf`` inside an ``omp simd`` loop become vector calls (without -ffast-math)."""
    try:  # by soname: dlopen is fast, ctypes.util.find_library would spawn ldconfig (tens of ms, every process)
        lib = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return ""
    lines = []
    for f, n in VECTOR_FUNCTIONS.items():
        arity = "v" * n
        for suffix, ctype, lanes in (("f", "float", 8), ("", "double", 4)):
            if hasattr(lib, f"_ZGVdN{lanes}{arity}_{f}{suffix}"):
                params = ", ".join([ctype] * len(arity))
                lines += ["#pragma omp declare simd notinbranch", f"extern {ctype} {f}{suffix}({params});"]
    return "\n".join(lines)


def needs_mvec() -> bool:
    return bool(vector_math_prelude())



class _CKernel:
    def __init__(self, k: KernelIR, name: str, arg_of: dict[int, int]):
        self.k, self.name, self.arg_of = k, name, arg_of
        self.outer_idx = [f"i{j}" for j in range(k.n_outer)]
        self.inner_idx = ["r"] if len(k.inner) == 1 else [f"r{j}" for j in range(len(k.inner))]
        self.em = Emitter(C, self.load_text)

    def index(self, form) -> str:
        terms = [f"{c}LL*{v}" if c != 1 else v for c, v in zip(form, self.outer_idx + self.inner_idx) if c]
        return " + ".join(terms) or "0"

    def load_text(self, e: Expr) -> str:
        return f"p{self.arg_of[e.buffer.id]}[{self.index(e.form)}]"

    def inner_loop(self, body: list[str], reduction: str = "") -> list[str]:
        k = self.k
        count = math.prod(k.inner)
        if self.parallel_outer or count <= PARALLEL_WORK:
            pragma = f"#pragma omp simd{reduction}"
        else:
            pragma = f"#pragma omp parallel for simd{reduction}"
        head = decompose("r", k.inner, self.inner_idx, "int64_t") if len(self.inner_idx) > 1 else []
        return [pragma, f"for (int64_t r = 0; r < {count}LL; r++) {{"] + ["  " + s for s in head + body] + ["}"]

    def phase(self, e: Expr) -> list[str]:
        em = self.em
        em.new_loop()
        value = em.ref(e.args[0])
        j = em.fresh("acc")
        ctype = C.ctype(e.dtype)
        length = math.prod(self.k.inner)
        if e.op == "sum":
            acc_t = "double" if e.dtype.kind == "f" and length > DOUBLE_ACC_LENGTH else ctype
            head = [f"{acc_t} {j} = 0;"]
            body = em.inner + [f"{j} += {value};"]
            loop = self.inner_loop(body, f" reduction(+:{j})")
            result = f"({ctype}){j}"
        else:
            floating = e.dtype.kind == "f"
            head = [f"{ctype} {j} = {C.lowest(e.dtype)};"] + ([f"int {j}_nan = 0;"] if floating else [])
            body = em.inner + [f"{j} = ({value} > {j}) ? {value} : {j};"]
            red = f" reduction(max:{j})"
            if floating:  # max(NaN, x) is NaN in NumPy: tracked on the side so the max itself vectorises
                body.append(f"{j}_nan |= ({value} != {value});")
                red += f" reduction(|:{j}_nan)"
            loop = self.inner_loop(body, red)
            result = f"({j}_nan ? NAN : {j})" if floating else j
        name = em.fresh("red")
        em.bind(e, name)
        return head + loop + [f"const {ctype} {name} = {result};"]

    def render_columns(self) -> str:
        """Column kernel: rows are taken ``COLUMN_TILE`` at a time as the vector lane (``t``); each reduction
        keeps one accumulator per row of the tile and walks the reduced dims outside the lane loop, so every load
        is contiguous. Per-row values are recomputed in each loop rather than kept per row."""
        k, em = self.k, self.em
        em.flat = True
        tile, n_outer, n_inner = COLUMN_TILE, math.prod(k.outer), math.prod(k.inner)
        inner_head = decompose("r", k.inner, self.inner_idx, "int64_t") if len(self.inner_idx) > 1 else []
        outer_head = (decompose("o", k.outer, self.outer_idx, "int64_t") if k.n_outer > 1
                      else [f"const int64_t {self.outer_idx[0]} = o;"])

        def lanes(body: list[str]) -> list[str]:
            return ["#pragma omp simd", "for (int64_t t = 0; t < tn; t++) {", "  const int64_t o = ob + t;"] + \
                   ["  " + s for s in outer_head + body] + ["}"]

        def over_rows(body: list[str]) -> list[str]:
            return [f"for (int64_t r = 0; r < {n_inner}LL; r++) {{"] + ["  " + s for s in inner_head + body] + ["}"]

        lines = [f"const int64_t tn = ({n_outer}LL - ob) < {tile}LL ? ({n_outer}LL - ob) : {tile}LL;"]
        for e in k.reductions:
            em.new_loop()
            value = em.ref(e.args[0])
            ctype, j = C.ctype(e.dtype), em.fresh("acc")
            if e.op == "sum":
                acc_t = "double" if e.dtype.kind == "f" and n_inner > DOUBLE_ACC_LENGTH else ctype
                init, update, result = "0", f"{j}[t] += {value};", f"({ctype}){j}[t]"
            else:
                acc_t = ctype
                init = C.lowest(e.dtype)
                # NaN wins, as in NumPy: once the accumulator is NaN no comparison replaces it
                update = f"{j}[t] = ({value} > {j}[t] || {value} != {value}) ? {value} : {j}[t];"
                result = f"{j}[t]"
            red = em.fresh("red")
            lines += [f"{acc_t} {j}[{tile}];", f"{ctype} {red}[{tile}];"] + lanes([f"{j}[t] = {init};"])
            lines += over_rows(lanes(em.inner + [update])) + lanes([f"{red}[t] = {result};"])
            em.bind(e, f"{red}[t]")
        inner_stores = [s for s in k.stores if any(s.form[k.n_outer:])]
        row_stores = [s for s in k.stores if s not in inner_stores and any(s.form)]
        if inner_stores:
            em.new_loop()
            body = [f"p{self.arg_of[s.node.id]}[{self.index(s.form)}] = {em.ref(s.expr)};" for s in inner_stores]
            lines += over_rows(lanes(em.inner + body))
        if row_stores:
            em.new_loop()
            body = [f"p{self.arg_of[s.node.id]}[{self.index(s.form)}] = {em.ref(s.expr)};" for s in row_stores]
            lines += lanes(em.inner + body)
        scalar = [f"p{self.arg_of[s.node.id]}[0] = {em.ref(s.expr)};" for s in k.stores if not any(s.form)]
        parallel = n_outer > tile and n_outer * n_inner * (len(k.reductions) + 1) > PARALLEL_WORK
        loop = (["#pragma omp parallel for schedule(static)"] if parallel else []) + \
               [f"for (int64_t ob = 0; ob < {n_outer}LL; ob += {tile}LL) {{"] + ["  " + s for s in lines] + ["}"]
        body = em.hoisted + scalar + loop
        return "\n".join([f"void {self.name}(void** restrict args) {{"] +
                         ["  " + s for s in self.declarations() + body] + ["}", ""])

    def render(self) -> str:
        if self.k.columnar:
            return self.render_columns()
        k, em = self.k, self.em
        total = math.prod(s for s, _ in k.loops)
        phases = len(k.reductions)
        n_outer = math.prod(k.outer)
        self.parallel_outer = n_outer >= 8 or (n_outer > 1 and math.prod(k.inner) < PARALLEL_WORK)
        outer_lines = em.outer
        scalar_stores = [s for s in k.stores if not any(s.form)]
        inner_stores = [s for s in k.stores if s not in scalar_stores and (not k.is_row_kernel or
                                                                            any(s.form[k.n_outer:]))]
        row_stores = [s for s in k.stores if s not in inner_stores and s not in scalar_stores]
        scratch = {em.fresh("s"): e for e in
                   self.scratch_values([[e.args[0]] for e in k.reductions] + [[s.expr for s in inner_stores]])}
        for name, e in scratch.items():
            em.scratch[id(e)] = f"{name}[r]"
        for e in k.reductions:
            lines = self.phase(e)
            outer_lines.extend(lines)
        if inner_stores:
            em.new_loop()
            body = [f"p{self.arg_of[s.node.id]}[{self.index(s.form)}] = {em.ref(s.expr)};" for s in inner_stores]
            outer_lines.extend(self.inner_loop(em.inner + body))
        for s in row_stores:
            outer_lines.append(f"p{self.arg_of[s.node.id]}[{self.index(s.form)}] = {em.ref(s.expr)};")
        for s in scalar_stores:  # the same value in every row: written once
            guard = "if (o == 0) " if k.n_outer else ""
            outer_lines.append(f"{guard}p{self.arg_of[s.node.id]}[0] = {em.ref(s.expr)};")
        decl = self.declarations()
        # declared per row, inside the parallel loop: each thread has its own
        outer_lines[:0] = [f"{C.ctype(e.dtype)} {name}[{math.prod(k.inner)}];" for name, e in scratch.items()]
        if k.n_outer:
            pragma = ("#pragma omp parallel for schedule(static)"
                      if self.parallel_outer and total * (phases + 1) > PARALLEL_WORK else "")
            head = decompose("o", k.outer, self.outer_idx, "int64_t")
            body = [pragma] if pragma else []
            body += [f"for (int64_t o = 0; o < {n_outer}LL; o++) {{"] + ["  " + s for s in head + outer_lines] + ["}"]
        else:
            body = outer_lines
        body = em.hoisted + body  # loop-invariant values (a step count's powers): once, not once per row
        lines = [f"void {self.name}(void** restrict args) {{"] + ["  " + s for s in decl + body] + ["}", ""]
        return "\n".join(lines)

    def scratch_values(self, loops: list[list[Expr]]) -> list[Expr]:
        """Per-element transcendental values (``SCRATCH_OPS``) that more than one loop of a row kernel reads, given
        each loop's root expressions; a value reached in later loops only through another kept value is not
        kept itself."""
        k = self.k
        if not k.is_row_kernel:
            return []

        def reached(roots, stop) -> dict[int, Expr]:
            found, stack, seen = {}, list(roots), set()
            while stack:
                e = stack.pop()
                if not isinstance(e, Expr) or id(e) in seen or e.is_reduction or not e.inner:
                    continue
                seen.add(id(e))
                if e.op in SCRATCH_OPS:
                    found[id(e)] = e
                    if id(e) in stop:
                        continue
                stack.extend(e.args)
            return found
        per_loop = [reached(roots, ()) for roots in loops]
        shared = {i: e for i, e in {i: e for f in per_loop for i, e in f.items()}.items()
                  if sum(i in f for f in per_loop) > 1}
        first = {i: next(n for n, f in enumerate(per_loop) if i in f) for i in shared}
        later = set()
        for n, roots in enumerate(loops):
            later |= {i for i in reached(roots, shared) if i in shared and first[i] < n}
        kept, room = [], SCRATCH_BYTES
        for e in k.order:
            size = math.prod(k.inner) * e.dtype.itemsize
            if id(e) in later and size <= room:
                kept.append(e)
                room -= size
        return kept

    def declarations(self) -> list[str]:
        written = {self.arg_of[s.node.id] for s in self.k.stores}
        seen, out = set(), []
        for n in self.k.buffers + [s.node for s in self.k.stores]:
            a = self.arg_of[n.id]
            if a in seen:
                continue
            seen.add(a)
            const = "" if a in written else "const "
            ctype = C.ctype(n.dtype)
            out.append(f"{const}{ctype}* restrict p{a} = ({const}{ctype}*)args[{a}];")
        return out


def header() -> str:
    return "\n".join(["#include <stdint.h>", "#include <math.h>", vector_math_prelude(), "#include <tgmath.h>",
                      int_pow_function("static inline"), ""])


def render_function(k: KernelIR, name: str, arg_of: dict[int, int]) -> str:
    """The C function ``void name(void** args)``; args[i] is the buffer that ``arg_of`` maps to i."""
    return _CKernel(k, name, arg_of).render()


def render(k: KernelIR, name: str, arg_of: dict[int, int]) -> str:
    """A complete C translation unit for one kernel (header + function)."""
    return header() + "\n" + render_function(k, name, arg_of)
