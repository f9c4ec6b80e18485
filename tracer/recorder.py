"""The recorder: what ``eager.dispatch.apply`` tells a trace, kept as a tape of values and calls.

Values are numbered (``vid``) as they appear. A tensor is identified by object identity while the trace runs
(every tensor seen is kept alive, so identities are never reused); a tensor object the recorder has not seen
but whose array it has (autograd re-wraps saved outputs, in-place ops wrap the old value) is found by the
array's identity. Anything else is a *leaf*: an input, a parameter, optimizer state, or a constant, decided
when the trace ends (``tracer.build``).

The recorder implements the protocol the eager engine calls:

- ``record(prim, inputs, params, out)`` after every ``apply``;
- ``mutate(tensor, new)`` after an in-place op rebinds ``tensor`` to the value of ``new``;
- ``escape(tensor, kind, value)`` when a value leaves the graph (``bool``, ``float``, ``item``, ...).

    >>> import eager
    >>> from eager.autograd.mode import add_recorder
    >>> rec = Recorder()
    >>> x = eager.ones(2)
    >>> with add_recorder(rec):
    ...     y = (x * 2).exp()
    >>> [c.op for c in rec.calls]
    ['mul', 'exp']
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from eager.autograd.mode import _package_dirs
from eager.backend import to_numpy
from eager.control import Results
from eager.primitives import Aval
from eager.storage import memory_owner
from eager.tensor import Tensor
from tracer.snapshot import SavedTensor


class _Seen(NamedTuple):
    """A tensor the recorder has seen, the array it held then (None: unknown) and that value's id."""

    tensor: Tensor
    array: Any
    vid: int


class Ref:
    """A reference to a recorded value inside a call's argument list (scalars stay Python values)."""

    __slots__ = ("vid",)

    def __init__(self, vid: int):
        self.vid = vid

    def __repr__(self) -> str:
        return f"v{self.vid}"


@dataclass
class Call:
    op: str
    args: tuple
    params: dict
    out: int
    source: str


@dataclass
class Leaf:
    """A value the trace did not compute: where it came from and what it held when first seen."""

    vid: int
    tensor: Tensor | None
    data: Any
    version: int
    grad: Any
    input_index: int | None = None


@dataclass
class Escape:
    source: str
    filename: str
    lineno: int
    kind: str
    value: Any
    vid: int
    returned: bool = False   # the value is (also) the function's result: a traced call recomputes it


@dataclass
class Tape:
    """Everything one run recorded."""

    arrays: list = field(default_factory=list)      # vid -> array (kept alive: identities stay unique)
    calls: list[Call] = field(default_factory=list)
    leaves: dict[int, Leaf] = field(default_factory=dict)
    escapes: list[Escape] = field(default_factory=list)
    mutated: dict[int, Tensor] = field(default_factory=dict)   # id -> tensor rebound by an in-place op


def user_frame():
    """The innermost frame outside graphduel's packages: (``file:line``, full path, line number)."""
    dirs = _package_dirs()
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(dirs) and "contextlib" not in path:
            return f"{os.path.basename(path)}:{frame.f_lineno}", path, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", "<unknown>", 0


