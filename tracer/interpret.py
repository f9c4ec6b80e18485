"""The one loop over the IR. Every consumer of a ``Graph`` is this loop with its own ``Rule``.

As in autodidax's ``eval_jaxpr`` and torch.fx's ``Interpreter``: an environment maps each node to a value, the
loop walks the nodes in order, asks the rule for each node's value given its arguments' values, and frees a
value after its last reader. What a "value" is belongs to the rule:

- the static executor's rule runs primitive impls on arrays (``tracer.executor``);
- ``tracer.grad`` replays through eager ``apply`` on tensors, so autograd (and a trace) sees every call;
- Python codegen returns variable names and writes one line per node (``tracer.codegen``);
- save returns a reference to the node and collects its JSON entry (``tracer.serialization``);
- passes return nodes of a new graph (``compiler.rewrite``); the XLA backend runs ``jax.numpy`` (``compiler.xla``).

Regions of control-flow nodes recurse through this same loop.

    >>> import numpy as np
    >>> from eager.backend import float32
    >>> from eager.primitives import Aval
    >>> from tracer.ir import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", Aval((2,), float32))
    >>> g.outputs.append(g.call("mul", (x, 3.0), {}, Aval((2,), float32)))
    >>> class Show(Rule):
    ...     def call(self, node, args):
    ...         return f"{node.op}({', '.join(map(str, args))})"
    >>> evaluate(g, ["x"], Show())
    ['mul(x, 3.0)']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracer.ir import CONSTANT, PLACEHOLDER, Graph, GraphError, Node


class Rule:
    """What one interpretation does at each kind of node. Override ``call``; the others have defaults."""

    def placeholder(self, node: Node, value: Any) -> Any:
        """The value of a placeholder, given the input fed for it (default: the input itself)."""
        return value

    def constant(self, node: Node) -> Any:
        """The value of a constant node (default: its array)."""
        return node.value

    def call(self, node: Node, args: list) -> Any:
        """The value of a primitive call; ``args`` are the values of ``node.args`` (scalars pass through)."""
        raise NotImplementedError(f"{type(self).__name__} has no rule for primitive calls ({node.op})")

    def free(self, nodes: list[Node]) -> None:
        """Called with the nodes whose values die after the node just evaluated (default: nothing to do)."""


def free_schedule(graph: Graph) -> dict[int, list[Node]]:
    """For each position in ``graph.nodes``, the nodes last read there (outputs and update values never die)."""
    last = graph.last_uses()
    dying: dict[int, list[Node]] = {}
    for n in graph.nodes:
        at = last.get(n.id)
        if at is not None and at < len(graph.nodes):
            dying.setdefault(at, []).append(n)
    return dying


def evaluate(graph: Graph, inputs: Sequence, rule: Rule, *, keep: bool = False):
    """Run ``rule`` over ``graph`` with one input per placeholder (in ``graph.placeholders`` order).

    Returns the values of ``graph.outputs`` followed by those of the updates' new values; with ``keep=True``,
    the pair ``(results, {node id: value})`` with every node's value (nothing is freed).
    """
    n_placeholders = sum(n.op == PLACEHOLDER for n in graph.nodes)
    if len(inputs) != n_placeholders:
        names = ", ".join(n.name or n.ref for n in graph.placeholders)
        raise GraphError(f"the graph takes {n_placeholders} placeholder values ({names}), got {len(inputs)}")
    dying = {} if keep else free_schedule(graph)
    env: dict[int, Any] = {}
    feed = iter(inputs)
    for i, n in enumerate(graph.nodes):
        if n.op == PLACEHOLDER:
            env[n.id] = rule.placeholder(n, next(feed))
        elif n.op == CONSTANT:
            env[n.id] = rule.constant(n)
        else:
            env[n.id] = rule.call(n, [env[a.id] if isinstance(a, Node) else a for a in n.args])
        dead = dying.get(i)
        if dead:
            rule.free(dead)
            for d in dead:
                del env[d.id]
    results = [env[n.id] for n in graph.outputs] + [env[v.id] for _, v in graph.updates]
    return (results, env) if keep else results
