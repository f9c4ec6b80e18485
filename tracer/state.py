"""Where traced code keeps state between calls, and how a trace leaves no trace.

A ``Slot`` is a path from a root object to one location that may hold a tensor: ``model.fc1.weight``,
``model.fc1.weight.grad``, ``opt.state[fc1.weight].exp_avg``. Paths (not tensor identities) are resolved at
every call, so a traced step keeps working when eager code replaces a tensor at that location.

A ``World`` is what tracing found reachable from the traced function: modules (their parameters, buffers and
Python attributes), optimizers (param groups and state) and free tensors in the function's closure or globals.
It names every tensor it knows, takes snapshots and restores them (tracing runs the function for real, then
puts every tensor, ``.grad``, optimizer state, Python attribute and random generator back).

    >>> import eager
    >>> from eager import nn
    >>> world = World.discover(nn.Linear(2, 1), ())
    >>> sorted(k.name for k in world.known.values()), sorted(s.name for s in world.grad_slots.values())
    (['bias', 'weight'], ['bias.grad', 'weight.grad'])
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

from eager.tensor import Tensor

MISSING = object()
PY_SCALARS = (bool, int, float)


class Slot:
    """A location: ``root`` followed by steps ``("attr", name)``, ``("item", key)`` or ``("grad", None)``."""

    __slots__ = ("name", "root", "steps", "_get_path", "_read", "fetch", "_parent")

    def __init__(self, name: str, root: Any, steps: tuple = ()):
        self.name, self.root, self.steps = name, root, tuple(steps)
        # a path of attributes only resolves with one C-level attrgetter (the hot path of every call)
        names: list[str] | None = []
        for kind, key in self.steps:
            attr = {"attr": key, "grad": "_grad", "cell": "cell_contents"}.get(kind)
            if not isinstance(attr, str) or "." in attr:
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
        t._data = array
        t._version += 1

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


# what resolving a path raises where a location does not exist: a missing attribute, a missing key or index (an
# item getter turns every miss into KeyError), an empty closure cell. Nothing else is taken as "missing": a
# property that raises TypeError from a bug propagates.
FETCH_ERRORS = (AttributeError, KeyError, ValueError)


def _fetcher(steps: tuple):
    """``root -> object`` for a path, as C-level getters: runs of attributes are one ``attrgetter``, dict keys
    and indices ``itemgetter``s (a path is resolved on every call of a traced step, for each piece of state)."""
    getters: list = []
    names: list[str] = []
    for kind, key in steps:
        attr = {"attr": key, "grad": "_grad", "cell": "cell_contents"}.get(kind)
        if isinstance(attr, str) and "." not in attr:
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


def layout_of(value) -> tuple | None:
    """What a guard compares at a slot: None when empty, else the tensor's shape, dtype and array type."""
    if isinstance(value, Tensor):
        d = value._data
        return (d.shape, d.dtype, type(d))
    if value is MISSING or value is None:
        return None
    return ("py", type(value).__name__)


def describe_layout(layout) -> str:
    if layout is None:
        return "empty"
    if layout[0] == "py":
        return f"a Python {layout[1]}"
    from eager.backend import short_name
    device = "" if layout[2].__module__ == "numpy" else " (cuda)"
    return f"{short_name(layout[1])}[{','.join(map(str, layout[0]))}]{device}"


@dataclass
class Known:
    """A tensor the world can name: its location and the placeholder role it gets if the trace reads it."""

    tensor: Tensor
    name: str
    role: str          # "param" | "state" | "free" (free tensors become state only if mutated or trainable)
    slot: Slot


@dataclass
class PyState:
    """A Python scalar the traced code can see: where it lives, its value, and the object that owns it."""

    slot: Slot
    container: dict
    key: Any
    value: Any
    owner: Any


def _is_module(obj) -> bool:
    from eager.nn.module import Module
    return isinstance(obj, Module)


def _is_optimizer(obj) -> bool:
    return not isinstance(obj, type) and hasattr(obj, "param_groups") and isinstance(getattr(obj, "state", None),
                                                                                     dict)


