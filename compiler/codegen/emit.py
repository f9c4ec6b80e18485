"""Statement emission shared by the C and CUDA generators: one local per value, at the loop level it
varies at (once per row, or inside the innermost loop), with loads spelled by a backend-provided indexer.

    >>> from compiler.codegen.dialect import C
    >>> e = Emitter(C, lambda load: f"x[{load.form}]")
"""

from __future__ import annotations

from compiler.codegen.dialect import Dialect
from compiler.kernel import Expr, run_frames


class Emitter:
    """``ref(expr)`` returns a C expression for ``expr``, declaring locals into ``self.hoisted`` (once per
    kernel, before any loop), ``self.outer`` (per row) or ``self.inner`` (per iteration of the current innermost
    loop)."""

    def __init__(self, dialect: Dialect, load_text):
        self.d = dialect
        self.load_text = load_text
        self.hoisted: list[str] = []
        self.outer: list[str] = []
        self.inner: list[str] = []
        self._hoisted_names: dict[int, str] = {}
        self._outer_names: dict[int, str] = {}
        self._inner_names: dict[int, str] = {}
        self._count = 0
        self.flat = False  # column kernels: per-row values are recomputed in each loop (rows are a vector lane)
        # per-element values kept in a row-sized scratch array (id -> its element, e.g. "s1[r]"): written by the
        # first loop that computes them, read back by later loops instead of being recomputed
        self.scratch: dict[int, str] = {}
        self._written: set[int] = set()
        self._ready: set[int] = set()

    def new_loop(self) -> None:
        """Start a new innermost loop: values local to the previous one are out of scope."""
        self.inner = []
        self._inner_names = {}
        self._ready |= self._written

    def bind(self, e: Expr, name: str) -> None:
        self._outer_names[id(e)] = name

    def fresh(self, prefix: str = "v") -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def ref(self, e: Expr) -> str:
        """The local (or literal) holding ``e``, declaring it and every operand it needs first. An expression is
        as deep as its chain of fused ops, so the walk runs on an explicit stack (``kernel.run_frames``)."""
        return run_frames(self._ref(e))

    def _ref(self, e: Expr):
        if e.op == "literal":
            return self.d.literal(e.value, e.dtype)
        level = "hoisted" if e.invariant else "inner" if e.inner or (self.flat and not e.is_reduction) else "outer"
        names = getattr(self, f"_{level}_names")
        if id(e) in names:
            return names[id(e)]
        if e.is_reduction:
            raise RuntimeError(f"reduction {e.node.ref} read before its phase ran")
        kept = self.scratch.get(id(e)) if level == "inner" else None
        if kept and id(e) in self._ready:
            text = kept
        elif e.op == "load":
            text = self.load_text(e)
        else:
            args = []
            for a in e.args:
                args.append((yield self._ref(a)))
            text = self.d.render(e.op, e.dtype, args)
        name = self.fresh()
        getattr(self, level).append(f"const {self.d.ctype(e.dtype)} {name} = {text};")
        if kept and id(e) not in self._ready:
            self.inner.append(f"{kept} = {name};")
            self._written.add(id(e))
        names[id(e)] = name
        return name


def decompose(var: str, sizes, names, ctype: str) -> list[str]:
    """Split a flat loop index into per-dim indices (row-major). The leading dim takes no modulo (the flat
    index is below the product of the sizes) and the last no division: 64-bit division is slow, on GPUs most.

    >>> decompose("t", [3, 4, 5], ["a", "b", "c"], "long long")
    ['const long long a = (t / 20LL);', 'const long long b = (t / 5LL) % 4LL;', 'const long long c = t % 5LL;']
    """
    out, stride = [], 1
    for pos in range(len(sizes) - 1, -1, -1):
        quotient = var if stride == 1 else f"({var} / {stride}LL)"
        out.append(f"const {ctype} {names[pos]} = {quotient if pos == 0 else f'{quotient} % {sizes[pos]}LL'};")
        stride *= sizes[pos]
    return out[::-1]

