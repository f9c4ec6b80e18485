"""``trace`` and ``Traced``: record one run, replay it on new inputs, keep a cache of signatures.

A trace runs the function once through the eager engine with a recorder attached, builds a Graph and a Plan
(``tracer.build``), lowers the graph (``lower(graph) -> executable``, default: the static executor), and then
puts every tensor, ``.grad``, optimizer-state entry, Python attribute and random generator back as it was:
**tracing has no side effects**, so calling the traced step N times trains exactly like N eager steps.

Guards (``guards="retrace"``, the default): a value that left the graph while tracing and may have decided
control flow or been baked in (``bool(t)``, ``float(t)``, ``.item()``, a boolean mask; see
``tracer.assumptions.escape_use``) is an extra output of the graph, compared after each call with the value
seen while tracing, before anything is written back; Python state the run changed (``self.counter += 1``) is
compared on entry and its new value written back after the call. A failed guard runs the program traced for
that outcome (a trace tree: the programs of one signature, told apart by their guards' outcomes), or traces
one (counted in ``retrace_count``, logged on ``graphduel.tracer`` with the source line), so the call returns
what eager would. At most ``cache_size`` programs are kept per signature; past that a call whose guards all
fail runs the function eagerly (a logged warning, counted in ``eager_fallbacks``), as ``torch.compile`` does
past its ``cache_size_limit``. ``guards="raise"`` raises ``GuardError`` naming the line instead;
``guards="off"`` replays the frozen program as ``torch.jit.trace`` does (for measurement).

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
import warnings
from collections import OrderedDict, deque
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from eager.autograd.mode import MODE, add_recorder
from eager.primitives import PRIMITIVES
from eager.storage import assign
from eager.tensor import Tensor
from tracer.assumptions import (
    Assumption,
    GuardError,
    Ledger,
    TracerWarning,
    describe_outcome,
    outcome,
    python_state_site,
)
from tracer.build import Plan, RunRecord, build, occupants, settle_result
from tracer.conversions import convert
from tracer.executor import default_lower
from tracer.ir import Graph
from tracer.pytree import LEAF, flatten, unflatten
from tracer.recorder import Recorder
from tracer.rng import rng_state, set_rng_state
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
GUARD_MODES = ("retrace", "raise", "off")


class PyGuard(NamedTuple):
    """Python state the run read and did not change: ``container[key]`` must still be ``value``."""

    name: str
    container: dict
    key: Any
    value: Any


class StateChange(NamedTuple):
    """Python state the run changed: a call of this program must find ``before`` and leaves ``after``."""

    name: str
    before: Any
    after: Any
    source: str


class Segment(NamedTuple):
    """A run of readers resolved in one lookup: ``get(root)`` gives one tensor, or a tuple of them (``many``)."""

    root: Any
    get: Any
    many: bool


class Entry:
    """One traced program: its graph, plan, executable and guards (one signature, one state layout)."""

    def __init__(self, key: tuple, plan: Plan, exe, seconds: float, py_guard: list[PyGuard], names: list[str],
                 steady: bool, state_guard: list[PyGuard] = (), state_changes: list[StateChange] = ()):
        self.key = key
        self.plan = plan
        self.graph: Graph = plan.graph
        self.exe = exe
        self.trace_seconds = seconds
        self.py_guard = py_guard       # [PyGuard]: Python state the run did not change
        self.state_guard = list(state_guard)  # [PyGuard]: Python state the run changed, at its value before the run
        self.state_changes = list(state_changes)  # every Python state change the run made (guarded or not)
        # written back after a call (guards on): what eager leaves there
        self.py_writes = [(g.container, g.key, c.after) for g, c in zip(self.state_guard, self.state_changes)]
        self.value_guards = plan.value_guards
        self.names = names
        self.steady = steady           # traced from the state a previous run left (see module docstring)
        self.random = any(PRIMITIVES[n.op].random for n in plan.graph.calls)
        self._checks = [(g.output, _checker(g.kind, g.expected)) for g in self.value_guards]
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
        self._fast = not py_guard and not self.layout_guard and not self.state_guard
        self.order = next(_ORDER)
        self._segments = _reader_segments(plan.readers)
        n = len(plan.conversions) + len(plan.extra_slots)
        self._updates_from = n + plan.guard_outputs   # results: user outputs, writes, guard values, updates

    def guard_ok(self) -> bool:
        if self._fast:
            return True
        for guards in (self.py_guard, self.state_guard):
            for _, d, k, v in guards:
                x = d.get(k, MISSING)
                if x is not v and (type(x) is not type(v) or x != v):
                    return False
        for slot, layout in self.layout_guard:
            if layout_of(slot.get()) != layout:
                return False
        return True

    def guard_failures(self) -> list[str]:
        out = self.state_failures()
        for name, d, k, v in self.py_guard:
            x = d.get(k, MISSING)
            if x is not v and (type(x) is not type(v) or x != v):
                out.append(f"Python state {name}: {v!r} -> {'missing' if x is MISSING else repr(x)}")
        for slot, layout in self.plan.guard:
            now = layout_of(slot.get())
            if now != layout:
                out.append(f"{slot.name}: {describe_layout(layout)} -> {describe_layout(now)}")
        return out

    def state_failures(self) -> list[str]:
        """The guards on Python state the run changed that fail now, in words (with the line that changes it)."""
        out = []
        for (name, d, k, v), change in zip(self.state_guard, self.state_changes):
            x = d.get(k, MISSING)
            if x is not v and (type(x) is not type(v) or x != v):
                out.append(f"guard on Python state {name} (changed at {change.source}): it was {v!r} when traced "
                           f"and is {'missing' if x is MISSING else repr(x)} now")
        return out

    def only_state_fails(self) -> bool:
        """Whether this program would fit the call but for a guard on Python state the run changed."""
        if not self.state_guard or not self.state_failures():
            return False
        for _, d, k, v in self.py_guard:
            x = d.get(k, MISSING)
            if x is not v and (type(x) is not type(v) or x != v):
                return False
        return all(layout_of(slot.get()) == layout for slot, layout in self.layout_guard)

    def guards_hold(self, results: list) -> bool:
        """Whether every value guard holds on the executable's ``results`` (the per-call check: a few us)."""
        for i, holds in self._checks:
            if not holds(results[i]):
                return False
        return True

    def failed_value_guard(self, results: list) -> tuple[int, Any] | None:
        """The first value guard the executable's ``results`` break, with the outcome seen; None if all hold."""
        for j, g in enumerate(self.value_guards):
            seen = outcome(g.kind, results[g.output])
            if seen != g.expected:
                return j, seen
        return None

    def direct(self) -> bool:
        """Whether a run needs nothing put back when a guard fails (no random draws, no state written in place)."""
        return not self.random and getattr(self.exe, "replay", None) is None

    def consistent_with(self, failed: Entry, j: int, seen) -> bool:
        """Whether this program was traced for what a run of ``failed`` saw: the same outcomes at its guards
        before ``j`` and ``seen`` at guard ``j`` (a child of ``failed``'s prefix in the trace tree)."""
        mine, theirs = self.value_guards, failed.value_guards
        if len(mine) <= j:
            return False
        if any(a.key != b.key or a.expected != b.expected for a, b in zip(mine[:j], theirs[:j])):
            return False
        return mine[j].key == theirs[j].key and mine[j].expected == seen

    def guard_message(self, j: int, seen) -> str:
        """A failed value guard in words: the line, what was seen while tracing and what now."""
        g = self.value_guards[j]
        return guard_failure_message(g.source, g.kind, self.plan.escapes[g.site].node, g.expected, seen)

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
        for target, arr, reader in zip(plan.update_targets, results[self._updates_from:], self.update_readers):
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
        for d, key, value in self.py_writes:
            d[key] = value
        if plan.out_spec == LEAF:
            conv = plan.conversions[0]
            return Tensor._make(results[0], False, None) if conv is None else convert(results[0], conv)
        outs = [Tensor._make(a, False, None) if c is None else convert(a, c)
                for a, c in zip(results, plan.conversions)]
        return unflatten(plan.out_spec, outs)

    def run(self, leaves: list, arrays: list, tensors: list | None = None):
        return self.finish(leaves, self.exe.run(arrays), tensors)


