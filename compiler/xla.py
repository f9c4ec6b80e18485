"""XLA backend: the same optimised IR lowered to ``jax.numpy`` through the op table's ``impl`` (with a few
overrides where JAX differs), then ``jax.jit``. Fusion is XLA's here, on the identical graph, so our fusion
can be compared with XLA's.

float64/int64 graphs run under ``jax.enable_x64`` (scoped to the call: the global JAX setting is untouched).

    >>> from compiler.passes.testing import dup_graph
    >>> import numpy as np
    >>> build_xla(dup_graph()).run([np.zeros(4, np.float32)])[0].tolist()
    [2.0, 2.0, 2.0, 2.0]
"""

from __future__ import annotations

import numpy as np

from eager import primitives as P
from eager.backend import to_numpy
from eager.primitives import PRIMITIVES, build_key
from tracer.interpret import Rule, evaluate
from tracer.ir import Graph, Node


def _overrides():
    import jax.numpy as jnp

    def index_add(xp, base, values, *idx, key):
        return base.at[build_key(key, idx)].add(values)

    def index_put(xp, base, values, *idx, key):
        return base.at[build_key(key, idx)].set(values)

    # gather, scatter and scatter_add as JAX scatters: jitted, they cannot check the index values (eager does)
    def gather(xp, a, index, *, axis):
        return a[P.grid_key(jnp, index, axis)]

    def scatter_add(xp, a, index, src, *, axis):
        return a.at[P.grid_key(jnp, index, axis)].add(src[P.leading(index.shape)])

    def scatter(xp, a, index, src, *, axis):
        # the last write lands, as in eager: each position takes the value of the highest-numbered write to it
        # (a scatter-max of write numbers; JAX leaves the order of repeated ``.set`` writes unspecified)
        if not index.size:
            return a
        pos = P.flat_positions(jnp, a.shape, index, axis).reshape(-1)
        order = jnp.arange(pos.size)
        last = jnp.full(a.size, -1, order.dtype).at[pos].max(order)
        values = src[P.leading(index.shape)].reshape(-1)[jnp.maximum(last, 0)]
        return jnp.where(last >= 0, values, a.reshape(-1)).reshape(a.shape)

    def unfold(xp, a, *, dimension, size, step):
        if not a.ndim:
            return jnp.reshape(a, (1,))[:size]
        count = (a.shape[dimension] - size) // step + 1
        windows = jnp.take(a, jnp.asarray(P.unfold_positions(count, size, step)), axis=dimension)
        return jnp.moveaxis(windows, dimension + 1, -1)  # [..., count, size, ...] -> [..., count, ..., size]

    def unsupported(name):
        def impl(*a, **k):
            raise NotImplementedError(f"xla backend: {name} draws from graphduel's generator; it cannot be "
                                      "jitted. Pass random tensors in as inputs instead.")
        return impl

    random = {name: unsupported(name) for name, prim in PRIMITIVES.items() if prim.random}
    return random | {
        "index_add": index_add,
        "index_put": index_put,
        "gather": gather,
        "scatter": scatter,
        "scatter_add": scatter_add,
        "unfold": unfold,
        "copy": lambda xp, a: a,
        "to_device": lambda xp, a, *, device: a,
        "full": lambda xp, *, shape, fill_value, dtype, device: jnp.full(shape, fill_value, dtype),
    }


class _JaxRule(Rule):
    """Each node as ``jax.numpy``: the table's impl with ``jnp`` as the namespace, or the override."""

    def __init__(self, overrides: dict):
        self.overrides = overrides

    def constant(self, node: Node):
        import jax.numpy as jnp
        return jnp.asarray(to_numpy(node.value))

    def call(self, node: Node, args: list):
        import jax.numpy as jnp
        impl = self.overrides.get(node.op) or PRIMITIVES[node.op].impl
        out = impl(jnp, *args, **node.params)
        return out.astype(node.dtype) if out.dtype != node.dtype else out


class XlaExecutable:
    backend = "xla"

    def __init__(self, graph: Graph, device: str = "cpu"):
        import jax
        self.graph = graph
        self.kernels = []
        overrides = _overrides()
        wide = any(n.dtype.itemsize == 8 for n in graph.nodes)
        self._x64 = wide

        rule = _JaxRule(overrides)

        def program(*arrays):
            return evaluate(graph, arrays, rule)

        self._jitted = jax.jit(program)

    def run(self, arrays: list) -> list:
        import jax
        with jax.enable_x64(self._x64):
            out = self._jitted(*arrays)
            return [np.asarray(o) for o in out]

    __call__ = run


def build_xla(graph: Graph, device: str = "cpu") -> XlaExecutable:
    return XlaExecutable(graph, device)