class World:
    """Modules, optimizers and free tensors reachable from a traced function, with names and slots."""

    def __init__(self):
        self.modules: list[tuple[str, Any]] = []
        self.optimizers: list[tuple[str, Any]] = []
        self.known: dict[int, Known] = {}          # id(tensor) -> Known (params, buffers, grads, opt state, free)
        self.grad_slots: dict[int, Slot] = {}      # id(leaf tensor) -> its .grad slot
        self.free: list[tuple[str, Slot]] = []     # free tensor locations (closure cells, globals, lists)
        self._root_ids: set[int] = set()

    # ------------------------------------------------------------ discovery
    @classmethod
    def discover(cls, fn, args: tuple, extra: dict[str, Slot] | None = None) -> World:
        """Find what ``fn`` can reach: the module itself, closure and global variables, arguments."""
        world = cls()
        roots: list[tuple[str, Any, Slot | None]] = []
        if _is_module(fn):
            roots.append(("model", fn, None))
        else:
            _function_roots(fn, roots, depth=0, seen=set())
        for i, a in enumerate(args):
            if _is_module(a) or _is_optimizer(a):
                roots.append((f"arg{i}", a, None))
        single_module = len({id(obj) for _, obj, _ in roots if _is_module(obj)}) == 1
        for name, obj, _slot in roots:
            if id(obj) in world._root_ids:
                continue
            if _is_module(obj):
                world._root_ids.add(id(obj))
                world._add_module(name, obj, prefix="" if single_module else f"{name}.")
        for name, obj, _slot in roots:
            if _is_optimizer(obj) and id(obj) not in world._root_ids:
                world._root_ids.add(id(obj))
                world._add_optimizer(name, obj)
        for name, obj, slot in roots:
            if isinstance(obj, Tensor) and slot is not None:
                world.free.append((name, slot))
                if id(obj) not in world.known:
                    world._know(obj, name, "free", slot)
                    world._grad_slot(obj, name, slot)
        for name, slot in (extra or {}).items():  # tensors a replay reads through known locations
            t = slot.get()
            if isinstance(t, Tensor) and id(t) not in world.known:
                world._know(t, name, "param", Slot(name, slot.root, slot.steps))
        return world

    def _know(self, t: Tensor, name: str, role: str, slot: Slot) -> None:
        self.known.setdefault(id(t), Known(t, name, role, slot))

    def _grad_slot(self, t: Tensor, name: str, slot: Slot) -> None:
        if id(t) in self.grad_slots:
            return
        gslot = slot.child(f"{name}.grad", "grad")
        self.grad_slots[id(t)] = gslot
        if t._grad is not None:
            self._know(t._grad, gslot.name, "state", gslot)

    def _add_module(self, name: str, module, prefix: str) -> None:
        self.modules.append((name, module))
        root = Slot(name, module, ())
        for kind in ("named_parameters", "named_buffers"):
            for pname, p in getattr(module, kind)():
                slot = root
                for part in pname.split("."):
                    slot = slot.child(prefix + pname, "attr", part)
                self._know(p, prefix + pname, "param", slot)
                if kind == "named_parameters":
                    self._grad_slot(p, prefix + pname, slot)
        for sub, m in module.named_modules():  # plain tensor attributes (``self.cache = ...``)
            for key, value in vars(m).items():
                if isinstance(value, Tensor) and not key.startswith("_") and id(value) not in self.known:
                    full = f"{sub}.{key}" if sub else key
                    self._know(value, prefix + full, "free", Slot(prefix + full, module,
                                                                  tuple(("attr", part) for part in full.split("."))))

    def param_name(self, t: Tensor, fallback: str) -> str:
        k = self.known.get(id(t))
        return k.name if k is not None else fallback

    def _add_optimizer(self, name: str, opt) -> None:
        self.optimizers.append((name, opt))
        for g, group in enumerate(opt.param_groups):
            for i, p in enumerate(group.get("params", ())):
                if not isinstance(p, Tensor):
                    continue
                pname = f"{name}.param_groups[{g}].params[{i}]"
                slot = Slot(pname, opt, (("attr", "param_groups"), ("item", g), ("item", "params"), ("item", i)))
                if id(p) not in self.known:
                    self._know(p, pname, "state", slot)
                self._grad_slot(p, self.known[id(p)].name, self.known[id(p)].slot)
        for p, entry in opt.state.items():
            if isinstance(entry, dict):
                for key, value in entry.items():
                    if isinstance(value, Tensor):
                        slot = self.opt_state_slot(name, opt, p, key)
                        self._know(value, slot.name, "state", slot)

    def opt_state_slot(self, name: str, opt, p, key) -> Slot:
        pname = self.param_name(p, f"param@{id(p):x}") if isinstance(p, Tensor) else repr(p)
        sname = f"{name}.state[{pname}].{key}"
        return Slot(sname, opt, (("attr", "state"), ("item", p), ("item", key)))

    # ------------------------------------------------------------ locations that may change during a run
    def watched_slots(self) -> list[Slot]:
        """Every .grad slot and every optimizer-state entry (present now or possibly created by a run)."""
        slots = list(self.grad_slots.values())
        for name, opt in self.optimizers:
            for p, entry in opt.state.items():
                if isinstance(entry, dict):
                    for key in entry:
                        slots.append(self.opt_state_slot(name, opt, p, key))
        seen, out = set(), []
        for s in slots:
            if s.name not in seen:
                seen.add(s.name)
                out.append(s)
        return out

    def module_tensor_attrs(self) -> list[Slot]:
        """Plain tensor attributes of modules (``self.cache = ...``), which a run may replace."""
        out = []
        for _name, module in self.modules:
            for sub, m in module.named_modules():
                for key, value in vars(m).items():
                    if isinstance(value, Tensor) and not key.startswith("_"):
                        full = f"{sub}.{key}" if sub else key
                        slot = Slot(full, module, tuple(("attr", part) for part in full.split(".")))
                        out.append(slot)
        return out

    def python_state(self) -> dict[str, PyState]:
        """Python scalars (int/float/bool, tuples of them) held by modules and optimizers, by readable name."""
        out: dict[str, PyState] = {}
        for name, module in self.modules:
            for sub, m in module.named_modules():
                base = f"{name}.{sub}" if sub else name
                steps = tuple(("attr", part) for part in sub.split(".")) if sub else ()
                for key, value in vars(m).items():
                    if _is_py_state(value) and not key.startswith("_"):
                        slot = Slot(f"{base}.{key}", module, steps + (("attr", key),))
                        out[slot.name] = PyState(slot, m.__dict__, key, value, m)
        for name, opt in self.optimizers:
            for key, value in vars(opt).items():
                if _is_py_state(value) and not key.startswith("_"):
                    out[f"{name}.{key}"] = PyState(Slot(f"{name}.{key}", opt, (("attr", key),)), opt.__dict__, key,
                                                   value, opt)
            for g, group in enumerate(opt.param_groups):
                for key, value in group.items():
                    if _is_py_state(value):
                        sname = f"{name}.param_groups[{g}][{key!r}]"
                        slot = Slot(sname, opt, (("attr", "param_groups"), ("item", g), ("item", key)))
                        out[sname] = PyState(slot, group, key, value, None)
            for p, entry in opt.state.items():
                if isinstance(entry, dict):
                    for key, value in entry.items():
                        if _is_py_state(value):
                            slot = self.opt_state_slot(name, opt, p, key)
                            out[slot.name] = PyState(slot, entry, key, value, None)
        return out

    # ------------------------------------------------------------ snapshots
    def snapshot(self, tensors=()) -> Snapshot:
        """Everything a run may change: tensors' values and .grad, module and optimizer containers, RNG."""
        snap = Snapshot()
        for k in self.known.values():
            snap.add_tensor(k.tensor)
        for t in tensors:
            snap.add_tensor(t)
        for _, slot in self.free:
            t = slot.get()
            if isinstance(t, Tensor):
                snap.add_tensor(t)
            snap.cells.append((slot, t))
        for _, module in self.modules:
            for m in module.modules():
                snap.add_dict(m.__dict__)
                for key in ("_parameters", "_buffers", "_modules"):
                    if isinstance(m.__dict__.get(key), dict):
                        snap.add_dict(m.__dict__[key])
        for _, opt in self.optimizers:
            snap.add_dict(opt.__dict__)
            snap.add_dict(opt.state)
            for entry in opt.state.values():
                if isinstance(entry, dict):
                    snap.add_dict(entry)
            snap.lists.append((opt.param_groups, list(opt.param_groups)))
            for group in opt.param_groups:
                snap.add_dict(group)
        snap.rng = _rng_state()
        return snap


