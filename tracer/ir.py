"""The static IR: a Graph of Nodes in SSA form, printed like a program.

Every node produces one value named ``%N``. A node is one of:

- ``placeholder``: a graph input; ``role`` says which kind: ``input`` (a call argument), ``param``
  (a module parameter or buffer, lifted to a named input instead of a baked constant) or ``state``
  (optimizer state and other tensors the traced code read and may update);
- ``constant``: an array baked into the graph (``value``);
- a primitive name from ``eager.primitives.PRIMITIVES``, with ``args`` (nodes or Python scalars) and
  static ``params``.

``outputs`` are the values returned to the caller; ``updates`` pairs a placeholder (usually param/state; an
input when the function modifies an argument in place) with the node holding its new value (old state in, new
state out: how a traced training step stays functional).

    >>> g = Graph()
    >>> x = g.placeholder("x", Aval((2, 3), float32))
    >>> y = g.call("exp", (x,), {}, Aval((2, 3), float32), source="model.py:3")
    >>> g.outputs.append(y)
    >>> print(g)
    graph(%0: f32[2,3] x):
      %1: f32[2,3] = exp(%0)    # model.py:3
      return (%1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from eager.backend import (
    float32,  # noqa: F401  (used by the doctest above)
    to_numpy,
)
from eager.control import Results
from eager.primitives import PRIMITIVES, Aval, IndexSlot, ShapeError, format_key

PLACEHOLDER, CONSTANT = "placeholder", "constant"
ROLES = ("input", "param", "state")


class GraphError(ValueError):
    """The graph is malformed; the message names the first bad node and its source line."""


class Node:
    """One SSA value. Treat as immutable once the graph is built: passes make new graphs."""

    __slots__ = ("id", "op", "args", "params", "aval", "source", "name", "role", "value")

    def __init__(self, id: int, op: str, args: tuple = (), params: dict | None = None, aval: Aval | None = None,
                 source: str | None = None, name: str | None = None, role: str | None = None, value=None):
        self.id = id
        self.op = op
        self.args = tuple(args)
        self.params = params or {}
        self.aval = aval
        self.source = source
        self.name = name
        self.role = role
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self.aval.shape

    @property
    def dtype(self) -> np.dtype:
        return self.aval.dtype

    @property
    def ref(self) -> str:
        return f"%{self.id}"

    @property
    def inputs(self) -> list[Node]:
        """The nodes this node reads (its non-scalar args)."""
        return [a for a in self.args if isinstance(a, Node)]

    def format(self) -> str:
        """One line of the program: ``%3: f32[64,256] = add(%1, %2)    # model.py:14``."""
        head = f"{self.ref}: {self.aval}"
        if self.op == PLACEHOLDER:
            return f"{head} {self.name}"
        if self.op == CONSTANT:
            body = f"constant({_format_constant(self.value)})"
        else:
            parts = [_format_arg(a) for a in self.args]
            parts += [f"{k}={_format_param(k, v)}" for k, v in self.params.items()]
            body = f"{self.op}({', '.join(parts)})"
        line = f"{head} = {body}"
        return f"{line}    # {self.source}" if self.source else line

    def __repr__(self) -> str:
        return f"<Node {self.format()}>"


def _format_arg(a) -> str:
    return a.ref if isinstance(a, Node) else repr(a)


def _is_region(v) -> bool:
    return hasattr(v, "graph") and hasattr(v, "label")  # tracer.regions.Region (imported there, not here)


def region_param(value) -> bool:
    """Whether a param holds regions: a region, or a non-empty tuple of them (cond's branches)."""
    return _is_region(value) or (type(value) is tuple and bool(value) and all(_is_region(v) for v in value))


def map_regions(value, fn):
    """A region param with ``fn(region, index)`` applied to each region (index None for a lone region, its position
    in the tuple otherwise): the one place that knows how params hold regions."""
    if _is_region(value):
        return fn(value, None)
    return tuple(fn(v, i) for i, v in enumerate(value))


def regions_of(node: Node) -> list:
    """The regions (sub-graphs) of a control-flow node, in its params' order; [] for every other node."""
    out: list = []
    for value in node.params.values():
        if region_param(value):
            map_regions(value, lambda region, _: out.append(region))
    return out