# how each kind of escaped value is named in a failed guard's message
ESCAPE_WHAT = {"bool": "bool(tensor)", "item": "tensor.item()", "float": "float(tensor)", "int": "int(tensor)",
               "tolist": "tensor.tolist()", "numpy": "the array of tensor.numpy()", "nonzero": "a boolean mask",
               "tensor": "the value copied by eager.tensor(...)"}


def guard_failure_message(source: str, kind: str, node: str | None, expected, seen) -> str:
    """A failed value guard in words (a traced call's, a loaded graph's): the line, the value seen while tracing
    and the value now (``tracer.assumptions.outcome``s)."""
    where = f" (node {node})" if node else ""
    return (f"guard failed at {source}: {ESCAPE_WHAT.get(kind, kind)}{where} was {describe_outcome(kind, expected)} "
            f"while tracing and is {describe_outcome(kind, seen)} on this call")


def _checker(kind: str, expected):
    """A fast ``array -> bool``: whether a result gives the guard's expected outcome (``outcome`` does the
    general case: other array types, NaN, arrays compared whole)."""
    if kind == "bool" and type(expected) is bool:
        def holds(a):
            return bool(a) is expected if type(a) is np.ndarray else outcome(kind, a) == expected
        return holds
    if kind in ("item", "float", "int") and type(expected) in (bool, int, float):
        to = {"item": None, "float": float, "int": int}[kind]

        def holds(a):
            if type(a) is not np.ndarray or a.size != 1:
                return outcome(kind, a) == expected
            v = a.item()
            return (v if to is None else to(v)) == expected
        return holds
    return lambda a: outcome(kind, a) == expected


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


