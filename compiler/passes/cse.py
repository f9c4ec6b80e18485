"""Common-subexpression elimination: two calls of the same op on the same args and params become one.

Random draws (ops marked ``random`` in the op table) are never merged: each call is a fresh draw. Small constants with
equal bytes are merged too.

    >>> from compiler.passes.testing import dup_graph
    >>> g = dup_graph()            # exp(x) computed twice, added
    >>> cse(g).op_counts()["exp"]
    1
"""

from __future__ import annotations

from compiler.rewrite import rebuild
from eager.backend import to_numpy
from eager.primitives import PRIMITIVES
from tracer.ir import CONSTANT, Graph, Node, map_regions, region_param

_CONSTANT_KEY_LIMIT = 1 << 12  # bytes: bigger constants are compared by identity only


def _scalar_key(a):
    # 1, 1.0 and True hash equal in Python but are different literals (weak typing differs)
    return (type(a).__name__, repr(a))


def _param_key(value):
    # a region's repr names only its label and size: two scans over the same inputs whose bodies return different
    # values (a train step's own scan and the recompute scan of its backward) would merge. Its fingerprint is the
    # whole program.
    return map_regions(value, lambda r, _: (r.label, r.fingerprint())) if region_param(value) else value


def _key(n: Node, args: tuple):
    arg_key = tuple(("node", a.id) if isinstance(a, Node) else _scalar_key(a) for a in args)
    # params may hold slices (unhashable before Python 3.12) and dtypes: repr is exact for all of them
    return (n.op, arg_key, repr(sorted((k, _param_key(v)) for k, v in n.params.items())), str(n.aval))


def cse(graph: Graph) -> Graph:
    seen: dict = {}

    def visit(rb, n: Node):
        if n.op == CONSTANT:
            value = to_numpy(n.value)  # a CUDA trace holds CuPy constants
            if value.nbytes > _CONSTANT_KEY_LIMIT:
                return rb.copy(n)
            key = ("constant", value.dtype.str, value.shape, value.tobytes())
        elif n.op in PRIMITIVES and PRIMITIVES[n.op].random:
            return rb.copy(n)
        else:
            key = _key(n, rb.args(n))
        if key in seen:
            return rb.alias(n, seen[key])
        seen[key] = rb.copy(n)
        return seen[key]

    return rebuild(graph, visit)
