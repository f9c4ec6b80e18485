"""The static executor: run a Graph on arrays, with no autograd and no Python of the traced function.

``StaticExecutor(graph).run(arrays)`` takes one array per placeholder (in ``graph.placeholders`` order) and
returns the arrays of ``graph.outputs`` followed by the new values of ``graph.updates``. This is the
contract every lowering honours (``tracer.trace(..., lower=L)`` with ``L(graph) -> executable``); the static
executor is the default ``L``.

Two interpreters of the same graph:

- the fast path runs the generated source (``tracer.codegen``): straight-line calls of primitive impls with
  values deleted after their last use;
- ``Interpreter`` walks a precomputed instruction list (same calls, same frees). It can keep every value
  (``check()`` compares them with an eager run) and it names the failing node: when the fast path raises,
  the interpreter re-runs the graph to report ``while executing %5 = matmul(...)  # model.py:14``.

    >>> import numpy as np
    >>> from eager.backend import float32
    >>> from eager.primitives import Aval
    >>> from tracer.ir import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", Aval((2,), float32))
    >>> g.outputs.append(g.call("mul", (x, 3.0), {}, Aval((2,), float32)))
    >>> StaticExecutor(g).run([np.ones(2, np.float32)])[0].tolist()
    [3.0, 3.0]
"""

from __future__ import annotations

import itertools

import numpy as np

from eager.backend import namespace, namespace_of
from eager.primitives import PRIMITIVES
from tracer.codegen import compile_source, python_source
from tracer.ir import CONSTANT, PLACEHOLDER, Graph, Node

_COUNTER = itertools.count()


class ExecutionError(RuntimeError):
    """A primitive failed while running a static graph; the message names the node and its source line."""


def _xp_for(arrays, graph: Graph):
    if arrays:
        first = arrays[0]
        return np if type(first) is np.ndarray else namespace_of(first)
    for n in graph.nodes:
        if n.op == CONSTANT and type(n.value) is not np.ndarray and hasattr(n.value, "__cuda_array_interface__"):
            return namespace_of(n.value)
    return np


class Interpreter:
    """Walks the graph's instruction list; ``run(arrays, keep=True)`` also returns every node's value."""

    def __init__(self, graph: Graph):
        self.graph = graph
        nodes = graph.nodes
        slot = {n.id: i for i, n in enumerate(nodes)}
        last = graph.last_uses()
        frees: dict[int, list[int]] = {}
        for node_id, at in last.items():
            if at < len(nodes):
                frees.setdefault(at, []).append(slot[node_id])
        self.placeholder_slots = [slot[n.id] for n in graph.placeholders]
        self.instructions = []
        for i, n in enumerate(nodes):
            if n.op == PLACEHOLDER:
                continue
            if n.op == CONSTANT:
                self.instructions.append((None, n.value, (), {}, i, frees.get(i, ()), n))
                continue
            args = tuple((True, slot[a.id]) if isinstance(a, Node) else (False, a) for a in n.args)
            self.instructions.append((PRIMITIVES[n.op].impl, None, args, n.params, i, frees.get(i, ()), n))
        self.result_slots = [slot[n.id] for n in graph.outputs] + [slot[v.id] for _, v in graph.updates]
        self.mixed = any(n.op == "to_device" for n in nodes)  # two devices: xp per call from its inputs

    def run(self, arrays: list, keep: bool = False):
        """Outputs + update values; with ``keep=True`` a pair (results, {node id: value})."""
        graph = self.graph
        if len(arrays) != len(self.placeholder_slots):
            raise ExecutionError(f"the graph takes {len(self.placeholder_slots)} placeholder arrays "
                                 f"({', '.join(n.name for n in graph.placeholders)}), got {len(arrays)}")
        xp = _xp_for(arrays, graph)
        env: list = [None] * len(graph.nodes)
        for s, a in zip(self.placeholder_slots, arrays):
            env[s] = a
        seen = {} if keep else None
        for impl, value, args, params, out, frees, node in self.instructions:
            if impl is None:
                env[out] = value
            else:
                try:
                    if self.mixed:
                        first = next((env[x] for is_ref, x in args if is_ref), None)
                        xp = namespace_of(first) if first is not None else namespace(params.get("device", "cpu"))
                    env[out] = impl(xp, *[env[x] if is_ref else x for is_ref, x in args], **params)
                except Exception as e:
                    raise ExecutionError(_failure(node, args, env, e)) from e
                if type(env[out]) is not np.ndarray and xp is np:
                    env[out] = np.asarray(env[out])
            if keep:
                seen[node.id] = env[out]
            else:
                for f in frees:
                    env[f] = None
        results = [env[s] for s in self.result_slots]
        return (results, seen) if keep else results


def _failure(node: Node, args, env, exc) -> str:
    shapes = ", ".join(f"{getattr(env[x], 'dtype', '?')}{list(getattr(env[x], 'shape', ()))}" if is_ref else repr(x)
                       for is_ref, x in args)
    where = f"    # {node.source}" if node.source else ""
    return (f"while executing {node.format()}: {type(exc).__name__}: {exc} (inputs: {shapes}){where}. "
            "The graph was traced with other inputs: check the call's shapes and dtypes against traced.graph.")


class StaticExecutor:
    """The default lowering: runs the generated source; falls back to the interpreter to explain a failure."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.constants: dict = {}
        self.source = python_source(graph, self.constants)
        self._forward = compile_source(self.source, f"{next(_COUNTER)} ({len(graph.calls)} calls)")
        self._interpreter = None

    @property
    def interpreter(self) -> Interpreter:
        if self._interpreter is None:
            self._interpreter = Interpreter(self.graph)
        return self._interpreter

    def run(self, arrays: list) -> list:
        xp = np if (arrays and type(arrays[0]) is np.ndarray) else _xp_for(arrays, self.graph)
        try:
            return self._forward(xp, self.constants, *arrays)
        except Exception:
            return self.interpreter.run(arrays)  # raises ExecutionError naming the node, or succeeds


def default_lower(graph: Graph) -> StaticExecutor:
    """``lower`` used when ``trace`` is given none."""
    return StaticExecutor(graph)
