"""``trace`` and ``Traced``: record one run, replay it on new inputs, keep a cache of signatures.

A trace runs the function once through the eager engine with a recorder attached, builds a Graph and a Plan
(``tracer.build``), lowers the graph (``lower(graph) -> executable``, default: the static executor), and then
puts every tensor, ``.grad``, optimizer-state entry, Python attribute and random generator back as it was:
**tracing has no side effects**, so calling the traced step N times trains exactly like N eager steps.

When a run changes the *layout* of state (a ``.grad`` appears, an optimizer creates its moments on the first
step), the first call and the later calls run different programs. The trace then records a second run
starting from the state the first one left (the steady state) before restoring everything; both go into the
cache under guards on that layout, so call 1 runs the first graph and calls 2..N the second. With a custom
``lower`` (the compiler), the first graph runs on the static executor and is lowered only if it runs again.

    >>> import eager
    >>> traced = trace(lambda x: (x * 2).exp(), eager.zeros(3))
    >>> traced(eager.ones(3)).tolist() == (eager.ones(3) * 2).exp().tolist()
    True
    >>> print(traced.graph)  # doctest: +ELLIPSIS
    graph(%0: f32[3] x):
      %1: f32[3] = mul(%0, 2)    # <doctest ...>:1
      %2: f32[3] = exp(%1)    # <doctest ...>:1
      return (%2)
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from operator import attrgetter
from typing import Any, NamedTuple

from eager.autograd.mode import MODE, add_recorder
from eager.storage import assign
from eager.tensor import Tensor
from tracer.assumptions import Assumption, Ledger, python_state_site
from tracer.build import Plan, RunRecord, build, occupants
from tracer.conversions import convert
from tracer.executor import default_lower
from tracer.ir import Graph
from tracer.pytree import LEAF, flatten, unflatten
from tracer.recorder import Recorder
from tracer.signature import (
    SignatureError,
    argument_names,
    check_arity,
    explain_change,
    format_signature,
    signature_of,
)
from tracer.slots import FETCH_ERRORS, MISSING, chain, describe_layout, item_lookup, layout_of
from tracer.snapshot import Snapshot
from tracer.world import World

logger = logging.getLogger("graphduel.tracer")
_ORDER = itertools.count()


class PyGuard(NamedTuple):
    """Python state the run read and did not change: ``container[key]`` must still be ``value``."""

    name: str
    container: dict
    key: Any
    value: Any


class Segment(NamedTuple):
    """A run of readers resolved in one lookup: ``get(root)`` gives one tensor, or a tuple of them (``many``)."""

    root: Any
    get: Any
    many: bool


class Entry:
    """One traced program: its graph, plan, executable and guards (one signature, one state layout)."""

    def __init__(self, key: tuple, plan: Plan, exe, seconds: float, py_guard: list[PyGuard], names: list[str],
                 steady: bool):
        self.key = key
        self.plan = plan
        self.graph: Graph = plan.graph
        self.exe = exe
        self.trace_seconds = seconds
        self.py_guard = py_guard       # [PyGuard]: Python state the run did not change
        self.names = names
        self.steady = steady           # traced from the state a previous run left (see module docstring)
        read = {slot.name for slot in plan.readers}
        # layouts of slots the call reads are checked while gathering; the others here
        self.layout_guard = [g for g in plan.guard if g.slot.name not in read]
        self.reader_layouts = plan.reader_layouts
        # an update whose location the call just read rebinds the tensor gather found there, without resolving
        # the path again (opt.state[param].exp_avg costs several lookups); not when finish first puts a fresh
        # tensor at that location
        # matched by slot identity, not name: names are not unique (two closures' ``count``, a global ``bias``
        # beside a module's ``bias``)
        reader_of = {id(slot): i for i, slot in enumerate(plan.readers)}
        fresh = {id(slot) for slot in plan.extra_slots}
        self.update_readers = [None if type(t) is int or id(t) in fresh else reader_of.get(id(t))
                               for t in plan.update_targets]
        self._fast = not py_guard and not self.layout_guard
        self.order = next(_ORDER)
        self._segments = _reader_segments(plan.readers)

    def guard_ok(self) -> bool:
        if self._fast:
            return True
        for _, d, k, v in self.py_guard:
            x = d.get(k, MISSING)
            if x is not v and (type(x) is not type(v) or x != v):
                return False
        for slot, layout in self.layout_guard:
            if layout_of(slot.get()) != layout:
                return False
        return True

    def guard_failures(self) -> list[str]:
        out = []
        for name, d, k, v in self.py_guard:
            x = d.get(k, MISSING)
            if x is not v and (type(x) is not type(v) or x != v):
                out.append(f"Python state {name}: {v!r} -> {'missing' if x is MISSING else repr(x)}")
        for slot, layout in self.plan.guard:
            now = layout_of(slot.get())
            if now != layout:
                out.append(f"{slot.name}: {describe_layout(layout)} -> {describe_layout(now)}")
        return out

    def matches(self, leaves: list) -> bool:
        """Whether a call with these (signature-matching) arguments may run this program now."""
        return self.guard_ok() and self.gather(leaves) is not None

    def gather(self, leaves: list, tensors: list | None = None) -> list | None:
        """One array per placeholder; None when a param/state location no longer holds the traced type.
        ``tensors``, when given, receives the tensor found at each param/state location (for ``finish``)."""
        arrays = [t._data for t in leaves]
        layouts = iter(self.reader_layouts)
        found = [] if tensors is None else tensors
        start = len(found)
        try:
            for root, get, many in self._segments:
                if many:
                    found.extend(get(root))
                else:
                    found.append(get(root))
            for t in found[start:]:
                a = t._data
                shape, dtype, array_type = next(layouts)
                if a.shape != shape or a.dtype != dtype or type(a) is not array_type:
                    return None
                arrays.append(a)
        except FETCH_ERRORS:  # a location is missing or holds no tensor
            return None
        return arrays

    def finish(self, leaves: list, results: list, tensors: list | None = None):
        """Write state back and build the caller's result from the executable's arrays. ``tensors``: what
        ``gather`` found at the param/state locations of this call."""
        plan = self.plan
        n = len(plan.conversions)
        k = n + len(plan.extra_slots)
        for slot, arr in zip(plan.extra_slots, results[n:k]):
            slot.assign(Tensor._make(arr, False, None))
        for target, arr, reader in zip(plan.update_targets, results[k:], self.update_readers):
            if type(target) is int:
                t = leaves[target]
            elif reader is not None and tensors:
                t = tensors[reader]
            else:
                target.rebind(arr)
                continue
            assign(t, arr)
        for slot, value in plan.static_writes:
            slot.assign(value)
        if plan.out_spec == LEAF:
            conv = plan.conversions[0]
            return Tensor._make(results[0], False, None) if conv is None else convert(results[0], conv)
        outs = [Tensor._make(a, False, None) if c is None else convert(a, c)
                for a, c in zip(results, plan.conversions)]
        return unflatten(plan.out_spec, outs)

    def run(self, leaves: list, arrays: list, tensors: list | None = None):
        return self.finish(leaves, self.exe.run(arrays), tensors)


def _reader_segments(readers) -> list[Segment]:
    """A ``Segment`` per run of readers: consecutive attribute paths from one root (a module's
    parameters) resolve in one C-level ``attrgetter`` call returning all their tensors (``many``), consecutive
    keys of one dict (an optimizer's state for one parameter) in one lookup of the dict; any other slot is its
    own segment, resolved by its compiled path (``Slot.fetch``)."""
    segments: list[Segment] = []
    run: list = []

    def close():
        if len(run) > 1 and run[0]._get_path is not None:
            segments.append(Segment(run[0].root, attrgetter(*(slot._get_path for slot in run)), True))
        elif len(run) > 1:
            keys = [slot.steps[-1][1] for slot in run]
            segments.append(Segment(run[0].root, chain([run[0]._parent, item_lookup(*keys)]), True))
        elif run:
            segments.append(Segment(run[0].root, run[0].fetch, False))
        run.clear()

    def joins(slot) -> bool:
        first = run[0]
        if first.root is not slot.root:
            return False
        if first._get_path is not None:
            return slot._get_path is not None
        return (slot._get_path is None and slot.steps[-1][0] == first.steps[-1][0] == "item"
                and len(slot.steps) == len(first.steps)
                # keys by identity: a key may be a tensor (opt.state[param]), whose == is elementwise
                and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(slot.steps[:-1], first.steps[:-1])))
    for slot in readers:
        if run and not joins(slot):
            close()
        run.append(slot)
    close()
    return segments


class RunOnceFirst:
    """Runs ``graph`` on the static executor the first time, lowers it with ``lower`` when it runs again (the
    state it expects was re-created, e.g. a new optimizer put in place of the old)."""

    def __init__(self, graph: Graph, lower):
        self.graph, self.lower = graph, lower
        self.lowered = None
        self.static_runs = 0

    def run(self, arrays: list) -> list:
        if self.lowered is not None:
            return self.lowered.run(arrays)
        if self.static_runs == 0:
            self.static_runs = 1
            return default_lower(self.graph).run(arrays)
        self.lowered = self.lower(self.graph)
        return self.lowered.run(arrays)


class Traced:
    """A function specialised to input signatures; call it like the original (see ``tracer.trace``)."""

    def __init__(self, fn, *, strict: bool = False, lower=None, cache_size: int = 8, name: str | None = None,
                 extra_params: dict | None = None):
        if cache_size < 1:
            raise ValueError(f"trace: cache_size must be >= 1, got {cache_size}")
        self.fn = fn
        self.strict = strict
        self.lower = lower or default_lower
        self.cache_size = cache_size
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.retrace_count = 0
        self.ledger = Ledger()
        self._extra_params = extra_params
        self._cache: OrderedDict[tuple, list[Entry]] = OrderedDict()
        self._latest: Entry | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        if MODE.get().recorders:  # inside another trace: run the Python so the outer recorder sees the ops
            return self.fn(*args, **kwargs)
        leaves, key = signature_of(args, kwargs)
        if len(leaves) > 1 and len({id(t) for t in leaves}) != len(leaves):
            key = key + (_alias_key(leaves),)
        bucket = self._cache.get(key)
        if bucket is not None:
            for i, entry in enumerate(bucket):
                if entry.guard_ok():
                    tensors: list = []
                    arrays = entry.gather(leaves, tensors)
                    if arrays is not None:
                        if i:
                            self._to_front(bucket, i, entry)
                        return entry.run(leaves, arrays, tensors)
        entry = self._miss(args, kwargs, leaves, key)
        tensors = []
        arrays = entry.gather(leaves, tensors)
        if arrays is None:
            raise RuntimeError(f"tracer: the program just traced for {self.name} does not fit the current state "
                               f"({'; '.join(entry.guard_failures()) or 'a param/state location changed type'}); "
                               "was the state changed from another thread while tracing?")
        return entry.run(leaves, arrays, tensors)

    def _to_front(self, bucket: list, i: int, entry: Entry) -> None:
        """Most recently used first: a training step's first-call program runs once, and checking its guards before
        the steady program's on every call cost 1.5 us. Under the lock (another thread may be inserting or moving),
        and skipped when it is busy: the order is only a speed-up."""
        if self._lock.acquire(blocking=False):
            try:
                if i < len(bucket) and bucket[i] is entry:
                    bucket.insert(0, bucket.pop(i))
            finally:
                self._lock.release()

    def entry_for(self, *args, **kwargs) -> Entry:
        """The cache entry a call with these arguments would run (tracing it if needed)."""
        leaves, key = signature_of(args, kwargs)
        if len(leaves) > 1 and len({id(t) for t in leaves}) != len(leaves):
            key = key + (_alias_key(leaves),)
        for entry in self._cache.get(key, ()):
            if entry.matches(leaves):
                return entry
        return self._miss(args, kwargs, leaves, key)

    def _miss(self, args, kwargs, leaves, key) -> Entry:
        with self._lock:
            check_arity(self.fn, args, kwargs, self.name)
            names = self._input_names(args, kwargs)
            bucket = self._cache.get(key)
            if self._latest is not None:
                if bucket is None:
                    old = self._latest.key
                    reasons = explain_change(old, key, argument_names(self.fn, max(len(old), len(key))))
                    if self.strict:
                        arg_names = argument_names(self.fn, len(key))
                        raise SignatureError(
                            f"{self.name} was traced for {format_signature(old, arg_names)} and strict=True, but "
                            f"was called with {format_signature(key, arg_names)}: {'; '.join(reasons)}. Call it "
                            "with the traced signature, or trace with strict=False to retrace automatically.")
                    why = "; ".join(reasons) or "new signature"
                else:
                    closest = min((e.guard_failures() for e in bucket), key=len)
                    why = "; ".join(closest) or "state changed"
                self.retrace_count += 1
                logger.info("retracing %s (retrace #%d): %s", self.name, self.retrace_count, why)
            entries = self._trace(args, kwargs, leaves, key, names)
            self._insert(key, entries)
            return entries[0]

    def _insert(self, key, entries: list[Entry]) -> None:
        bucket = self._cache.setdefault(key, [])
        for e in reversed(entries):
            bucket.insert(0, e)
        del bucket[self.cache_size:]
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            evicted, _ = self._cache.popitem(last=False)
            logger.info("%s: trace cache full (%d signatures): dropped %s", self.name, self.cache_size,
                        format_signature(evicted, argument_names(self.fn, len(evicted))))
        self._latest = entries[-1]

    def _input_names(self, args, kwargs) -> list[str]:
        names: list[str] = []
        leaves: list = []
        for name, a in zip(argument_names(self.fn, len(args)), args):
            flatten(a, leaves, names, name)
        for k in sorted(kwargs):
            flatten(kwargs[k], leaves, names, k)
        return names

    # ------------------------------------------------------------ tracing
    def _trace(self, args, kwargs, leaves, key, names) -> list[Entry]:
        world = World.discover(self.fn, args, self._extra_params)
        snap = Snapshot.of(world, leaves)
        try:
            first = self._record(world, snap, args, kwargs, leaves, key, names, steady=False)
            entries = [first]
            if any(layout_of(slot.get()) != layout for slot, layout in first.plan.guard):
                # the run changed the state's layout: record the program later calls will run
                for t in leaves:
                    saved = snap.tensors.get(id(t))
                    if saved is not None:
                        saved.restore()
                world2 = World.discover(self.fn, args, self._extra_params)
                snap2 = Snapshot.of(world2, leaves)
                steady = self._record(world2, snap2, args, kwargs, leaves, key, names, steady=True)
                steady.exe = self.lower(steady.graph)
                same = steady.graph.fingerprint() == first.graph.fingerprint()  # one lowering per distinct program
                first.exe = steady.exe if same else self._lower_first(first.graph)
                entries.append(steady)
            else:
                first.exe = self.lower(first.graph)
        finally:
            snap.restore()
        _debug(self, entries)
        return entries

    def _lower_first(self, graph: Graph):
        """The executable of a first-call program that a steady program follows. With a custom ``lower`` (the
        compiler), that program usually runs once (the call that creates the optimizer state), so it is not
        lowered until it runs a second time: the first call does not wait for a compile it would not repay."""
        if self.lower is default_lower:
            return default_lower(graph)
        return RunOnceFirst(graph, self.lower)

    def _record(self, world: World, snap, args, kwargs, leaves, key, names, steady: bool) -> Entry:
        t0 = time.perf_counter()
        pre_slots = occupants(world)
        py_before = world.python_state()
        rec = Recorder(leaves, snap.tensors)
        with add_recorder(rec):
            result = self.fn(*args, **kwargs)
        plan = build(RunRecord(rec, world, result, pre_slots, names, snap.tensors))
        py_after = world.python_state()
        py_guard = []
        for name, ps in py_before.items():
            now = py_after.get(name)
            if now is not None and type(now.value) is type(ps.value) and now.value == ps.value:
                py_guard.append(PyGuard(name, ps.container, ps.key, ps.value))
            elif now is not None:
                where = python_state_site(ps.owner, ps.key) if ps.owner is not None else None
                self.ledger.add_python_state(name, ps.value, now.value, where)
        for esc, node in plan.escapes:
            self.ledger.add_escape(esc, node)
        return Entry(key, plan, None, time.perf_counter() - t0, py_guard, names, steady)

    # ------------------------------------------------------------ inspection
    @property
    def graph(self) -> Graph:
        """The graph of the most recently traced signature (its steady-state program)."""
        return self._latest.graph

    @property
    def graphs(self) -> list[Graph]:
        """Every cached graph, in the order traced (a step that creates state has two: first and steady)."""
        return [e.graph for e in self.entries]

    @property
    def entries(self) -> list[Entry]:
        """Every cached program, in the order traced."""
        return sorted((e for bucket in self._cache.values() for e in bucket), key=lambda e: e.order)

    @property
    def executable(self):
        return self._latest.exe

    @property
    def code(self) -> str:
        """The latest graph as generated Python source (what the static executor runs)."""
        from tracer.codegen import python_source
        return python_source(self.graph)

    @property
    def assumptions(self) -> list[Assumption]:
        """Every frozen site found while tracing (escapes and Python state), in the order first seen."""
        return list(self.ledger)

    @property
    def trace_seconds(self) -> float:
        return self._latest.trace_seconds

    @property
    def signature(self) -> str:
        key = self._latest.key
        return format_signature(key, argument_names(self.fn, len(key)))

    def check(self, *args, rtol: float | None = None, atol: float | None = None, **kwargs):
        """Run eager and traced on these inputs and report where they diverge (see ``tracer.check``)."""
        from tracer.check import check
        return check(self, args, kwargs, rtol=rtol, atol=atol)

    def save(self, path) -> None:
        """Save the latest graph with its parameters and state (see ``tracer.serialization``)."""
        from tracer.serialization import save
        save(self, path)

    def __repr__(self) -> str:
        n = len(self.entries)
        return (f"<Traced {self.name}: {n} cached program{'s' if n != 1 else ''}, "
                f"{self.retrace_count} retraces, {len(self.ledger)} assumptions>")


def _debug(traced: Traced, entries: list[Entry]) -> None:
    """``GRAPHDUEL_DEBUG=1``: one line per trace; 2: the traced graphs; 3: the static executor's source too."""
    try:
        level = int(os.environ.get("GRAPHDUEL_DEBUG", "0") or 0)
    except ValueError:
        return
    if level <= 0:
        return
    e = entries[-1]
    print(f"[graphduel] traced {traced.name}{format_signature(e.key, e.names)}: "
          f"{' + '.join(str(len(x.graph.calls)) for x in entries)} calls, "
          f"{sum(x.trace_seconds for x in entries) * 1e3:.1f} ms, {len(traced.ledger)} assumptions", file=sys.stderr)
    for x in entries if level >= 2 else ():
        print(x.graph, file=sys.stderr)
        source = getattr(x.exe, "source", None)
        if level >= 3 and isinstance(source, str):
            print(source, file=sys.stderr)


def _alias_key(leaves) -> tuple:
    first: dict[int, int] = {}
    return ("alias", tuple(first.setdefault(id(t), i) for i, t in enumerate(leaves)))


def trace(fn, *example_inputs, strict: bool = False, lower=None, cache_size: int = 8, **example_kwargs) -> Traced:
    """Trace ``fn`` (a function or a Module) on example inputs; returns a callable ``Traced``.

    ``strict=True`` refuses a call with another signature (``SignatureError``) instead of retracing;
    ``lower(graph) -> executable`` (with ``executable.run(arrays) -> arrays``) replaces the static executor;
    ``cache_size`` bounds the number of signatures kept (least recently traced dropped first).

        >>> import eager
        >>> from eager import nn
        >>> model = nn.Linear(3, 2)
        >>> traced = trace(model, eager.ones(4, 3))
        >>> [n.name for n in traced.graph.placeholders]
        ['input', 'weight', 'bias']
    """
    traced = Traced(fn, strict=strict, lower=lower, cache_size=cache_size)
    traced.entry_for(*example_inputs, **example_kwargs)
    return traced


__all__ = ["Entry", "Traced", "trace", "SignatureError"]