class Recorder:
    """Attach with ``eager.autograd.mode.add_recorder(rec)``; read ``rec.tape`` afterwards."""

    def __init__(self, inputs=(), known_before: dict[int, SavedTensor] | None = None):
        self.tape = Tape()
        self.calls = self.tape.calls
        self._by_tensor: dict[int, _Seen] = {}   # id(tensor) -> what it held when last seen
        self._by_data: dict[int, int] = {}       # id(array) -> vid
        self._by_owner: dict[int, list[int]] = {}  # id(the array owning the memory) -> the vids recorded in it
        self._keep: list = []                    # tensors and escaped values kept alive during the run
        self._known_before = known_before or {}  # id(tensor) -> the tensor and what it held before the run
        self.source_hint: str | None = None      # set by replays that know the original source line
        self.escape_values: dict[int, tuple[int, str]] = {}   # id(Python value) -> (vid, kind)
        for i, t in enumerate(inputs):
            if id(t) not in self._by_tensor:
                self._leaf(t, input_index=i)
            else:  # the same tensor passed twice: its own placeholder, reads resolve to the first
                vid = self._new_value(t._data, index=False)
                self.tape.leaves[vid] = Leaf(vid, t, t._data, t._version, t._grad, i)

    # ------------------------------------------------------------ values
    def _new_value(self, array, index: bool = True) -> int:
        vid = len(self.tape.arrays)
        self.tape.arrays.append(array)
        self._by_owner.setdefault(id(memory_owner(array)), []).append(vid)
        if index:
            self._by_data[id(array)] = vid
        return vid

    def _leaf(self, t: Tensor, input_index: int | None = None) -> int:
        vid = self._new_value(t._data)
        self.tape.leaves[vid] = Leaf(vid, t, t._data, t._version, t._grad, input_index)
        self._by_tensor[id(t)] = _Seen(t, t._data, vid)
        return vid

    def late_leaf(self, t: Tensor, data, version: int, grad) -> int:
        """A leaf for a tensor's value from before the run, found only after it (e.g. set with ``.data =``)."""
        vid = self._new_value(data, index=id(data) not in self._by_data)
        self.tape.leaves[vid] = Leaf(vid, t, data, version, grad)
        return vid

    def vid_of(self, t: Tensor) -> int:
        """The value a tensor holds now (recording it as a leaf if the trace never saw it)."""
        entry = self._by_tensor.get(id(t))
        data = t._data
        if entry is not None and entry.array is data:
            return entry.vid
        vid = self._by_data.get(id(data))
        if vid is None:
            if entry is not None:  # a known tensor whose array changed without ``mutate`` (``t.data = ...``)
                self.tape.mutated[id(t)] = t
            return self._leaf(t) if entry is None else self._rebound_leaf(t)
        self._by_tensor[id(t)] = _Seen(t, data, vid)
        return vid

    def vid_after(self, t: Tensor) -> int:
        """The value a tensor holds after the run (recording it as a leaf if the trace never saw it)."""
        vid = self.lookup(t)
        return vid if vid is not None else self.vid_of(t)

    def _rebound_leaf(self, t: Tensor) -> int:
        vid = self._new_value(t._data)
        self.tape.leaves[vid] = Leaf(vid, None, t._data, t._version, None)
        self._by_tensor[id(t)] = _Seen(t, t._data, vid)
        return vid

    def array_vid(self, array) -> int:
        """A non-Tensor array passed to an op: a constant leaf."""
        vid = self._by_data.get(id(array))
        if vid is None:
            self._keep.append(array)
            vid = self._new_value(array)
            self.tape.leaves[vid] = Leaf(vid, None, array, 0, None)
        return vid

    # ------------------------------------------------------------ the protocol
    def record(self, prim, inputs, params, out) -> None:
        args = []
        for x in inputs:
            if isinstance(x, Tensor):
                args.append(Ref(self.vid_of(x)))
            elif isinstance(x, np.ndarray) or hasattr(x, "__cuda_array_interface__"):
                args.append(Ref(self.array_vid(x)))
            else:
                args.append(x)
        source = self.source_hint or user_frame()[0]
        vid = self._new_value(out._data)
        self._by_tensor[id(out)] = _Seen(out, out._data, vid)
        self.calls.append(Call(prim.name, tuple(args), dict(params), vid, source))

    def mutate(self, tensor: Tensor, new: Tensor) -> None:
        if id(tensor) not in self._by_tensor:
            before = self._known_before.get(id(tensor))
            if before is not None:  # rebound before the trace read it: its old value becomes a leaf
                vid0 = self.late_leaf(tensor, before.data, before.version, before.grad)
            else:  # out of the tracer's reach: the old value is gone; the new value stands in for its type
                vid0 = self._new_value(tensor._data, index=False)
                self.tape.leaves[vid0] = Leaf(vid0, tensor, None, tensor._version - 1, tensor._grad)
            self._by_tensor[id(tensor)] = _Seen(tensor, None, vid0)
        self.tape.mutated[id(tensor)] = tensor
        vid = self.vid_of(new)
        self._by_tensor[id(tensor)] = _Seen(tensor, tensor._data, vid)
        self._by_data[id(tensor._data)] = vid  # the array was written in place: it holds the new value now

    def before_write(self, tensor: Tensor) -> None:
        """An in-place op is about to write ``tensor``'s memory: values recorded in that memory (the tensor's,
        its base's, its views') are copied first, so the tape keeps what each value was (``check`` compares them)."""
        for vid in self._by_owner.pop(id(memory_owner(tensor._data)), ()):  # the copies are nobody's memory
            self.tape.arrays[vid] = self.tape.arrays[vid].copy()

    def control(self, op: str, **kw):
        """``eager.cond`` / ``while_loop`` / ``scan`` under this recorder: one node with regions (tracer.regions)."""
        from tracer.regions import record_control
        return record_control(self, op, **kw)

    def escape(self, tensor: Tensor, kind: str, value) -> None:
        vid = self.vid_of(tensor)
        source, filename, lineno = user_frame()
        if kind == "nonzero":
            value = f"{int(np.count_nonzero(to_numpy(tensor._data)))} of {tensor._data.size} selected"
        if isinstance(value, (float, int, list)) and not isinstance(value, bool):
            self._keep.append(value)
            self.escape_values[id(value)] = (vid, kind)
        last = self.tape.escapes[-1] if self.tape.escapes else None
        if last is not None and last.kind == "item" and kind in ("float", "int") and last.vid == vid \
                and last.source == source:
            last.kind, last.value = kind, value  # float(t) reads t.item() first: one escape, named by the outer call
            return
        self.tape.escapes.append(Escape(source, filename, lineno, kind, value, vid))

    # ------------------------------------------------------------ reading back
    def aval(self, vid: int) -> Aval:
        a = self.tape.arrays[vid]
        if type(a) is tuple:  # a control-flow node's results (``tracer.regions``)
            return Results(Aval(tuple(v.shape), v.dtype) for v in a)
        return Aval(tuple(a.shape), a.dtype)

    def lookup(self, value) -> int | None:
        """The value id of a tensor after the run, or None if the trace never saw it or its array."""
        if not isinstance(value, Tensor):
            return None
        entry = self._by_tensor.get(id(value))
        if entry is not None and entry.array is value._data:
            return entry.vid
        return self._by_data.get(id(value._data))
