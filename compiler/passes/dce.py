"""Dead-code elimination: drop calls and constants that no output or state update reads.

Placeholders stay (one array per placeholder is the executable's calling convention).

    >>> from compiler.passes.testing import tiny_graph
    >>> g = tiny_graph()           # y = exp(x); an unused sin(x) too
    >>> len(dce(g).calls)
    1
"""

from __future__ import annotations

from compiler.rewrite import rebuild
from tracer.ir import Graph


def live_ids(graph: Graph) -> set[int]:
    """Ids of nodes an output or update depends on."""
    live: set[int] = set()
    stack = list(graph.outputs) + [v for _, v in graph.updates]
    while stack:
        n = stack.pop()
        if n.id in live:
            continue
        live.add(n.id)
        stack.extend(n.inputs)
    return live


def dce(graph: Graph) -> Graph:
    live = live_ids(graph)
    return rebuild(graph, lambda rb, n: rb.copy(n) if n.id in live else None)
