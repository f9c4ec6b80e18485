"""The static executor: run a Graph on arrays, with no autograd and no Python of the traced function.

``StaticExecutor(graph).run(arrays)`` takes one array per placeholder (in ``graph.placeholders`` order) and
returns the arrays of ``graph.outputs`` followed by the new values of ``graph.updates``. This is the
contract every lowering honours (``tracer.trace(..., lower=L)`` with ``L(graph) -> executable``); the static
executor is the default ``L``.

Two interpreters of the same graph:

- the fast path runs the generated source (``tracer.codegen``): straight-line calls of primitive impls with
  values deleted after their last use;
- ``Interpreter`` runs the graph through the one IR loop (same calls, same frees). It can keep every value
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
from tracer.interpret import Rule, evaluate
from tracer.ir import CONSTANT, Graph, Node

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


class GeneratedCodeError(RuntimeError):
    """The generated Python failed where the interpreter of the same graph did not: a bug in our codegen."""


class _ImplRule(Rule):
    """Runs each primitive's ``impl`` on arrays; a failure names the node, its inputs and its source line."""

    def __init__(self, xp, mixed: bool):
        self.xp, self.mixed = xp, mixed

    def call(self, node: Node, args: list):
        xp = self.xp
        try:
            if self.mixed:  # two devices: the namespace comes from the inputs, as in eager
                first = next((a for a, n in zip(args, node.args) if isinstance(n, Node)), None)
                xp = namespace_of(first) if first is not None else namespace(node.params.get("device", "cpu"))
            out = PRIMITIVES[node.op].impl(xp, *args, **node.params)
        except Exception as e:
            raise ExecutionError(_failure(node, args, e)) from e
        return np.asarray(out) if xp is np and type(out) is not np.ndarray else out


class Interpreter:
    """The graph run through the one IR loop (``tracer.interpret.evaluate``) on primitive impls.

    ``run(arrays, keep=True)`` also returns every node's value (``check()`` compares them with an eager run).
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.mixed = any(n.op == "to_device" for n in graph.nodes)

    def run(self, arrays: list, keep: bool = False):
        """Outputs + update values; with ``keep=True`` a pair (results, {node id: value})."""
        graph = self.graph
        n_inputs = len(graph.placeholders)
        if len(arrays) != n_inputs:
            raise ExecutionError(f"the graph takes {n_inputs} placeholder arrays "
                                 f"({', '.join(n.name for n in graph.placeholders)}), got {len(arrays)}")
        return evaluate(graph, arrays, _ImplRule(_xp_for(arrays, graph), self.mixed), keep=keep)


def _failure(node: Node, args: list, exc: Exception) -> str:
    shapes = ", ".join(f"{getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', ()))}" if isinstance(a, Node) else repr(v)
                       for a, v in zip(node.args, args))
    where = f"    # {node.source}" if node.source else ""
    return (f"while executing {node.format()}: {type(exc).__name__}: {exc} (inputs: {shapes}){where}. "
            "The graph was traced with other inputs: check the call's shapes and dtypes against traced.graph.")


class StaticExecutor:
    """The default lowering: runs the generated source. When it raises, the interpreter re-runs the graph only to
    explain the failure (``ExecutionError`` naming the node); it never stands in for the generated source."""

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
        except MemoryError:  # out of memory (CuPy's OutOfMemoryError too): no node to blame, nothing to re-run
            raise
        except Exception as e:
            # a primitive failed on these inputs: the interpreter runs the same calls and names the node
            self.interpreter.run(arrays)
            raise GeneratedCodeError(
                f"the generated source of this graph ({len(self.graph.calls)} calls) raised "
                f"{type(e).__name__}: {e}, but the interpreter ran the same graph on the same arrays without "
                "error: a bug in tracer.codegen (please report it with traced.graph and this message)") from e


def default_lower(graph: Graph) -> StaticExecutor:
    """``lower`` used when ``trace`` is given none."""
    return StaticExecutor(graph)
