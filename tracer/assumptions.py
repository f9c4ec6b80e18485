"""The assumption ledger: every place where a trace froze something that could change on a later call.

Two sources:

- a tensor value left the graph (``bool(t)``, ``if t > 0:``, ``float(t)``, ``.item()``, ``.tolist()``,
  ``.numpy()``, boolean-mask indexing): the Python code after it ran with the value seen while tracing;
- Python-side state (``self.counter += 1``, a Python step count) changed while tracing: control flow that
  reads it is frozen at the value it had.

Each site is recorded once, with its source line and the value seen, and a ``TracerWarning`` is emitted once
per site.

    >>> a = Assumption("bool", "model.py:12", True)
    >>> print(a)
    model.py:12: bool(tensor) was True while tracing; Python control flow that depends on it is frozen
"""

from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass, field
from typing import Any


class TracerWarning(UserWarning):
    """A trace froze a value that may differ on a later call (see ``Traced.assumptions``)."""


_WHAT = {
    "bool": "bool(tensor) was {value!r} while tracing; Python control flow that depends on it is frozen",
    "float": "float(tensor) was {value!r} while tracing; it is baked into the graph as a constant",
    "int": "int(tensor) was {value!r} while tracing; it is baked into the graph as a constant",
    "item": "tensor.item() was {value!r} while tracing; it is baked into the graph as a constant",
    "tolist": "tensor.tolist() was {value!r} while tracing; it is baked into the graph as constants",
    "numpy": "tensor.numpy() left the graph while tracing; what Python did with it is frozen",
    "nonzero": "a boolean mask selected {value} elements while tracing; the selected positions are baked in",
    "python_state": "{value}; control flow that reads it is frozen",
}


@dataclass
class Assumption:
    """One frozen site: ``kind``, ``source`` (file:line), the first ``value`` seen, and how often it was hit."""

    kind: str
    source: str
    value: Any
    values: list = field(default_factory=list)
    count: int = 1
    node: str | None = None      # the IR value whose data left the graph, e.g. "%7"
    name: str | None = None      # for Python state: the attribute, e.g. "model.counter"
    before: Any = None           # for Python state: the value when tracing started
    after: Any = None            # ... and when it ended
    broken: str | None = None    # set by check(): why this assumption no longer holds
    returned: bool = False       # the value is also returned: calls recompute that, other uses stay frozen

    def __post_init__(self):
        if not self.values:
            self.values = [self.value]

    @property
    def message(self) -> str:
        value = self.value
        if isinstance(value, list) and len(repr(value)) > 60:
            value = f"<list of {len(value)}>"
        default = f"a tensor value left the graph ({self.kind}) while tracing" + " ({value!r}); what Python did with " \
            "it is frozen"
        return _WHAT.get(self.kind, default).format(value=value)

    def __repr__(self) -> str:
        return f"<Assumption {self}>"

    def __str__(self) -> str:
        where = f" (node {self.node})" if self.node else ""
        returned = " (the returned value is recomputed by each call; other Python uses of it are frozen)" \
            if self.returned else ""
        broken = f"; broken: {self.broken}" if self.broken else ""
        return f"{self.source}: {self.message}{where}{returned}{broken}"


class Ledger:
    """Assumptions by site; warns once per site for the lifetime of the ledger (one per Traced)."""

    def __init__(self):
        self.by_site: dict[tuple, Assumption] = {}
        self._warned: set[tuple] = set()

    def add_escape(self, esc, node: str | None = None) -> Assumption:
        key = (esc.source, "escape")
        a = self.by_site.get(key)
        if a is None:
            a = self.by_site[key] = Assumption(esc.kind, esc.source, esc.value, node=node, returned=esc.returned)
        else:
            a.count += 1
            if len(a.values) < 16:
                a.values.append(esc.value)
        self._warn(key, a, esc.filename, esc.lineno)
        return a

    def add_python_state(self, name: str, before, after, where: tuple[str, str, int] | None) -> Assumption:
        source, filename, lineno = where or ("<python state>", "<python state>", 0)
        key = (name, "python_state")
        text = f"Python state {name} changed {before!r} -> {after!r} during tracing"
        a = self.by_site.get(key)
        if a is None:
            a = self.by_site[key] = Assumption("python_state", source, text, name=name, before=before, after=after)
        self._warn(key, a, filename, lineno)
        return a

    def _warn(self, key, a: Assumption, filename: str, lineno: int) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn_explicit(f"tracing froze a value: {a}. Check later calls with traced.check(...).",
                               TracerWarning, filename, lineno or 1)

    def __iter__(self):
        return iter(self.by_site.values())

    def __len__(self) -> int:
        return len(self.by_site)


def python_state_site(obj, attr: str) -> tuple[str, str, int] | None:
    """Where ``obj``'s class changes ``attr`` (``self.attr += ...`` / ``self.attr = ...`` outside __init__)."""
    import os
    pattern = re.compile(rf"\bself\.{re.escape(attr)}\s*(\+|-|\*|/|//|%)?=(?!=)")
    for klass in type(obj).__mro__:
        if klass is object or klass.__module__.startswith(("eager.", "tracer.")):
            continue
        try:
            lines, start = inspect.getsourcelines(klass)
            filename = inspect.getsourcefile(klass) or "<unknown>"
        except (OSError, TypeError):
            continue
        in_init = False
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("def "):
                in_init = stripped.startswith("def __init__")
            if not in_init and pattern.search(line):
                lineno = start + i
                return f"{os.path.basename(filename)}:{lineno}", filename, lineno
    return None
