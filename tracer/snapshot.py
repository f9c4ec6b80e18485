"""Snapshots: how a run that must leave no trace (tracing, ``check``'s eager run) is undone.

``Snapshot.of(world, tensors)`` saves everything a run of the traced function may change: each known tensor's
array, version, ``.grad`` and autograd state, the ``__dict__`` and containers of every module and optimizer,
free tensor locations (closure cells, globals), the Python scalars the function names (``World.scalars``: a
global flag, a ``nonlocal`` counter) and the random generators. ``restore()`` puts it all back.

    >>> import eager
    >>> from eager import nn
    >>> from tracer.world import World
    >>> model = nn.Linear(2, 1)
    >>> before = model.weight.tolist()
    >>> snap = Snapshot.of(World.discover(model, ()))
    >>> model.weight.data = eager.zeros(1, 2); model.counter = 3
    >>> snap.restore()
    >>> model.weight.tolist() == before, hasattr(model, "counter")
    (True, False)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from eager.tensor import Tensor
from tracer.rng import RngState, rng_state, set_rng_state
from tracer.slots import MISSING, Slot
from tracer.world import World, is_py_state


class SavedTensor(NamedTuple):
    """A tensor and what it held when the snapshot was taken: its memory (the array object, which views share)
    and a copy of the values in it, which in-place writes during the run overwrite."""

    tensor: Tensor
    memory: Any
    data: Any
    version: int
    counter: Any
    grad: Any
    grad_fn: Any
    requires_grad: bool

    @classmethod
    def of(cls, t: Tensor) -> SavedTensor:
        return cls(t, t._data, t._data.copy(), t._version, t._vc, t._grad, t.grad_fn, t._requires_grad)

    def restore(self) -> None:
        """The tensor back in its old memory with its old values (views taken before the run stay valid)."""
        t = self.tensor
        if self.counter.value != self.version:  # written in place during the run
            self.memory[...] = self.data
        t._data, t._vc = self.memory, self.counter
        t._vc.value = self.version
        t._grad, t.grad_fn, t._requires_grad = self.grad, self.grad_fn, self.requires_grad


class Snapshot:
    """Saved values of tensors and containers; ``restore()`` puts them back."""

    def __init__(self):
        self.tensors: dict[int, SavedTensor] = {}
        self.dicts: dict[int, tuple[dict, dict]] = {}
        self.lists: list[tuple[list, list]] = []
        self.cells: list[tuple[Slot, Any]] = []
        self.scalars: list[tuple[Slot, Any]] = []   # Python scalars at their locations (Python state)
        self.rng: RngState | None = None

    @classmethod
    def of(cls, world: World, tensors=()) -> Snapshot:
        """Everything a run may change: tensors' values and .grad, module and optimizer containers, RNG."""
        snap = cls()
        for k in world.known.values():
            snap.add_tensor(k.tensor)
        for t in tensors:
            snap.add_tensor(t)
        for _, slot in world.free:
            t = slot.get()
            if isinstance(t, Tensor):
                snap.add_tensor(t)
            snap.cells.append((slot, t))
        for _, slot in world.scalars:
            snap.scalars.append((slot, slot.get()))
        for _, module in world.modules:
            snap._add_module(module)
        for _, opt in world.optimizers:
            snap._add_optimizer(opt)
        snap.rng = rng_state()
        return snap

    def _add_module(self, module) -> None:
        for m in module.modules():
            self.add_dict(m.__dict__)
            for key in ("_parameters", "_buffers", "_modules"):
                if isinstance(m.__dict__.get(key), dict):
                    self.add_dict(m.__dict__[key])

    def _add_optimizer(self, opt) -> None:
        self.add_dict(opt.__dict__)
        self.add_dict(opt.state)
        for entry in opt.state.values():
            if isinstance(entry, dict):
                self.add_dict(entry)
        self.lists.append((opt.param_groups, list(opt.param_groups)))
        for group in opt.param_groups:
            self.add_dict(group)

    def add_tensor(self, t: Tensor) -> None:
        if id(t) not in self.tensors:
            self.tensors[id(t)] = SavedTensor.of(t)
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
            else:
                _restore_keeping_python_state(d, saved)
        for lst, saved in self.lists:
            lst[:] = saved
        for slot, value in self.cells + (self.scalars if python else []):
            if value is not MISSING:
                slot.assign(value)
        for saved_tensor in self.tensors.values():
            saved_tensor.restore()
        if self.rng is not None:
            set_rng_state(self.rng)


def _restore_keeping_python_state(d: dict, saved: dict) -> None:
    for key in [k for k in d if k not in saved and not is_py_state(d[k])]:
        del d[key]
    for key, value in saved.items():
        if not is_py_state(value):
            d[key] = value
