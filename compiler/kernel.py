"""Lowering one fusion group to a kernel IR: an expression DAG over loads, literals, ops and reductions,
with every read and write reduced to a linear memory form over a coalesced loop nest.

Both code generators (C and CUDA) and the NumPy fallback read this IR; nothing here is backend-specific.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.fusion import fuse
    >>> from compiler.passes import cse
    >>> k = lower(fuse(cse(dup_graph())).groups[0])
    >>> k.loops, [e.op for e in k.order]
    ([(4, False)], ['load', 'exp', 'add'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compiler import views as V
from compiler.fusion import REDUCE_OPS, VIEW_OPS, Group, reduce_axes
from eager.backend import to_numpy
from eager.primitives import COMPARISONS
from tracer.ir import CONSTANT, Node


@dataclass(eq=False)
class Expr:
    """One value inside a kernel. ``op`` is a primitive name, or 'load' / 'literal'."""

    op: str
    dtype: np.dtype
    args: tuple = ()
    node: Node | None = None      # the IR node computed (None for literals)
    buffer: Node | None = None    # for loads: the materialised value read
    form: tuple = ()              # for loads: memory offset per loop dim (elements)
    value: object = None          # for literals
    params: dict = field(default_factory=dict)
    inner: bool = False           # varies along the innermost loop(s): else computed once per row
    invariant: bool = False       # varies along no loop (a scalar input, a step count): computed once per kernel

    @property
    def is_reduction(self) -> bool:
        return self.op in REDUCE_OPS


@dataclass
class Store:
    node: Node
    form: tuple
    expr: Expr


@dataclass
class KernelIR:
    """``loops``: (size, is_reduced) per coalesced loop dim, outermost first; the last kept dim is the inner
    loop of an elementwise kernel, the reduced dims are the inner loop of a row kernel."""

    group: Group
    loops: list[tuple[int, bool]]
    order: list[Expr]                 # every non-literal Expr, operands first
    reductions: list[Expr]            # in dependency order: one phase each
    stores: list[Store]
    buffers: list[Node]               # materialised values read (loads), in first-use order
    materialize: set[int] = field(default_factory=set)  # movement nodes that must run on the host

    @property
    def is_row_kernel(self) -> bool:
        return bool(self.reductions)

    @property
    def outer(self) -> list[int]:
        return [s for s, r in self.loops if not r] if self.reductions else [s for s, _ in self.loops[:-1]]

    @property
    def inner(self) -> list[int]:
        return [s for s, r in self.loops if r] if self.reductions else [s for s, _ in self.loops[-1:]]

    @property
    def n_outer(self) -> int:
        return len(self.outer)

    @property
    def columnar(self) -> bool:
        """A row kernel whose rows run across memory (a sum over axis 0, every bias gradient): its reduced loop
        walks with a stride while the kept loop is contiguous, so backends run many rows side by side (the C
        backend as vector lanes, CUDA as a warp's lanes) to keep every load contiguous."""
        if not self.is_row_kernel or not self.n_outer or any(not any(s.form) and not s.expr.invariant
                                                             for s in self.stores):
            return False
        forms = [e.form for e in self.order if e.op == "load"] + [s.form for s in self.stores]
        last_outer, last_inner = self.n_outer - 1, len(self.loops) - 1
        return sum(f[last_outer] == 1 for f in forms) > sum(f[last_inner] == 1 for f in forms)


def _literal(value, dtype) -> Expr:
    return Expr("literal", np.dtype(dtype), value=value)


def _scalar_dtype(n: Node) -> np.dtype:
    """A Python scalar takes the dtype of its tensor operand (weak typing); ``where`` takes the result's."""
    if n.op in COMPARISONS:
        return next(a.dtype for a in n.args if isinstance(a, Node))
    return n.dtype


class _Lowerer:
    def __init__(self, group: Group, is_literal):
        self.g = group
        self.members = {m.id for m in group.members}
        self.memo: dict = {}
        self.order: list[Expr] = []
        self.reductions: list[Expr] = []
        self.loads: list[tuple[Node, V.View, Expr]] = []
        self.materialize: set[int] = set()
        self.is_literal = is_literal

    def value(self, n: Node, view) -> Expr:
        """The Expr of ``n`` read through ``view``. Operands are built first, in the order a recursive walk takes,
        but on an explicit stack: a chain of fused ops may be thousands long."""
        key = (n.id, view)
        if key in self.memo:
            return self.memo[key]
        stack = [(n, view, iter(self._operands(n, view)))]
        while stack:
            node, v, operands = stack[-1]
            for a, av in operands:
                if (a.id, av) not in self.memo:
                    stack.append((a, av, iter(self._operands(a, av))))
                    break
            else:
                stack.pop()
                self.memo[(node.id, v)] = self._build(node, v)
        return self.memo[key]

    def _operands(self, n: Node, view) -> list[tuple[Node, object]]:
        """The (node, view) pairs ``_build(n, view)`` reads, in the order it reads them."""
        if self.is_literal(n) is not None:
            return []
        if n.id in self.members:
            if n.op in REDUCE_OPS:
                return [(n.args[0], V.identity(self.g.ndom))]
            return [(a, V.broadcast_source(view, n.shape, a.shape, self.g.ndom)) for a in n.args
                    if isinstance(a, Node)]
        if n.op in VIEW_OPS and n.id not in self.materialize:
            sview = self._source_view(n, view)
            return [] if sview is None else [(n.args[0], sview)]
        return []

    def _source_view(self, n: Node, view):
        """How a movement node's source is read when the node is read through ``view`` (None: not affine)."""
        src = n.args[0]
        if n.op == "broadcast_to":
            return V.broadcast_source(view, n.shape, src.shape, self.g.ndom)
        if n.op == "permute":
            return V.permute_source(view, n.params["axes"])
        return V.reshape_source(view, n.shape, src.shape, self.g.domain)

    def _build(self, n: Node, view) -> Expr:
        """The Expr of one node; ``value`` has built its operands already."""
        literal = self.is_literal(n)
        if literal is not None:
            return _literal(literal, n.dtype)
        if n.id in self.members:
            if n.op in REDUCE_OPS:
                arg = self.value(n.args[0], V.identity(self.g.ndom))
                e = Expr(n.op, n.dtype, (arg,), node=n, params={"axes": reduce_axes(n)})
                self.reductions.append(e)
            else:
                sdt = _scalar_dtype(n)
                args = tuple(self.value(a, V.broadcast_source(view, n.shape, a.shape, self.g.ndom))
                             if isinstance(a, Node) else _literal(a, sdt) for a in n.args)
                e = Expr(n.op, n.dtype, args, node=n, params=dict(n.params))
            self.order.append(e)
            return e
        if n.op in VIEW_OPS and n.id not in self.materialize:
            sview = self._source_view(n, view)
            if sview is not None:
                return self.value(n.args[0], sview)
            self.materialize.add(n.id)
        e = Expr("load", n.dtype, node=n, buffer=n)
        self.loads.append((n, view, e))
        self.order.append(e)
        return e


def run_frames(root):
    """Run a recursion written as generators on an explicit stack instead of Python's: a frame ``yield``s the
    generator of a sub-call and receives its return value. Depth is then bounded by memory, not by
    ``sys.getrecursionlimit()`` (a 10,000-op chain is 10,000 frames), and the visiting order is the recursive one.

    >>> def depth(n):
    ...     return 0 if n == 0 else 1 + (yield depth(n - 1))
    >>> run_frames(depth(50_000))
    50000
    """
    stack, result = [root], None
    while stack:
        try:
            child = stack[-1].send(result)
        except StopIteration as done:
            stack.pop()
            result = done.value
        else:
            stack.append(child)
            result = None
    return result


def literal_value(n: Node):
    """A ``full`` node or a one-element constant is read as a literal, never from memory."""
    if n.op == "full":
        return n.params["fill_value"]
    if n.op == CONSTANT and n.value.size == 1:
        return to_numpy(n.value).reshape(()).item()
    return None


def _coalesce(domain, reduced, forms):
    """Loop dims (kept first, then reduced), size-1 dims dropped, adjacent dims merged where every access
    walks them as one (``f[a] == f[b] * size[b]``)."""
    red = set(reduced or ())
    order = [d for d in range(len(domain)) if d not in red] + sorted(red)
    dims = [(domain[d], d in red, [f[d] for f in forms]) for d in order if domain[d] != 1]
    merged: list = []
    for size, is_red, coefs in dims:
        if merged:
            psize, pred, pcoefs = merged[-1]
            if pred == is_red and all(p == c * size for p, c in zip(pcoefs, coefs)):
                merged[-1] = (psize * size, is_red, coefs)
                continue
        merged.append((size, is_red, coefs))
    return merged


def lower(group: Group, is_literal=literal_value) -> KernelIR:
    low = _Lowerer(group, is_literal)
    stores = [(m, group.stores[m.id], low.value(m, group.stores[m.id])) for m in group.members
              if m.id in group.stores]
    ndom = group.ndom
    raw = [V.linear_form(v, n.shape, ndom) for n, v, _ in low.loads] + \
          [V.linear_form(v, n.shape, ndom) for n, v, _ in stores]
    merged = _coalesce(group.domain, group.reduced if low.reductions else None, raw)
    if low.reductions and not any(r for _, r, _ in merged):
        merged.append((1, True, [0] * len(raw)))  # a reduction over size-1 dims: one-iteration inner loop
    if not low.reductions and not merged:
        merged.append((1, False, [0] * len(raw)))
    loops = [(s, r) for s, r, _ in merged]
    forms = [tuple(c[i] for _, _, c in merged) for i in range(len(raw))]
    n_inner = sum(1 for _, r in loops if r) if low.reductions else 1
    inner_dims = range(len(loops) - n_inner, len(loops))
    buffers: list[Node] = []
    for (n, _, e), f in zip(low.loads, forms):
        e.form = f
        e.inner = any(f[d] for d in inner_dims)
        e.invariant = not any(f)
        if all(b.id != n.id for b in buffers):
            buffers.append(n)
    for e in low.order:
        if e.op not in ("load",) and not e.is_reduction:
            e.inner = any(isinstance(a, Expr) and a.inner for a in e.args)
            e.invariant = all(a.invariant or a.op == "literal" for a in e.args if isinstance(a, Expr))
    out = [Store(n, f, e) for (n, _, e), f in zip(stores, forms[len(low.loads):])]
    return KernelIR(group, loops, low.order, low.reductions, out, buffers, low.materialize)


def numel(shape) -> int:
    return math.prod(shape)