class _Undo:
    """What a guarded run must put back when a guard fails: the random generators it advanced, and state arrays
    an executable wrote in place (a CUDA-graph replay donates the state's buffers)."""

    __slots__ = ("rng", "arrays", "copies")

    def __init__(self, entry: Entry, arrays: list):
        self.rng = rng_state() if entry.random else None
        donates = getattr(entry.exe, "replay", None) is not None
        self.arrays = arrays if donates else None
        self.copies = [a.copy() for a in arrays] if donates else None

    def restore(self) -> None:
        if self.rng is not None:
            set_rng_state(self.rng)
        for a, c in zip(self.arrays or (), self.copies or ()):
            a[...] = c


class Traced:
    """A function specialised to input signatures; call it like the original (see ``tracer.trace``)."""

    def __init__(self, fn, *, strict: bool = False, lower=None, cache_size: int = 8, name: str | None = None,
                 extra_params: dict | None = None, guards: str = "retrace"):
        if cache_size < 1:
            raise ValueError(f"trace: cache_size must be >= 1, got {cache_size}")
        if guards not in GUARD_MODES:
            raise ValueError(f"trace: guards must be one of {', '.join(map(repr, GUARD_MODES))}, got {guards!r}: "
                             "'retrace' (a failed guard retraces), 'raise' (it raises GuardError) or 'off' (no guards: "
                             "frozen values are replayed as traced)")
        self.fn = fn
        self.strict = strict
        self.lower = lower or default_lower
        self.cache_size = cache_size
        self.guards = guards
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.retrace_count = 0
        self.guard_failures = 0        # calls on which a guard of the program that fit the call failed
        self.eager_fallbacks = 0       # calls run eagerly: a guard failed and cache_size programs were traced
        self.retrace_reasons: deque[str] = deque(maxlen=32)   # the latest retraces and fallbacks, with why
        self.ledger = Ledger(guards)
        self._extra_params = extra_params
        self._cache: OrderedDict[tuple, list[Entry]] = OrderedDict()
        self._latest: Entry | None = None
        self._lock = threading.Lock()
        self._executables: OrderedDict[str, Any] = OrderedDict()   # graph fingerprint -> executable
        self._full_warned: set = set()

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
                        if not entry.value_guards:
                            return entry.run(leaves, arrays, tensors)
                        if entry.direct():  # the usual guarded call: run, compare on the host, write back
                            results = entry.exe.run(arrays)
                            if entry.guards_hold(results):
                                return entry.finish(leaves, results, tensors)
                            return self._call(args, kwargs, leaves, key, None,
                                              failed=self._guard_failed(entry, results, None))[0]
                        return self._call(args, kwargs, leaves, key, (entry, arrays, tensors))[0]
        return self._call(args, kwargs, leaves, key, None)[0]

    def _call(self, args, kwargs, leaves, key, fitting, observe=None, notes: list | None = None, failed=None):
        """A call that is not the plain fast path: run the program that fits, check its value guards, and on a
        failure run the program traced for what it saw, or trace one, or run eagerly. Returns (result, the entry
        whose results were returned, or None for an eager run). ``observe(entry, arrays)`` is told of each run
        before it starts; ``notes`` receives each guard failure in words (``check`` uses both); ``failed``: the
        failure (entry, guard index, outcome seen) of a run the caller made already."""
        tried: set[int] = {id(failed[0])} if failed is not None else set()
        for _ in range(self.cache_size + 2):
            fresh = False
            if fitting is None:
                fitting = self._fitting(leaves, key, failed, tried)
            if fitting is None:
                entry, why = self._retrace_for(args, kwargs, leaves, key, failed, notes)
                if entry is None:
                    return self._eager(args, kwargs, key, why, notes), None
                tensors: list = []
                arrays = entry.gather(leaves, tensors)
                if arrays is None:
                    why = "; ".join(entry.guard_failures()) or "a param/state location changed type"
                    raise RuntimeError(f"tracer: the program just traced for {self.name} does not fit the current "
                                       f"state ({why}); was the state changed from another thread while tracing?")
                fitting, fresh = (entry, arrays, tensors), True
            entry, arrays, tensors = fitting
            if observe is not None:
                observe(entry, arrays)
            if not entry.value_guards:
                return entry.run(leaves, arrays, tensors), entry
            undo = _Undo(entry, arrays)
            results = entry.exe.run(arrays)
            if entry.guards_hold(results):
                return entry.finish(leaves, results, tensors), entry
            undo.restore()  # nothing was written back yet: the call starts again from the same state
            failed, fitting = self._guard_failed(entry, results, notes), None
            if fresh:  # traced from these very inputs and already disagreeing: the value is not a function of them
                self._log_fallback(key, f"{entry.guard_message(*failed[1:])}, right after tracing it on these "
                                        "inputs (the value differs between two runs)")
                return self._eager(args, kwargs, key, None, notes), None
            tried.add(id(entry))
        return self._eager(args, kwargs, key, "no traced program's guards held", notes), None

    def _guard_failed(self, entry: Entry, results: list, notes: list | None) -> tuple:
        """Count and report a failed value guard (raise it under ``guards="raise"``); returns the failure."""
        j, seen = entry.failed_value_guard(results)
        self.guard_failures += 1
        message = f"{self.name}: {entry.guard_message(j, seen)}"
        if notes is not None:
            notes.append(message)
        if self.guards == "raise":
            raise GuardError(f"{message}. The trace froze this value (trace(..., guards='raise')); trace with "
                             "guards='retrace' (the default) to retrace for each outcome, or keep the decision in "
                             "the graph (eager.cond, tracer.script, or tensor ops instead of Python control flow).")
        logger.info("%s", message)
        return entry, j, seen

    def _fitting(self, leaves, key, failed, tried: set) -> tuple | None:
        """(entry, arrays, tensors) of a cached program that fits the call (its entry guards hold) and, after a
        failed value guard, was traced for the outcome seen; None if there is none."""
        for entry in self._cache.get(key, ()):
            if id(entry) in tried or not entry.guard_ok():
                continue
            if failed is not None and not entry.consistent_with(*failed):
                continue
            tensors: list = []
            arrays = entry.gather(leaves, tensors)
            if arrays is not None:
                return entry, arrays, tensors
        return None

    def _retrace_for(self, args, kwargs, leaves, key, failed, notes: list | None) -> tuple[Entry | None, str]:
        """The program traced for this call and why; no program when a guard failed and the signature has
        ``cache_size`` programs already (the call then runs eagerly)."""
        bucket = self._cache.get(key) or []
        state = [e for e in bucket if e.only_state_fails()] if failed is None else []
        if state:
            message = f"{self.name}: {state[0].state_failures()[0]}"
            if notes is not None:
                notes.append(message)
            if failed is None:
                self.guard_failures += 1
            if self.guards == "raise":
                raise GuardError(f"{message}. The trace froze this Python state (trace(..., guards='raise')); trace "
                                 "with guards='retrace' (the default) to retrace for each value, or keep the state "
                                 "in a tensor (or use tracer.script) so the graph reads it.")
        why = None
        if failed is not None:
            why = failed[0].guard_message(failed[1], failed[2])
        elif state:
            why = state[0].state_failures()[0]
        if why is not None and len(bucket) >= self.cache_size:
            return None, f"{why}, and {len(bucket)} programs are traced for this signature (cache_size)"
        return self._miss(args, kwargs, leaves, key, why), why or ""

    def _eager(self, args, kwargs, key, why: str | None, notes: list | None):
        """Run the function eagerly (a guard failed and no more programs are traced for this signature). The
        result carries no autograd history, as a traced call's does not."""
        self.eager_fallbacks += 1
        if why is not None:
            self._log_fallback(key, why)
        if notes is not None:
            notes.append(f"{self.name}: ran eagerly (eager fallback #{self.eager_fallbacks})")
        return _detached(self.fn(*args, **kwargs))

    def _log_fallback(self, key, why: str) -> None:
        self.retrace_reasons.append(f"eager fallback: {why}")
        if key in self._full_warned:
            logger.debug("%s: running eagerly: %s", self.name, why)
            return
        self._full_warned.add(key)
        logger.warning("%s: running eagerly from now on when no traced program's guards hold: %s. Raise cache_size "
                       "to keep more programs, or keep the decision in the graph.", self.name, why)

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
        """The cache entry a call with these arguments would run first (tracing it if needed). Value guards are
        checked only by running it (a call does; see ``tracer.check``)."""
        leaves, key = signature_of(args, kwargs)
        if len(leaves) > 1 and len({id(t) for t in leaves}) != len(leaves):
            key = key + (_alias_key(leaves),)
        for entry in self._cache.get(key, ()):
            if entry.matches(leaves):
                return entry
        if self.guards == "raise":
            for entry in self._cache.get(key, ()):
                if entry.only_state_fails():
                    raise GuardError(f"{self.name}: {entry.state_failures()[0]} (trace(..., guards='raise'))")
        return self._miss(args, kwargs, leaves, key)

    def _miss(self, args, kwargs, leaves, key, why: str | None = None) -> Entry:
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
                    why = why or "; ".join(reasons) or "new signature"
                elif why is None:
                    closest = min((e.guard_failures() for e in bucket), key=len)
                    why = "; ".join(closest) or "state changed"
                self.retrace_count += 1
                self.retrace_reasons.append(why)
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
                steady.exe = self._lowered(steady.graph)
                same = steady.graph.fingerprint() == first.graph.fingerprint()  # one lowering per distinct program
                first.exe = steady.exe if same else self._lower_first(first.graph)
                entries.append(steady)
            else:
                first.exe = self._lowered(first.graph)
        finally:
            snap.restore()
        _debug(self, entries)
        return entries

    def _lowered(self, graph: Graph):
        """``lower(graph)``, once per distinct program: a retrace that records a program already lowered (DynamicNet's
        counter: every other value gives the same graph) shares its executable."""
        fingerprint = graph.fingerprint()
        exe = self._executables.get(fingerprint)
        if exe is None:
            exe = self._executables[fingerprint] = self.lower(graph)
            while len(self._executables) > 2 * self.cache_size:
                self._executables.popitem(last=False)
        else:
            self._executables.move_to_end(fingerprint)
        return exe

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
            settle_result(result)
        guarded = self.guards != "off"
        plan = build(RunRecord(rec, world, result, pre_slots, names, snap.tensors, guards=guarded))
        py_after = world.python_state()
        py_guard, state_guard, changes = [], [], []
        for name, ps in py_before.items():
            now = py_after.get(name)
            if now is not None and type(now.value) is type(ps.value) and now.value == ps.value:
                py_guard.append(PyGuard(name, ps.container, ps.key, ps.value))
            elif now is not None:
                where = python_state_site(ps.owner, ps.key) if ps.owner is not None else None
                a = self.ledger.add_python_state(name, ps.value, now.value, where)
                changes.append(StateChange(name, ps.value, now.value, a.source))
                if guarded:  # checked on entry; the call writes back what eager leaves (after the run: now.container)
                    state_guard.append(PyGuard(name, now.container, ps.key, ps.value))
        for site in plan.escapes:
            self.ledger.add_escape(site.escape, site.node, site.use)
        return Entry(key, plan, None, time.perf_counter() - t0, py_guard, names, steady,
                     state_guard if guarded else [], changes)

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
        """Save the program a call would run now, with its parameters, state and guards (``tracer.serialization``).

        A loaded graph checks the saved program's value guards on each call and raises ``GuardError`` naming the
        line when one fails (it has no Python source to retrace). Python state that the program changes
        (``self.counter += 1``) is not part of a saved graph: the program is saved for the value it has now, with
        a ``TracerWarning`` naming the line."""
        from tracer.serialization import save
        entry = save(self, path)
        if entry.state_guard:
            lines = ", ".join(sorted({c.source for c in entry.state_changes}))
            warnings.warn(f"save: {self.name}'s program changes Python state (at {lines}); the loaded graph has no "
                          "Python state: it runs the program traced for the value that state has now on every call.",
                          TracerWarning, stacklevel=2)

    def export_onnx(self, path, opset: int | None = None):
        """Write the program a call would run now as an ONNX model (``tracer.onnx_export``); returns the
        ``OnnxProgram`` (its ``model``, and calls run by ONNX Runtime). Needs ``pip install graphduel[onnx]``.

        Inputs are graph inputs, parameters and state initializers with their current values, ``cond`` /
        ``while_loop`` / ``scan`` become ``If`` / ``Loop`` / ``Scan``; the model passes ``onnx.checker``, and a
        primitive that does not map raises ``UnsupportedOpError`` naming it and its line. For example
        ``tracer.trace(model, x).export_onnx("model.onnx")(x)`` runs the model in ONNX Runtime."""
        from tracer.onnx_export import DEFAULT_OPSET, export
        program = export(self, DEFAULT_OPSET if opset is None else opset)
        program.save(path)
        return program

    def __repr__(self) -> str:
        n = len(self.entries)
        return (f"<Traced {self.name}: {n} cached program{'s' if n != 1 else ''}, "
                f"{self.retrace_count} retraces, {self.guard_failures} guard failures, {len(self.ledger)} assumptions>")


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


