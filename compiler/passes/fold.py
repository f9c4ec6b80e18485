"""Constant folding: a call whose tensor inputs are all constants is evaluated once, at compile time.

Results much larger than their inputs (``full``, ``broadcast_to`` of a scalar) are not folded: baking a big
array costs memory, while the fused kernel reads a scalar for free. For the same reason a folded result whose
elements are all equal becomes a scalar constant broadcast to its shape.

    >>> from compiler.passes.testing import const_graph
    >>> g = const_graph()          # x * (2 + 3)
    >>> [n.op for n in fold_constants(g).calls]
    ['mul']
"""

from __future__ import annotations

import numpy as np

from compiler.rewrite import rebuild
from eager.backend import to_numpy
from eager.primitives import PRIMITIVES
from tracer.ir import CONSTANT, Graph, Node

FOLD_LIMIT = 1 << 16  # elements: a folded result bigger than this and than every input stays a call


def _evaluate(n: Node, args) -> np.ndarray:
    values = [to_numpy(a.value) if isinstance(a, Node) else a for a in args]  # CuPy constants: folded on the host
    out = np.asarray(PRIMITIVES[n.op].impl(np, *values, **n.params))
    return np.array(out, dtype=n.dtype, order="C")  # a copy: never alias an input's array


def _uniform(value: np.ndarray) -> bool:
    """Every element has the first one's bits (so -0.0 and 0.0 differ, and NaN is never uniform)."""
    first = value.flat[0]
    return bool((value == first).all() and (value.dtype.kind != "f" or (np.signbit(value) == np.signbit(first)).all()))


def fold_constants(graph: Graph) -> Graph:
    def visit(rb, n: Node):
        if n.op == CONSTANT or n.op == "to_device" or (n.op in PRIMITIVES and PRIMITIVES[n.op].random):
            return rb.copy(n)
        args = rb.args(n)
        nodes = [a for a in args if isinstance(a, Node)]
        if any(a.op != CONSTANT for a in nodes):
            return rb.copy(n)
        size = int(np.prod(n.shape))
        if n.op == "full" and size > 1:  # fusion reads it as a literal: cheaper than any baked array
            return rb.copy(n)
        biggest = max((int(np.prod(a.shape)) for a in nodes), default=1)
        if size > FOLD_LIMIT and size > biggest:
            return rb.copy(n)
        value = _evaluate(n, args)
        if value.size > 1 and _uniform(value):  # all equal (a mean's gradient): a broadcast scalar,
            scalar = rb.new.constant(value.flat[0:1].reshape(()), n.source)  # which kernels read as a literal
            return rb.alias(n, rb.new.call("broadcast_to", (scalar,), {"shape": tuple(n.shape)}, n.aval, n.source))
        return rb.alias(n, rb.new.constant(value, n.source))

    return rebuild(graph, visit)
