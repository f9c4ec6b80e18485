"""XLA backend: the same optimised IR lowered to ``jax.numpy`` through the op table's ``impl`` (with a few
overrides where JAX differs), then ``jax.jit``. Fusion is XLA's here, on the identical graph, so our fusion
can be compared with XLA's.

Control flow stays in the one jitted program: ``cond`` becomes ``jax.lax.cond``, ``while_loop`` becomes
``jax.lax.while_loop`` and ``scan`` becomes ``jax.lax.scan``, each region evaluated by this same rule through
``tracer.interpret.evaluate`` (so a region nested in a region nests a ``lax`` op in a ``lax`` op). Nothing is
decided on the host: unlike the C and CUDA backends, no region is compiled on its own, and XLA's passes, not
ours, optimise inside the regions.

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
from tracer.ir import Graph, Node, regions_of


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
        control = CONTROL.get(node.op)
        if control is not None:
            return control(self, node, args)
        impl = self.overrides.get(node.op) or PRIMITIVES[node.op].impl
        out = impl(jnp, *args, **node.params)
        return out.astype(node.dtype) if out.dtype != node.dtype else out

    def region(self, region, arrays) -> tuple:
        """A region's outputs as a tuple (what ``lax`` wants back from a branch or a body)."""
        return tuple(evaluate(region.graph, list(arrays), self))


# ---------------------------------------------------------------- control flow as jax.lax


def _lax_cond(rule: _JaxRule, node: Node, args: list) -> tuple:
    import jax
    pred, operands = args[0], args[1:]
    true, false = node.params["branches"]
    return jax.lax.cond(pred, lambda *ops: rule.region(true, ops), lambda *ops: rule.region(false, ops), *operands)


def _lax_while(rule: _JaxRule, node: Node, args: list) -> tuple:
    import jax
    n = node.params["n_carry"]
    cond_region, body_region = node.params["cond_region"], node.params["body_region"]
    consts = tuple(args[n:])  # captures: read by every trip, never carried
    return jax.lax.while_loop(lambda carry: rule.region(cond_region, carry + consts)[0],
                              lambda carry: rule.region(body_region, carry + consts), tuple(args[:n]))


def _lax_scan(rule: _JaxRule, node: Node, args: list) -> tuple:
    import jax
    import jax.numpy as jnp
    p = node.params
    n_carry, n_xs, dim = p["n_carry"], p["n_xs"], p["dim"]
    carry, consts = tuple(args[:n_carry]), tuple(args[n_carry + n_xs:])
    xs = tuple(jnp.moveaxis(s, dim, 0) for s in args[n_carry:n_carry + n_xs])  # lax.scan steps along axis 0

    def step(c, x):
        out = rule.region(p["body"], c + x + consts)
        return out[:n_carry], out[n_carry:]
    final, ys = jax.lax.scan(step, carry, xs, length=p["length"], reverse=p["reverse"])
    return tuple(final) + tuple(jnp.moveaxis(y, 0, dim) for y in ys)  # ys stacked along dim, as eager stacks them


def _result(rule: _JaxRule, node: Node, args: list):
    return args[0][node.params["index"]]


CONTROL = {"cond": _lax_cond, "while_loop": _lax_while, "scan": _lax_scan, "result": _result}
"""Nodes that are not one ``jax.numpy`` call: control-flow ops (several results, as a tuple) and ``result``
(picks one of them)."""


def _wide(graph: Graph) -> bool:
    """Whether any value, inside regions too, is 8 bytes wide (float64/int64: the program needs x64)."""
    for n in graph.nodes:
        regions = regions_of(n)
        if regions:
            if any(_wide(r.graph) for r in regions):
                return True
        elif n.dtype is not None and n.dtype.itemsize == 8:
            return True
    return False


class XlaExecutable:
    backend = "xla"

    def __init__(self, graph: Graph, device: str = "cpu"):
        import jax
        self.graph = graph
        self.kernels = []
        overrides = _overrides()
        self._x64 = _wide(graph)

        rule = _JaxRule(overrides)

        def program(*arrays):
            return evaluate(graph, arrays, rule)

        self._program = program
        self._jitted = jax.jit(program)

    def jaxpr(self, arrays: list) -> str:
        """The program JAX traces from the graph, as text: one jaxpr, control flow included (``cond``,
        ``while``, ``scan`` equations with their bodies), for reading what XLA is given."""
        import jax
        with jax.enable_x64(self._x64):
            return str(jax.make_jaxpr(self._program)(*arrays))

    def run(self, arrays: list) -> list:
        import jax
        with jax.enable_x64(self._x64):
            out = self._jitted(*arrays)
            return [np.asarray(o) for o in out]

    __call__ = run


def build_xla(graph: Graph, device: str = "cpu") -> XlaExecutable:
    return XlaExecutable(graph, device)
