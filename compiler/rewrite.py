"""Rebuilding graphs: passes never edit a Graph, they copy it node by node into a new one.

``Rebuilder`` walks the old graph in order; a pass decides for each node whether to copy it, alias it to a
value already in the new graph, or emit new nodes. Placeholders are always kept, in order, because the
executable's ``run(arrays)`` takes one array per placeholder.

    >>> from tracer.ir import Graph
    >>> from eager.primitives import Aval
    >>> import numpy as np
    >>> g = Graph(); x = g.placeholder("x", Aval((2,), np.dtype("float32")))
    >>> g.outputs.append(x)
    >>> rebuild(g, lambda rb, n: rb.copy(n)).outputs[0].name
    'x'
"""

from __future__ import annotations

from collections.abc import Callable

from tracer.interpret import Rule, evaluate
from tracer.ir import CONSTANT, PLACEHOLDER, Graph, Node


class Rebuilder:
    """Copies nodes from ``old`` into a fresh graph, remembering old id -> new node."""

    def __init__(self, old: Graph):
        self.old = old
        self.new = Graph()
        self.env: dict[int, Node] = {}

    def arg(self, a):
        return self.env[a.id] if isinstance(a, Node) else a

    def args(self, n: Node) -> tuple:
        return tuple(self.arg(a) for a in n.args)

    def copy(self, n: Node) -> Node:
        """Copy ``n`` with its args remapped; records and returns the new node."""
        if n.op == PLACEHOLDER:
            new = self.new.placeholder(n.name, n.aval, n.role)
        elif n.op == CONSTANT:
            new = self.new.constant(n.value, n.source)
        else:
            new = self.new.call(n.op, self.args(n), n.params, n.aval, n.source)
        self.env[n.id] = new
        return new

    def alias(self, n: Node, target: Node) -> Node:
        """Make every later reader of ``n`` read ``target`` (a node already in the new graph)."""
        self.env[n.id] = target
        return target

    def finish(self) -> Graph:
        self.new.outputs = [self.env[n.id] for n in self.old.outputs]
        self.new.updates = [(self.env[p.id], self.env[v.id]) for p, v in self.old.updates]
        return self.new


class _VisitRule(Rule):
    """Passes as a rule of the one IR loop: the value of an old node is its node in the new graph."""

    def __init__(self, rb: Rebuilder, visit: Callable[[Rebuilder, Node], object]):
        self.rb, self.visit = rb, visit

    def placeholder(self, node: Node, value) -> Node:
        return self.rb.copy(node)

    def constant(self, node: Node) -> Node | None:
        return self.call(node, [])

    def call(self, node: Node, args: list) -> Node | None:
        self.visit(self.rb, node)  # the pass reads its args through rb.arg, which knows aliases
        return self.rb.env.get(node.id)


def rebuild(graph: Graph, visit: Callable[[Rebuilder, Node], object]) -> Graph:
    """Run ``visit(rebuilder, node)`` for each node in order and return the new, validated graph."""
    rb = Rebuilder(graph)
    evaluate(graph, [None] * len(graph.placeholders), _VisitRule(rb, visit), keep=True)
    return rb.finish().validate()
