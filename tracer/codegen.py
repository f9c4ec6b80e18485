"""Generate readable Python source from a Graph (torch.fx style): one line per primitive call.

The source defines ``forward(xp, constants, *placeholders)``; ``xp`` is the array namespace (numpy or cupy),
``constants`` maps constant node ids to arrays. It returns the graph's outputs followed by the new values of
its updates. Each call is a primitive's ``impl`` from ``eager.primitives`` (``P.<name>(xp, *arrays,
**params)``) and values are deleted after their last use. The static executor runs this very source.

    >>> import numpy as np
    >>> from eager.backend import float32
    >>> from eager.primitives import Aval
    >>> from tracer.ir import Graph
    >>> g = Graph()
    >>> x = g.placeholder("x", Aval((2,), float32))
    >>> g.outputs.append(g.call("exp", (x,), {}, Aval((2,), float32), source="model.py:3"))
    >>> print(python_source(g))  # doctest: +NORMALIZE_WHITESPACE
    # graphduel traced graph: 1 call, 1 placeholder, 0 constants
    # every call is a primitive of eager.primitives on arrays: P.<name>(xp, *arrays, **params)
    from tracer.codegen import P, IndexSlot, dtype, np
    <BLANKLINE>
    def forward(xp, constants, x):
        v1 = P.exp(xp, x)  # f32[2]  model.py:3
        return [v1]
"""

from __future__ import annotations

import keyword
import linecache
import math
import re

import numpy as np
from numpy import dtype  # noqa: F401  (name used by generated code)

from eager.backend import namespace, namespace_of  # noqa: F401  (used by code for graphs on two devices)
from eager.primitives import PRIMITIVES, IndexSlot  # noqa: F401  (IndexSlot: name used by generated code)
from tracer.interpret import Rule, evaluate
from tracer.ir import CONSTANT, PLACEHOLDER, Graph, Node

RESERVED = {"xp", "constants", "P", "IndexSlot", "dtype", "np", "forward", "namespace", "namespace_of", "slice",
            "float"}


class _Primitives:
    """``P.add`` is ``PRIMITIVES["add"].impl`` (looked up once, then cached on the instance)."""

    def __getattr__(self, name: str):
        try:
            impl = PRIMITIVES[name].impl
        except KeyError:
            raise AttributeError(f"generated code calls unknown primitive {name!r}") from None
        setattr(self, name, impl)
        return impl


P = _Primitives()


def placeholder_names(graph: Graph) -> dict[int, str]:
    """A Python identifier per placeholder (``fc1.weight`` -> ``fc1_weight``), unique in the function."""
    used = set(RESERVED)
    out = {}
    for n in graph.placeholders:
        name = re.sub(r"\W+", "_", n.name or "arg").strip("_") or "arg"
        if name[0].isdigit() or keyword.iskeyword(name) or name in used or re.fullmatch(r"[vc]\d+", name):
            name = f"p_{name}"
        base, k = name, 2
        while name in used:
            name = f"{base}_{k}"
            k += 1
        used.add(name)
        out[n.id] = name
    return out


def literal(value, constants: dict, key: str) -> str:
    """Python source for a static value; anything without a faithful literal goes into ``constants``."""
    if value is None or isinstance(value, (bool, str)):
        return repr(str(value)) if isinstance(value, str) else repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return f"np.{type(value).__name__}({literal(value.item(), constants, key)})"
    if isinstance(value, np.dtype):
        return f"dtype({value.name!r})"
    if isinstance(value, IndexSlot):
        return f"IndexSlot({value.position})"
    if isinstance(value, slice):
        parts = [literal(v, constants, key) for v in (value.start, value.stop, value.step)]
        return f"slice({', '.join(parts)})"
    if value is Ellipsis:
        return "..."
    if type(value) is tuple:  # each element its own key: two non-literal elements must not share one slot
        inner = [literal(v, constants, f"{key}_{i}") for i, v in enumerate(value)]
        return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
    if type(value) is list:
        return "[" + ", ".join(literal(v, constants, f"{key}_{i}") for i, v in enumerate(value)) + "]"
    constants[key] = value
    return f"constants[{key!r}]"


class _SourceRule(Rule):
    """Values are Python names; each call appends its line to ``body`` and dead names get a ``del``."""

    def __init__(self, graph: Graph, constants: dict):
        self.constants = constants
        self.body: list[str] = []
        self.mixed = any(n.op == "to_device" for n in graph.nodes)  # two devices: xp per call, as eager does

    def constant(self, n: Node) -> str:
        self.constants[n.id] = n.value
        self.body.append(f"c{n.id} = constants[{n.id}]  # {n.aval} constant")
        return f"c{n.id}"

    def call(self, n: Node, args: list) -> str:
        xp = "xp"
        if self.mixed:
            first = next((v for v, a in zip(args, n.args) if isinstance(a, Node)), None)
            xp = f"namespace_of({first})" if first is not None else \
                f"namespace({str(n.params.get('device', 'cpu'))!r})"
        texts = [xp] + [v if isinstance(a, Node) else literal(a, self.constants, f"n{n.id}_arg{i}")
                        for i, (a, v) in enumerate(zip(n.args, args))]
        texts += [f"{k}={literal(v, self.constants, f'n{n.id}_{k}')}" for k, v in n.params.items()]
        note = f"  {n.source}" if n.source else ""
        call = f"P.{n.op}({', '.join(texts)})"
        if n.shape == ():  # NumPy hands back scalars from 0-d ops; keep arrays, as eager does
            call = f"{xp}.asarray({call})"
        self.body.append(f"v{n.id} = {call}  # {n.aval}{note}")
        return f"v{n.id}"

    def free(self, nodes: list[Node]) -> None:
        dead = [f"c{n.id}" if n.op == CONSTANT else f"v{n.id}" for n in nodes if n.op != PLACEHOLDER]
        if dead:
            self.body.append(f"del {', '.join(dead)}")


def python_source(graph: Graph, constants: dict | None = None) -> str:
    """The graph as a Python function; fills ``constants`` (if given) with what the code reads from it."""
    constants = {} if constants is None else constants
    names = placeholder_names(graph)
    ph = graph.placeholders
    rule = _SourceRule(graph, constants)
    results = evaluate(graph, [names[n.id] for n in ph], rule)
    body = rule.body + [f"return [{', '.join(results)}]"]
    head = [f"# graphduel traced graph: {_count(len(graph.calls), 'call')}, {_count(len(ph), 'placeholder')}, "
            f"{_count(sum(n.op == CONSTANT for n in graph.nodes), 'constant')}",
            "# every call is a primitive of eager.primitives on arrays: P.<name>(xp, *arrays, **params)",
            "from tracer.codegen import P, IndexSlot, dtype, np" + (", namespace, namespace_of" if rule.mixed else ""),
            "",
            f"def forward({', '.join(['xp', 'constants'] + [names[n.id] for n in ph])}):"]
    return "\n".join(head + ["    " + line for line in body]) + "\n"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def compile_source(source: str, tag: str):
    """Compile generated source into its ``forward`` function (registered with linecache for tracebacks)."""
    filename = f"<graphduel graph {tag}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope: dict = {}
    exec(compile(source, filename, "exec"), scope)
    return scope["forward"]