def _is_py_state(value) -> bool:
    if type(value) in PY_SCALARS:
        return True
    return type(value) is tuple and 0 < len(value) <= 8 and all(type(v) in PY_SCALARS for v in value)


class Snapshot:
    """Saved values of tensors and containers; ``restore()`` puts them back."""

    def __init__(self):
        self.tensors: dict[int, tuple] = {}
        self.dicts: dict[int, tuple[dict, dict]] = {}
        self.lists: list[tuple[list, list]] = []
        self.cells: list[tuple[Slot, Any]] = []
        self.rng = None

    def add_tensor(self, t: Tensor) -> None:
        if id(t) not in self.tensors:
            self.tensors[id(t)] = (t, t._data, t._version, t._grad, t.grad_fn, t._requires_grad)
            if t._grad is not None:
                self.add_tensor(t._grad)

    def add_dict(self, d: dict) -> None:
        if id(d) not in self.dicts:
            self.dicts[id(d)] = (d, dict(d))

    def restore(self, python: bool = True) -> None:
        """Put everything back; with ``python=False`` Python scalars changed by the run stay as they are."""
        for d, saved in self.dicts.values():
            if python:
                d.clear()
                d.update(saved)
                continue
            for key in [k for k in d if k not in saved and not _is_py_state(d[k])]:
                del d[key]
            for key, value in saved.items():
                if not _is_py_state(value):
                    d[key] = value
        for lst, saved in self.lists:
            lst[:] = saved
        for slot, value in self.cells:
            slot.assign(value) if value is not MISSING else None
        for t, data, version, grad, grad_fn, requires_grad in self.tensors.values():
            t._data, t._version, t._grad, t.grad_fn, t._requires_grad = data, version, grad, grad_fn, requires_grad
        if self.rng is not None:
            _set_rng_state(self.rng)