def _detached(obj):
    """``obj`` with every tensor replaced by one without autograd history (sharing its memory)."""
    if isinstance(obj, Tensor):
        return Tensor._make(obj._data, False, None)
    t = type(obj)
    if t is tuple or t is list:
        return t(_detached(o) for o in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return t(*(_detached(o) for o in obj))
    if t is dict:
        return {k: _detached(v) for k, v in obj.items()}
    return obj


def _alias_key(leaves) -> tuple:
    first: dict[int, int] = {}
    return ("alias", tuple(first.setdefault(id(t), i) for i, t in enumerate(leaves)))


def trace(fn, *example_inputs, strict: bool = False, lower=None, cache_size: int = 8, guards: str = "retrace",
          **example_kwargs) -> Traced:
    """Trace ``fn`` (a function or a Module) on example inputs; returns a callable ``Traced``.

    ``strict=True`` refuses a call with another signature (``SignatureError``) instead of retracing;
    ``lower(graph) -> executable`` (with ``executable.run(arrays) -> arrays``) replaces the static executor;
    ``cache_size`` bounds the number of signatures kept (least recently traced dropped first) and the programs
    kept per signature (one per guard outcome; past that a call whose guards fail runs eagerly);
    ``guards``: ``"retrace"`` (a value the trace froze is checked on every call, and a call that sees another
    value retraces), ``"raise"`` (it raises ``GuardError`` naming the line) or ``"off"`` (replayed as frozen).

        >>> import eager, warnings
        >>> def flip_negative(x):
        ...     return x if x.sum() > 0 else -x
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # the TracerWarning names the branch's line
        ...     traced = trace(flip_negative, eager.ones(2))
        >>> traced(-eager.ones(2)).tolist(), traced.retrace_count  # the guard on the branch failed: retraced
        ([1.0, 1.0], 1)

        >>> import eager
        >>> from eager import nn
        >>> model = nn.Linear(3, 2)
        >>> traced = trace(model, eager.ones(4, 3))
        >>> [n.name for n in traced.graph.placeholders]
        ['input', 'weight', 'bias']
    """
    traced = Traced(fn, strict=strict, lower=lower, cache_size=cache_size, guards=guards)
    traced.entry_for(*example_inputs, **example_kwargs)
    return traced


__all__ = ["Entry", "GuardError", "Traced", "trace", "SignatureError"]
