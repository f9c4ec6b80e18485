"""World discovery: what a traced function can reach, every tensor in it named and given a location.

A ``World`` holds the modules (their parameters, buffers and Python attributes), the optimizers (param groups
and state) and the free tensors (closure cells, globals, lists) reachable from a traced function, found by
``tracer.roots``. It names every tensor it knows (``Known``: state_dict names for parameters and buffers) and
lists the locations a run may change: ``.grad`` slots, optimizer-state entries, plain module tensor attributes
and Python scalars (``PyState``): those of modules and optimizers, and those the function names itself (a
global ``FLAG``, a closure cell, an attribute of a plain object it is a method of).

    >>> import eager
    >>> from eager import nn
    >>> world = World.discover(nn.Linear(2, 1), ())
    >>> sorted(k.name for k in world.known.values()), sorted(s.name for s in world.grad_slots.values())
    (['bias', 'weight'], ['bias.grad', 'weight.grad'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eager.tensor import Tensor
from tracer.roots import PY_SCALARS, Root, function_roots, is_module, is_optimizer, is_py_state
from tracer.slots import MISSING, Slot

__all__ = ["PY_SCALARS", "CellView", "Known", "PyState", "World", "is_py_state"]


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


class CellView:
    """A closure cell as a one-entry mapping: a guard reads (``get``) and writes back (``[key] = value``) Python
    state in a cell as it does a global's dict or an object's ``__dict__``."""

    __slots__ = ("cell",)

    def __init__(self, cell):
        self.cell = cell

    def get(self, key, default=None):
        try:
            return self.cell.cell_contents
        except ValueError:  # an empty cell (``del`` of a nonlocal)
            return default

    def __setitem__(self, key, value) -> None:
        self.cell.cell_contents = value


def _scalar_location(slot: Slot) -> tuple[Any, Any, Any]:
    """(container, key, owner) of a Python scalar the function names: a global (its module's dict), a closure
    cell, or an attribute of a plain object (the owner: its class's source names the line that changes it)."""
    ((kind, key),) = slot.steps
    if kind == "cell":
        return CellView(slot.root), slot.name, None
    if kind == "item":
        return slot.root, key, None
    return vars(slot.root), key, slot.root


def _attr_steps(path: str) -> tuple:
    """The slot steps of a dotted attribute path (``fc1.weight`` -> two ``attr`` steps)."""
    return tuple(("attr", part) for part in path.split(".")) if path else ()


class World:
    """Modules, optimizers and free tensors reachable from a traced function, with names and slots."""

    def __init__(self):
        self.modules: list[tuple[str, Any]] = []
        self.optimizers: list[tuple[str, Any]] = []
        self.known: dict[int, Known] = {}          # id(tensor) -> Known (params, buffers, grads, opt state, free)
        self.grad_slots: dict[int, Slot] = {}      # id(leaf tensor) -> its .grad slot
        self.free: list[tuple[str, Slot]] = []     # free tensor locations (closure cells, globals, lists)
        self.scalars: list[tuple[str, Slot]] = []  # Python scalars the function names (globals, cells, attributes)
        self._root_ids: set[int] = set()

    # ------------------------------------------------------------ discovery
    @classmethod
    def discover(cls, fn, args: tuple, extra: dict[str, Slot] | None = None) -> World:
        """Find what ``fn`` can reach: the module itself, closure and global variables, arguments."""
        world = cls()
        roots = [Root("model", fn, None)] if is_module(fn) else function_roots(fn)
        roots += [Root(f"arg{i}", a, None) for i, a in enumerate(args) if is_module(a) or is_optimizer(a)]
        world._add_roots(roots)
        for name, slot in (extra or {}).items():  # tensors a replay reads through known locations
            t = slot.get()
            if isinstance(t, Tensor) and id(t) not in world.known:
                world._know(t, name, "param", Slot(name, slot.root, slot.steps))
        return world

    def _add_roots(self, roots: list[Root]) -> None:
        """Modules first (their tensors get state_dict names), then optimizers, then free tensors."""
        single_module = len({id(r.obj) for r in roots if is_module(r.obj)}) == 1
        for r in roots:
            if is_module(r.obj) and id(r.obj) not in self._root_ids:
                self._root_ids.add(id(r.obj))
                self._add_module(r.name, r.obj, prefix="" if single_module else f"{r.name}.")
        for r in roots:
            if is_optimizer(r.obj) and id(r.obj) not in self._root_ids:
                self._root_ids.add(id(r.obj))
                self._add_optimizer(r.name, r.obj)
        seen_scalars: set[tuple[int, Any]] = set()
        for r in roots:
            if is_py_state(r.obj) and r.slot is not None and (id(r.slot.root), r.slot.steps) not in seen_scalars:
                seen_scalars.add((id(r.slot.root), r.slot.steps))  # two functions reading one global: one guard
                self.scalars.append((r.name, r.slot))
            if isinstance(r.obj, Tensor) and r.slot is not None:
                self.free.append((r.name, r.slot))
                if id(r.obj) not in self.known:
                    self._know(r.obj, r.name, "free", r.slot)
                    self._grad_slot(r.obj, r.name, r.slot)

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
        for full, value in _module_tensor_attrs(module):  # plain tensor attributes (``self.cache = ...``)
            if id(value) not in self.known:
                self._know(value, prefix + full, "free", Slot(prefix + full, module, _attr_steps(full)))

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

    def rebindable_slots(self) -> list[Slot]:
        """Every location a run may put another tensor at: ``watched_slots`` and ``module_tensor_attrs``."""
        return self.watched_slots() + self.module_tensor_attrs()

    def module_tensor_attrs(self) -> list[Slot]:
        """Plain tensor attributes of modules (``self.cache = ...``), which a run may replace."""
        return [Slot(full, module, _attr_steps(full)) for _name, module in self.modules
                for full, _value in _module_tensor_attrs(module)]

    def python_state(self) -> dict[str, PyState]:
        """Python scalars (int/float/bool, tuples of them) held by modules and optimizers, and the globals, closure
        cells and plain-object attributes the function names, by readable name."""
        out: dict[str, PyState] = {}
        for name, slot in self.scalars:
            container, key, owner = _scalar_location(slot)
            value = container.get(key, MISSING)
            if is_py_state(value):
                base, n = name, 2
                while name in out:  # two closures' ``count``: names are for messages, each location is guarded
                    name, n = f"{base}#{n}", n + 1
                out[name] = PyState(slot, container, key, value, owner)
        for name, module in self.modules:
            for sub, m in module.named_modules():
                base = f"{name}.{sub}" if sub else name
                for key, value in vars(m).items():
                    if is_py_state(value) and not key.startswith("_"):
                        slot = Slot(f"{base}.{key}", module, _attr_steps(sub) + (("attr", key),))
                        out[slot.name] = PyState(slot, m.__dict__, key, value, m)
        for name, opt in self.optimizers:
            self._optimizer_python_state(name, opt, out)
        return out

    def _optimizer_python_state(self, name: str, opt, out: dict[str, PyState]) -> None:
        for key, value in vars(opt).items():
            if is_py_state(value) and not key.startswith("_"):
                out[f"{name}.{key}"] = PyState(Slot(f"{name}.{key}", opt, (("attr", key),)), opt.__dict__, key,
                                               value, opt)
        for g, group in enumerate(opt.param_groups):
            for key, value in group.items():
                if is_py_state(value):
                    sname = f"{name}.param_groups[{g}][{key!r}]"
                    slot = Slot(sname, opt, (("attr", "param_groups"), ("item", g), ("item", key)))
                    out[sname] = PyState(slot, group, key, value, None)
        for p, entry in opt.state.items():
            if isinstance(entry, dict):
                for key, value in entry.items():
                    if is_py_state(value):
                        slot = self.opt_state_slot(name, opt, p, key)
                        out[slot.name] = PyState(slot, entry, key, value, None)


def _module_tensor_attrs(module):
    """``(dotted path, tensor)`` for each public plain tensor attribute of ``module`` and its submodules."""
    for sub, m in module.named_modules():
        for key, value in vars(m).items():
            if isinstance(value, Tensor) and not key.startswith("_"):
                yield (f"{sub}.{key}" if sub else key), value
