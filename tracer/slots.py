"""Slots: named paths from a root object to one location that may hold a tensor, resolved on every call.

A ``Slot`` is ``root`` followed by steps ``("attr", name)``, ``("item", key)``, ``("grad", None)`` or
``("cell", None)``: ``model.fc1.weight``, ``model.fc1.weight.grad``, ``opt.state[fc1.weight].exp_avg``, a
closure cell. Paths (not tensor identities) are resolved at every call, so a traced step keeps working when
eager code replaces a tensor at that location. A path resolves with C-level getters (``attrgetter``,
``itemgetter``): it is the hot path of every traced call, once per piece of state.

    >>> import eager
    >>> from eager import nn
    >>> model = nn.Linear(2, 1)
    >>> slot = Slot("weight.grad", model, (("attr", "weight"), ("grad", None)))
    >>> slot.get() is None, layout_of(slot.get()), describe_layout(layout_of(model.weight))
    (True, None, 'f32[1,2]')
"""

from __future__ import annotations

import functools
from operator import attrgetter, itemgetter
from typing import Any

from eager.backend import short_name
from eager.storage import assign
from eager.tensor import Tensor

MISSING = object()

# what resolving a path raises where a location does not exist: a missing attribute, a missing key or index (an
# item getter turns every miss into KeyError), an empty closure cell. Nothing else is taken as "missing": a
# property that raises TypeError from a bug propagates.
FETCH_ERRORS = (AttributeError, KeyError, ValueError)

# the attribute each step kind reads, where one exists (``item`` steps have none)
_STEP_ATTRS = {"grad": "_grad", "cell": "cell_contents"}


def _step_attr(kind: str, key) -> str | None:
    """The attribute name a step reads, when one plain ``getattr`` can spell it."""
    attr = key if kind == "attr" else _STEP_ATTRS.get(kind)
    return attr if isinstance(attr, str) and "." not in attr else None


class Slot:
    """A location: ``root`` followed by steps ``("attr", name)``, ``("item", key)`` or ``("grad", None)``."""

    __slots__ = ("name", "root", "steps", "_get_path", "_read", "fetch", "_parent")

    def __init__(self, name: str, root: Any, steps: tuple = ()):
        self.name, self.root, self.steps = name, root, tuple(steps)
        # a path of attributes only resolves with one C-level attrgetter (the hot path of every call)
        names: list[str] | None = []
        for kind, key in self.steps:
            attr = _step_attr(kind, key)
            if attr is None:
                names = None
                break
            names.append(attr)
        self._get_path = ".".join(names) if names else None  # set: the path is attributes only
        self._read = attrgetter(".".join(names + ["_data"])) if names is not None else attrgetter("_data")
        self.fetch = _fetcher(self.steps)
        self._parent = _fetcher(self.steps[:-1])

    def child(self, name: str, kind: str, key=None) -> Slot:
        return Slot(name, self.root, self.steps + ((kind, key),))

    def get(self):
        """The object at this location, or ``MISSING``."""
        try:
            return self.fetch(self.root)
        except FETCH_ERRORS:
            return MISSING

    def read(self):
        """The array held at this location (AttributeError when it holds no tensor)."""
        if self._get_path is not None or not self.steps:
            return self._read(self.root)
        return self.get()._data

    def rebind(self, array) -> None:
        """Give the tensor at this location a new value, in place (it keeps its identity, as in eager)."""
        t = self.get()
        assign(t, array)

    def assign(self, value) -> None:
        """Put ``value`` at this location (creating missing dict levels); ``MISSING`` deletes it."""
        kind, key = self.steps[-1]
        try:
            parent = self._parent(self.root)
        except FETCH_ERRORS:
            parent = None
        if parent is not None:
            _put(parent, kind, key, value)
            return
        obj = self.root
        for kind, key in self.steps[:-1]:
            nxt = _step(obj, kind, key)
            if nxt is MISSING or nxt is None:
                nxt = {}
                _put(obj, kind, key, nxt)
            obj = nxt
        kind, key = self.steps[-1]
        _put(obj, kind, key, value)

    def __repr__(self) -> str:
        return f"<Slot {self.name}>"


