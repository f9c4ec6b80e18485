"""A ``scan`` or ``while_loop`` as one generated C function: the loop itself, around its regions' kernels.

The regions are compiled on their own first (``compiler.api.lower_graph``: passes, fusion, their C kernels in
their own libraries); this module writes the driver that runs them with no Python per trip. The driver takes
two tables: ``fn`` (the regions' kernel functions and the BLAS gemm, as pointers the caller looked up) and ``p``
(every buffer it touches: inputs, outputs, constants, the regions' scratch slots). Everything static is baked
into the source: shapes, byte counts, which buffer each kernel argument is, the order of the steps. Per trip
the driver points the step's inputs at the current carry and the trip's slice of ``xs``, calls each step,
copies the ys into their row of the stacked output, and swaps the carry's two buffers.

Values are named by C expressions (``Ref``): ``cur[k]`` (the carry as the trip reads it), ``x[j]`` (this trip's
slice of the j-th ``xs``) or ``p[i]`` (a buffer that does not move).

    >>> loop = LoopSource("demo", "scan", carry_bytes=[16], xs_bytes=[8], ys_bytes=[16], reverse=False,
    ...                   body=[Kernel(0, ["cur[0]", "x[0]", "p[5]"])], carry_out=["p[5]"], ys_out=["p[5]"])
    >>> src = render(loop)
    >>> "for (t = 0; t < length; t++)" in src and "memcpy(p[3] + s * 16, p[5], 16);" in src
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

Ref = str  # a C expression of type ``char *``

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enum values


@dataclass(frozen=True)
class Kernel:
    """A call of generated kernel ``fn[index]`` on its arguments (one buffer each)."""

    index: int
    args: list[Ref]

    def render(self) -> str:
        return f"{{ void *a[] = {{{', '.join(self.args)}}}; ((gd_kernel)fn[{self.index}])(a); }}"


@dataclass(frozen=True)
class Gemm:
    """``c = a @ b`` by BLAS ``fn[index]`` (sgemm or dgemm): row-major, a ``m x k``, b ``k x n``, either read
    transposed in place (``trans_a``: a's buffer holds ``k x m``)."""

    index: int
    ctype: str  # float | double
    m: int
    n: int
    k: int
    a: Ref
    trans_a: bool
    b: Ref
    trans_b: bool
    c: Ref

    def render(self) -> str:
        lda = self.m if self.trans_a else self.k
        ldb = self.k if self.trans_b else self.n
        one, zero = ("1.0f", "0.0f") if self.ctype == "float" else ("1.0", "0.0")
        kind = "gd_sgemm" if self.ctype == "float" else "gd_dgemm"
        return (f"(({kind})fn[{self.index}])({ROW_MAJOR}, {TRANS if self.trans_a else NO_TRANS}, "
                f"{TRANS if self.trans_b else NO_TRANS}, {self.m}, {self.n}, {self.k}, {one}, "
                f"(const {self.ctype} *){self.a}, {max(lda, 1)}, (const {self.ctype} *){self.b}, {max(ldb, 1)}, "
                f"{zero}, ({self.ctype} *){self.c}, {max(self.n, 1)});")


@dataclass(frozen=True)
class Copy:
    """Elements of ``shape`` from ``src + src_offset`` to ``dst + dst_offset``, each side with its own byte
    strides: a slice, transpose or broadcast gathered into a plain buffer, or a plain value scattered into a
    region of one (a concatenation, a functional write through a view). Where both sides are contiguous along
    the last dims, those dims move as one memcpy."""

    src: Ref
    src_offset: int
    src_strides: tuple[int, ...]
    dst: Ref
    dst_offset: int
    dst_strides: tuple[int, ...]
    shape: tuple[int, ...]
    itemsize: int

    def _split(self) -> tuple[int, int]:
        """How many leading dims stay loops, and the bytes of the contiguous block the rest moves as."""
        block, dims = self.itemsize, len(self.shape)
        while dims and self.src_strides[dims - 1] == block == self.dst_strides[dims - 1]:
            block *= self.shape[dims - 1]
            dims -= 1
        return dims, block

    def render(self) -> str:
        if 0 in self.shape:
            return "/* empty copy */"
        dims, block = self._split()
        src = " + ".join([f"{self.src} + {self.src_offset}"] + [f"i{d} * {self.src_strides[d]}" for d in range(dims)])
        dst = " + ".join([f"{self.dst} + {self.dst_offset}"] + [f"i{d} * {self.dst_strides[d]}" for d in range(dims)])
        loops = "".join(f"for (int64_t i{d} = 0; i{d} < {self.shape[d]}; i{d}++) " for d in range(dims))
        return f"{loops}memcpy({dst}, {src}, {block});"


@dataclass(frozen=True)
class Branch:
    """A ``cond`` inside a loop's region: the taken branch's steps, then its results copied into the cond's
    result buffers (``outputs``, ``nbytes`` each), so the steps after it read one place whichever branch ran."""

    pred: Ref
    true_steps: list
    true_results: list[Ref]
    false_steps: list
    false_results: list[Ref]
    outputs: list[Ref]
    nbytes: list[int]

    def _arm(self, steps: list, results: list[Ref]) -> str:
        lines = [s.render() for s in steps]
        lines += [f"memmove({o}, {r}, {b});" for o, r, b in zip(self.outputs, results, self.nbytes)]
        return " ".join(lines)

    def render(self) -> str:
        return (f"if (*(const unsigned char *){self.pred}) {{ {self._arm(self.true_steps, self.true_results)} }} "
                f"else {{ {self._arm(self.false_steps, self.false_results)} }}")


Step = Kernel | Gemm | Copy | Branch


@dataclass
class LoopSource:
    """What the driver of one loop is made of. ``p`` holds, in this order: the carry's two buffers per carried
    value (``2k``, ``2k + 1``), the initial carry per value, the final carry per value, then (scan) each
    ``xs`` and each stacked ``ys``; the regions' own buffers follow from index ``fixed_base``."""

    name: str
    kind: str  # scan | while_loop
    carry_bytes: list[int]
    body: list[Step]
    carry_out: list[Ref]
    xs_bytes: list[int] = field(default_factory=list)
    ys_bytes: list[int] = field(default_factory=list)
    ys_out: list[Ref] = field(default_factory=list)
    reverse: bool = False
    cond: list[Step] = field(default_factory=list)
    pred: Ref = ""
    blas_index: str = "int64_t"  # OpenBLAS's ILP64 build takes 64-bit sizes
    notes: list[str] = field(default_factory=list)

    # indices into p
    def buffer(self, k: int, which: int) -> int:
        return 2 * k + which

    def init(self, k: int) -> int:
        return 2 * len(self.carry_bytes) + k

    def final(self, k: int) -> int:
        return 3 * len(self.carry_bytes) + k

    def xs(self, j: int) -> int:
        return 4 * len(self.carry_bytes) + j

    def ys(self, j: int) -> int:
        return 4 * len(self.carry_bytes) + len(self.xs_bytes) + j

    @property
    def fixed_base(self) -> int:
        return 4 * len(self.carry_bytes) + len(self.xs_bytes) + len(self.ys_bytes)


def _header(blas_index: str) -> str:
    sizes = ", ".join([blas_index] * 3)
    return (
        "#include <stdint.h>\n#include <string.h>\n"
        "typedef void (*gd_kernel)(void **);\n"
        f"typedef void (*gd_sgemm)(int, int, int, {sizes}, float, const float *, {blas_index}, const float *, "
        f"{blas_index}, float, float *, {blas_index});\n"
        f"typedef void (*gd_dgemm)(int, int, int, {sizes}, double, const double *, {blas_index}, const double *, "
        f"{blas_index}, double, double *, {blas_index});\n")


def _steps(steps: list[Step], indent: str) -> list[str]:
    return [indent + s.render() for s in steps]


def _carry_update(loop: LoopSource, indent: str) -> list[str]:
    """The carry's next value into the other buffer (memmove: a value carried unchanged is its own source),
    then the two buffers swap roles."""
    lines = [f"{indent}memmove(nxt[{k}], {ref}, {b});" for k, (ref, b) in enumerate(zip(loop.carry_out,
                                                                                        loop.carry_bytes))]
    lines += [f"{indent}{{ char *swap = cur[{k}]; cur[{k}] = nxt[{k}]; nxt[{k}] = swap; }}"
              for k in range(len(loop.carry_bytes))]
    return lines


def render(loop: LoopSource) -> str:
    """The driver's C source: ``int64_t <name>(void **fn, char **p, int64_t length)``, returning the trips run."""
    nc = len(loop.carry_bytes)
    lines = [_header(loop.blas_index)]
    lines += [f"/* {note} */" for note in loop.notes]
    lines.append(f"int64_t {loop.name}(void **fn, char **p, int64_t length) {{")
    lines.append(f"  char *cur[{max(nc, 1)}], *nxt[{max(nc, 1)}];")
    if loop.xs_bytes:
        lines.append(f"  char *x[{len(loop.xs_bytes)}];")
    for k, b in enumerate(loop.carry_bytes):
        lines.append(f"  cur[{k}] = p[{loop.buffer(k, 0)}]; nxt[{k}] = p[{loop.buffer(k, 1)}]; "
                     f"memcpy(cur[{k}], p[{loop.init(k)}], {b});")
    lines.append("  int64_t t = 0;")
    if loop.kind == "scan":
        lines.append("  for (t = 0; t < length; t++) {")
        lines.append(f"    const int64_t s = {'length - 1 - t' if loop.reverse else 't'};")
        lines += [f"    x[{j}] = p[{loop.xs(j)}] + s * {b};" for j, b in enumerate(loop.xs_bytes)]
        lines += _steps(loop.body, "    ")
        lines += [f"    memcpy(p[{loop.ys(j)}] + s * {b}, {ref}, {b});" for j, (ref, b) in
                  enumerate(zip(loop.ys_out, loop.ys_bytes))]
        lines += _carry_update(loop, "    ")
        lines.append("  }")
    else:
        lines.append("  for (;; t++) {")
        lines += _steps(loop.cond, "    ")
        lines.append(f"    if (!*(const unsigned char *){loop.pred}) break;")
        lines += _steps(loop.body, "    ")
        lines += _carry_update(loop, "    ")
        lines.append("  }")
    lines += [f"  memcpy(p[{loop.final(k)}], cur[{k}], {b});" for k, b in enumerate(loop.carry_bytes)]
    lines.append("  return t;")
    lines.append("}")
    return "\n".join(lines) + "\n"
