"""Algebraic simplification: identities that remove work without changing results.

Rules (each only when the result keeps the node's exact shape and dtype):
``x*1, 1*x, x/1, x+0, 0+x, x-0 -> x``; ``neg(neg(x)) -> x``; ``reshape(reshape(x)) -> reshape(x)``;
a reshape/broadcast/permute/cast to what ``x`` already is ``-> x``; ``permute(permute(x))`` composed;
``stop_gradient(x), copy(x) -> x`` (values are immutable in the IR, so a copy is an alias);
``pow(x, 1) -> x``, ``pow(x, 2) -> x*x``, ``pow(x, 3) -> x*x*x``, ``pow(x, 0.5) -> sqrt(x)``;
``where(c, x, x) -> x``; ``permute(a @ b)`` (last two dims swapped) ``-> b^T @ a^T`` when the product has
no other reader.

    >>> from compiler.passes.testing import identity_graph
    >>> g = identity_graph()       # neg(neg(x * 1))
    >>> simplify(g).outputs[0].op   # the output is x itself; dce drops the dead negs
    'placeholder'
"""

from __future__ import annotations

from compiler.rewrite import Rebuilder, rebuild
from eager.primitives import Aval
from tracer.ir import Graph, Node

ALIASES = frozenset({"stop_gradient", "copy"})
_ADD_IDENTITY = {"add": (0, 1), "sub": (None, 1), "mul": (1, 1), "div": (None, 1)}


def _is_scalar(a, value) -> bool:
    return not isinstance(a, Node) and not isinstance(a, bool) and a == value


def _same(n: Node, x) -> bool:
    return isinstance(x, Node) and x.aval == n.aval


def _neutral(op: str, args: tuple, n: Node):
    """The operand that ``op`` leaves unchanged, when the other one is its neutral element."""
    a, b = args
    neutral = {"add": 0, "sub": 0, "mul": 1, "div": 1}[op]
    if _is_scalar(b, neutral) and _same(n, a):
        return a
    if op in ("add", "mul") and _is_scalar(a, neutral) and _same(n, b):
        return b
    return None


def _swaps_last_two(axes) -> bool:
    k = len(axes)
    return k >= 2 and list(axes) == list(range(k - 2)) + [k - 1, k - 2]


def _transpose(rb: Rebuilder, x: Node, source) -> Node:
    axes = tuple(range(len(x.shape) - 2)) + (len(x.shape) - 1, len(x.shape) - 2)
    if x.op == "permute" and tuple(x.params["axes"]) == axes:
        return x.args[0]
    shape = x.shape[:-2] + (x.shape[-1], x.shape[-2])
    return rb.new.call("permute", (x,), {"axes": axes}, Aval(shape, x.dtype), source)


def _visit(rb: Rebuilder, n: Node, users: dict):
    args = rb.args(n)
    op = n.op
    if (op == "permute" and _swaps_last_two(n.params["axes"]) and args[0].op == "matmul"
            and len(users[n.args[0].id]) == 1 and all(len(a.shape) == len(n.shape) for a in args[0].args)):
        # (a @ b)^T = b^T @ a^T: BLAS reads transposed operands for free, and the result is written in the
        # layout its readers want (a weight gradient then matches its weight, no strided reads downstream)
        a, b = args[0].args
        return rb.alias(n, rb.new.call("matmul", (_transpose(rb, b, n.source), _transpose(rb, a, n.source)), {},
                                       n.aval, n.source))
    if op in ALIASES and _same(n, args[0]):
        return rb.alias(n, args[0])
    if op in ("add", "sub", "mul", "div"):
        x = _neutral(op, args, n)
        if x is not None:
            return rb.alias(n, x)
    if op == "neg" and isinstance(args[0], Node) and args[0].op == "neg":
        return rb.alias(n, args[0].args[0])
    if op in ("reshape", "broadcast_to", "cast") and _same(n, args[0]):
        return rb.alias(n, args[0])
    if op == "permute":
        axes = n.params["axes"]
        if list(axes) == list(range(len(axes))):
            return rb.alias(n, args[0])
        inner = args[0]
        if isinstance(inner, Node) and inner.op == "permute":
            composed = tuple(inner.params["axes"][a] for a in axes)
            if list(composed) == list(range(len(composed))):
                return rb.alias(n, inner.args[0])
            return rb.alias(n, rb.new.call("permute", (inner.args[0],), {"axes": composed}, n.aval, n.source))
    if op == "reshape" and isinstance(args[0], Node) and args[0].op == "reshape":
        src = args[0].args[0]
        if src.shape == n.shape:
            return rb.alias(n, src)
        return rb.alias(n, rb.new.call("reshape", (src,), dict(n.params), n.aval, n.source))
    if op == "where" and isinstance(args[1], Node) and args[1] is args[2] and _same(n, args[1]):
        return rb.alias(n, args[1])
    if op == "pow" and isinstance(args[0], Node) and not isinstance(args[1], Node) and _same(n, args[0]):
        return rb.alias(n, _pow(rb, n, args[0], args[1]))
    return rb.copy(n)


def _pow(rb: Rebuilder, n: Node, x: Node, e) -> Node:
    """Small integer and half powers become multiplies/sqrt: exact or within one rounding, and much faster."""
    aval = Aval(n.shape, n.dtype)
    if e == 1:
        return x
    if e in (2, 3) and not isinstance(e, bool):
        sq = rb.new.call("mul", (x, x), {}, aval, n.source)
        return sq if e == 2 else rb.new.call("mul", (sq, x), {}, aval, n.source)
    if e == 0.5 and n.dtype.kind == "f":
        return rb.new.call("sqrt", (x,), {}, aval, n.source)
    return rb.new.call(n.op, (x, e), dict(n.params), n.aval, n.source)


def simplify(graph: Graph) -> Graph:
    users = graph.users()
    return rebuild(graph, lambda rb, n: _visit(rb, n, users))