def _fetcher(steps: tuple):
    """``root -> object`` for a path, as C-level getters: runs of attributes are one ``attrgetter``, dict keys
    and indices ``itemgetter``s (a path is resolved on every call of a traced step, for each piece of state)."""
    getters: list = []
    names: list[str] = []
    for kind, key in steps:
        attr = _step_attr(kind, key)
        if attr is not None:
            names.append(attr)
            continue
        if names:
            getters.append(attrgetter(".".join(names)))
            names = []
        if kind != "item":
            return functools.partial(_walk, steps)  # an attribute name no getter can spell: step by step
        getters.append(item_lookup(key))
    if names:
        getters.append(attrgetter(".".join(names)))
    if not getters:
        return _identity
    if len(getters) == 1:
        return getters[0]
    return chain(getters)


def item_lookup(*keys):
    """``obj -> obj[key]`` (a tuple of ``obj[k]`` for several keys), raising KeyError for any miss. A dict
    subclass with ``__missing__`` (a ``defaultdict``, as torch optimizers' state is) is only read: looking a
    location up must never create it."""
    plain = itemgetter(*keys)

    def get(obj):
        if type(obj) is dict or not isinstance(obj, dict):
            try:
                return plain(obj)
            except (IndexError, TypeError):  # an index past the end, a value that is no container
                raise KeyError(keys) from None
        values = tuple(obj.get(k, MISSING) for k in keys)
        if any(v is MISSING for v in values):  # by identity: a value may be a tensor (elementwise ==)
            raise KeyError(keys)
        return values if len(keys) > 1 else values[0]
    return get


def _identity(root):
    return root


def chain(getters):
    """``root -> g_n(...g_1(root))``."""
    return functools.partial(_chain, tuple(getters))


def _chain(getters, obj):
    for get in getters:
        obj = get(obj)
    return obj


def _walk(steps, obj):
    for kind, key in steps:
        obj = _step(obj, kind, key)
        if obj is MISSING:
            raise KeyError(key)
    return obj


def _step(obj, kind, key):
    if kind == "attr":
        d = getattr(obj, "__dict__", None)
        if d is not None and key in d:
            return d[key]
        return getattr(obj, key, MISSING)
    if kind == "item":
        if isinstance(obj, dict):
            return obj.get(key, MISSING)
        try:
            return obj[key]
        except (IndexError, KeyError, TypeError):
            return MISSING
    if kind == "grad":
        return obj._grad if isinstance(obj, Tensor) else MISSING
    if kind == "cell":
        try:
            return obj.cell_contents
        except ValueError:
            return MISSING
    raise ValueError(f"unknown slot step {kind!r}")


def _put(obj, kind, key, value):
    if kind == "attr":
        if value is MISSING:
            delattr(obj, key)
        else:
            setattr(obj, key, value)
    elif kind == "item":
        if value is MISSING:
            obj.pop(key, None)
        else:
            obj[key] = value
    elif kind == "grad":
        obj._grad = None if value is MISSING else value
    elif kind == "cell":
        obj.cell_contents = value


# ---------------------------------------------------------------- layouts: what a guard compares at a slot


def layout_of(value) -> tuple | None:
    """What a guard compares at a slot: None when empty, else the tensor's shape, dtype and array type."""
    if isinstance(value, Tensor):
        return array_layout(value._data)
    if value is MISSING or value is None:
        return None
    return ("py", type(value).__name__)


def array_layout(array) -> tuple:
    """The layout of a tensor holding ``array``: its shape, dtype and array type (NumPy or CuPy)."""
    return (array.shape, array.dtype, type(array))


def describe_layout(layout) -> str:
    """A layout in words: ``empty``, ``a Python int``, ``f32[3,2]`` (``(cuda)`` for a device array)."""
    if layout is None:
        return "empty"
    if layout[0] == "py":
        return f"a Python {layout[1]}"
    device = "" if layout[2].__module__ == "numpy" else " (cuda)"
    return f"{short_name(layout[1])}[{','.join(map(str, layout[0]))}]{device}"