def _rng_state():
    from eager import random as er
    states = {}
    for device, gen in er._generators.items():
        try:
            states[device] = (gen, gen._rng.bit_generator.state)
        except AttributeError:  # a generator without a readable state (some CuPy versions): left alone
            continue
    return states, set(er._generators)


def _set_rng_state(saved) -> None:
    from eager import random as er
    states, devices = saved
    for device in [d for d in er._generators if d not in devices]:
        del er._generators[device]
    for device, (gen, state) in states.items():
        er._generators[device] = gen
        gen._rng.bit_generator.state = state


# ---------------------------------------------------------------- finding roots in a function


def _function_roots(fn, roots: list, depth: int, seen: set) -> None:
    """Modules, optimizers and tensors named by ``fn``: bound self, closure cells, globals, defaults."""
    if id(fn) in seen or depth > 2:
        return
    seen.add(id(fn))
    if inspect.ismethod(fn):
        owner = fn.__self__
        if _is_module(owner) or _is_optimizer(owner):
            roots.append(("self", owner, None))
        else:
            _object_roots("self", owner, roots, depth, seen)
        fn = fn.__func__
    if isinstance(fn, functools.partial):
        for i, value in enumerate(fn.args):
            _consider(f"partial_arg{i}", value, None, roots, depth, seen)
        for key, value in fn.keywords.items():
            _consider(key, value, None, roots, depth, seen)
        _function_roots(fn.func, roots, depth + 1, seen)
        return
    if not isinstance(fn, types.FunctionType):
        call = type(fn).__dict__.get("__call__") if not isinstance(fn, type) else None
        if isinstance(call, types.FunctionType):  # a callable object: its attributes and its __call__
            _object_roots("self", fn, roots, depth, seen)
            _function_roots(call, roots, depth + 1, seen)
        return
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        _consider(name, value, Slot(name, cell, (("cell", None),)), roots, depth, seen)
    g = fn.__globals__
    for name in _names(code):
        if name in g:
            _consider(name, g[name], Slot(name, g, (("item", name),)), roots, depth, seen)
    for i, value in enumerate(fn.__defaults__ or ()):
        _consider(f"default{i}", value, None, roots, depth, seen)


def _object_roots(prefix: str, obj, roots, depth, seen) -> None:
    for key, value in getattr(obj, "__dict__", {}).items():
        if not key.startswith("_"):
            _consider(f"{prefix}.{key}", value, Slot(f"{prefix}.{key}", obj, (("attr", key),)), roots, depth, seen)


def _names(code) -> list[str]:
    out = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out += _names(const)
    return out


def _consider(name, value, slot, roots, depth, seen) -> None:
    if _is_module(value) or _is_optimizer(value):
        roots.append((name, value, slot))
    elif isinstance(value, Tensor):
        roots.append((name, value, slot))
    elif isinstance(value, (list, tuple)) and len(value) <= 64:
        for i, v in enumerate(value):
            if _is_module(v) or _is_optimizer(v) or isinstance(v, Tensor):
                roots.append((f"{name}[{i}]", v, slot.child(f"{name}[{i}]", "item", i) if slot else None))
    elif isinstance(value, dict) and len(value) <= 64:
        for k, v in value.items():
            if _is_module(v) or _is_optimizer(v) or isinstance(v, Tensor):
                roots.append((f"{name}[{k!r}]", v, slot.child(f"{name}[{k!r}]", "item", k) if slot else None))
    elif isinstance(value, (types.FunctionType, types.MethodType)):
        _function_roots(value, roots, depth + 1, seen)