def _format_param(key: str, value) -> str:
    if region_param(value):  # printed below its node
        labels = map_regions(value, lambda region, _: region.label)
        return labels if isinstance(labels, str) else "(" + ", ".join(labels) + ")"
    if key == "key":
        return format_key(value)
    if isinstance(value, np.dtype):
        return str(value)
    return repr(value)


def _format_constant(value) -> str:
    arr = np.asarray(value)
    if arr.size <= 4:
        return np.array2string(arr, separator=", ", precision=4)
    return f"<{arr.size} values>"


class Graph:
    """A static program: placeholders, constants and primitive calls in topological order."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.outputs: list[Node] = []
        self.updates: list[tuple[Node, Node]] = []
        self._next_id = 0

    # ------------------------------------------------------------ building
    def _add(self, node: Node) -> Node:
        self.nodes.append(node)
        self._next_id = max(self._next_id, node.id + 1)
        return node

    def placeholder(self, name: str, aval: Aval, role: str = "input") -> Node:
        if role not in ROLES:
            raise GraphError(f"placeholder {name!r}: role must be one of {ROLES}, got {role!r}")
        return self._add(Node(self._next_id, PLACEHOLDER, aval=aval, name=name, role=role))

    def constant(self, value, source: str | None = None) -> Node:
        arr = np.asarray(value) if isinstance(value, np.ndarray) or np.isscalar(value) else value
        return self._add(Node(self._next_id, CONSTANT, aval=Aval(tuple(arr.shape), arr.dtype), source=source,
                              value=arr))

    def call(self, op: str, args: Iterable, params: dict, aval: Aval, source: str | None = None) -> Node:
        return self._add(Node(self._next_id, op, tuple(args), dict(params), aval, source))

    # ------------------------------------------------------------ views
    @property
    def placeholders(self) -> list[Node]:
        return [n for n in self.nodes if n.op == PLACEHOLDER]

    def inputs_with_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.op == PLACEHOLDER and n.role == role]

    @property
    def calls(self) -> list[Node]:
        """The primitive calls (no placeholders, no constants)."""
        return [n for n in self.nodes if n.op not in (PLACEHOLDER, CONSTANT)]

    def users(self) -> dict[int, list[Node]]:
        """For each node id, the nodes that read it."""
        out: dict[int, list[Node]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for a in n.inputs:
                out[a.id].append(n)
        return out

    def last_uses(self) -> dict[int, int]:
        """For each node id, the index (in ``nodes``) of the last node reading it; outputs live forever."""
        last = {}
        for i, n in enumerate(self.nodes):
            for a in n.inputs:
                last[a.id] = i
        for n in self.outputs + [v for _, v in self.updates]:
            last[n.id] = len(self.nodes)
        return last

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.calls:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def fingerprint(self) -> str:
        """A hash of the program: ops, params, types, names, roles, constants' bytes (source lines excluded).

        Two traces that recorded the same program have the same fingerprint (and can share one executable).
        """
        import hashlib
        h = hashlib.sha1()
        for n in self.nodes:
            line = f"{n.ref}:{n.aval}:{n.op}:{n.name}:{n.role}:" + ",".join(_format_arg(a) for a in n.args)
            line += ":" + ",".join(f"{k}={_format_param(k, v)}" for k, v in n.params.items())
            h.update(line.encode())
            if n.op == CONSTANT:
                h.update(np.ascontiguousarray(to_numpy(n.value)).tobytes())
            for region in regions_of(n):
                h.update(f"{region.label}:{region.graph.fingerprint()}".encode())
        h.update(("out:" + ",".join(n.ref for n in self.outputs)).encode())
        h.update(("upd:" + ",".join(f"{p.ref}<-{v.ref}" for p, v in self.updates)).encode())
        return h.hexdigest()

    # ------------------------------------------------------------ printing
    def __str__(self) -> str:
        return "\n".join(self._lines("graph"))

    def _lines(self, head: str, indent: str = "") -> list[str]:
        """The program's lines; a control-flow node's regions follow it, indented, each headed by its label."""
        heads = ", ".join(f"{n.ref}: {n.aval} {n.name}" for n in self.placeholders)
        lines = [f"{indent}{head}({heads}):"]
        for n in self.nodes:
            if n.op != PLACEHOLDER:
                lines.append(f"{indent}  {n.format()}")
                for region in regions_of(n):
                    lines += region.graph._lines(region.label, indent + "      ")
        lines.append(f"{indent}  return (" + ", ".join(n.ref for n in self.outputs) + ")")
        lines += [f"{indent}  update {p.name} <- {v.ref}" for p, v in self.updates]
        return lines

    __repr__ = __str__

    def table(self):
        """The graph as a pandas DataFrame: one row per node."""
        import pandas as pd
        rows = [{"id": n.ref, "op": n.op, "args": ", ".join(_format_arg(a) for a in n.args),
                 "params": ", ".join(f"{k}={_format_param(k, v)}" for k, v in n.params.items()),
                 "shape": list(n.shape), "dtype": str(n.dtype), "name": n.name or "", "source": n.source or ""}
                for n in self.nodes]
        return pd.DataFrame(rows)

    def print_tabular(self) -> None:
        print(self.table().to_string(index=False))

    def to_dot(self) -> str:
        """Graphviz DOT text: placeholders as boxes, constants as notes, ops as ellipses."""
        lines = ["digraph graph_ir {", "  rankdir=TB;", '  node [fontname="monospace", fontsize=10];']
        shapes = {PLACEHOLDER: "box", CONSTANT: "note"}
        for n in self.nodes:
            label = f"{n.ref} {n.name or n.op}\\n{n.aval}"
            lines.append(f'  n{n.id} [label="{label}", shape={shapes.get(n.op, "ellipse")}];')
            for a in n.inputs:
                lines.append(f"  n{a.id} -> n{n.id};")
        for i, n in enumerate(self.outputs):
            lines.append(f'  out{i} [label="output {i}", shape=doublecircle];')
            lines.append(f"  n{n.id} -> out{i};")
        lines.append("}")
        return "\n".join(lines)

    # ------------------------------------------------------------ checking
    def validate(self) -> Graph:
        """Check SSA order, known ops and every node's shape/dtype against its primitive's rule.

        Raises ``GraphError`` naming the first bad node (with its source line); returns the graph if sound.
        """
        defined: set[int] = set()
        for n in self.nodes:
            if n.id in defined:
                raise GraphError(f"node {n.ref} is defined twice: {n.format()}")
            for a in n.inputs:
                if a.id not in defined:
                    raise GraphError(f"node {n.ref} reads {a.ref} before it is defined: {n.format()}")
            if n.op not in (PLACEHOLDER, CONSTANT):
                prim = PRIMITIVES.get(n.op)
                if prim is None:
                    raise GraphError(f"node {n.ref} calls unknown primitive {n.op!r}: {n.format()}")
                avals = [a.aval if isinstance(a, Node) else a for a in n.args]
                try:
                    expected = prim.shape_rule(*avals, **n.params)
                except ShapeError as e:
                    raise GraphError(f"node {n.ref} is ill-typed ({e}): {n.format()}") from None
                if isinstance(expected, Results) or isinstance(n.aval, Results):  # a control-flow node's results
                    if tuple(expected) != tuple(n.aval):
                        raise GraphError(f"node {n.ref} records {n.aval} but its regions give {expected}: "
                                         f"{n.format()}")
                elif tuple(expected.shape) != tuple(n.shape) or expected.dtype != n.dtype:
                    raise GraphError(f"node {n.ref} records {n.aval} but {n.op} gives {Aval(*expected)} for "
                                     f"these inputs: {n.format()}")
            defined.add(n.id)
        for n in self.outputs:
            if n.id not in defined:
                raise GraphError(f"output {n.ref} is not a node of this graph")
        for p, v in self.updates:
            if p.op != PLACEHOLDER:
                raise GraphError(f"update target {p.ref} must be a placeholder (an input, param or state)")
            if p.aval != v.aval:
                raise GraphError(f"update {p.name} <- {v.ref}: new value {v.aval} does not match the state {p.aval}")
        return self


def index_slot_positions(key) -> list[int]:
    """Positions of index tensors inside a getitem key (helper for passes and serialization)."""
    return [k.position for k in key if isinstance(k, IndexSlot)]


def map_args(args: tuple, env: dict[int, Any]) -> list:
    """Replace node args by their values in ``env`` (scalars pass through)."""
    return [env[a.id] if isinstance(a, Node) else a for a in args]
