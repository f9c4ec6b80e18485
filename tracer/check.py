"""``traced.check(*inputs)``: run eager and traced on the same inputs and say where and why they differ.

The eager run executes the original function under a recorder, on the current state; then every tensor, the
optimizer state and the random generators are put back, and the traced side runs for real (its state updates
are applied once). With guards on (the default) the traced side is a real call: Python attributes are put back
too, and the call checks its guards, retraces or falls back as any call would, writing back what eager leaves;
each guard that failed on the way is in ``report.notes``. With ``guards="off"`` the program the call would
pick runs as it is (Python attributes keep what the eager run did to them). Outputs and updated state are
compared with written tolerances (``TOLERANCES``).

On a mismatch the traced graph is replayed keeping every value and walked beside the eager run's own graph,
call by call: the first call that differs in op, static parameters, baked scalars, type or value is the
divergence. The assumption that broke is the first assumption of the program that ran whose value differs in
the eager run (an escape at the same source line that saw another value, or Python state that no longer has
its traced value). A broken assumption is a divergence even when the outputs agree: a branch that took
another path and happened to give equal values (kind ``"assumption"``).

    >>> import eager, tracer
    >>> traced = tracer.trace(lambda x: x * 2, eager.ones(2))
    >>> traced.check(eager.ones(2)).ok
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from eager.autograd.mode import add_recorder
from eager.backend import float32, float64, to_numpy
from eager.tensor import Tensor
from tracer.assumptions import Assumption, GuardError, outcome
from tracer.build import Plan, RunRecord, build, occupants, settle_result
from tracer.executor import Interpreter
from tracer.ir import Node
from tracer.recorder import Recorder
from tracer.rng import RngState, rng_state, set_rng_state
from tracer.signature import signature_of
from tracer.snapshot import Snapshot
from tracer.world import World

# (rtol, atol) per dtype: eager and traced run the same impls in the same order, so these are generous
TOLERANCES = {float32: (1e-5, 1e-6), float64: (1e-10, 1e-12)}


@dataclass
class Divergence:
    """Where traced and eager first disagree."""

    kind: str                     # "control flow" | "baked value" | "value" | "output" | "state" | "assumption"
                                  # | "guard" (guards="raise" raised GuardError)
    node: str | None              # the traced node, formatted (``%5: f32[1,64] = mul(%0, 2)``)
    source: str | None            # its source line
    error: str                    # what differs, in words
    assumption: Assumption | None = None

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        text = f"{self.kind} divergence{where}: {self.error}"
        if self.node:
            text += f"\n    traced node: {self.node}"
        if self.assumption is not None:
            text += f"\n    broken assumption: {self.assumption}"
        return text


@dataclass
class CheckReport:
    ok: bool
    divergences: list[Divergence] = field(default_factory=list)
    eager: Any = None
    traced: Any = None
    notes: list[str] = field(default_factory=list)   # guards that failed during the traced call, and what it did

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        if self.ok:
            return "check: traced == eager (outputs and state within tolerance)" + notes
        return "check: traced != eager\n" + "\n".join(f"  {d}" for d in self.divergences) + notes


def _close(a, b, rtol=None, atol=None) -> tuple[bool, str]:
    a, b = to_numpy(a), to_numpy(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, f"type differs: traced {a.dtype}{list(a.shape)}, eager {b.dtype}{list(b.shape)}"
    if a.dtype.kind in "biu":
        bad = a != b
        if bad.any():
            return False, f"{int(bad.sum())} of {a.size} elements differ"
        return True, ""
    r, t = TOLERANCES.get(a.dtype, (1e-5, 1e-6))
    r, t = rtol if rtol is not None else r, atol if atol is not None else t
    ok = np.isclose(a, b, rtol=r, atol=t, equal_nan=True)
    if ok.all():
        return True, ""
    diff = np.where(ok, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
    i = tuple(int(k) for k in np.unravel_index(int(np.nanargmax(diff)), a.shape)) if a.ndim else ()
    return False, (f"{int((~ok).sum())} of {a.size} elements differ beyond rtol={r}, atol={t}; largest at "
                   f"{list(i)}: traced {a[i].item()!r}, eager {b[i].item()!r}")


def _flat_values(obj, out: list) -> list:
    """The arrays of a result, copied (a later in-place write or restored state must not change them)."""
    if isinstance(obj, Tensor):
        out.append(obj._data.copy())
    elif isinstance(obj, (list, tuple)) and not (type(obj) is list and obj and not isinstance(obj[0], Tensor)
                                                 and isinstance(obj[0], (int, float, list))):
        for o in obj:
            _flat_values(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat_values(o, out)
    elif isinstance(obj, (bool, int, float)) or (type(obj) is list):
        out.append(np.asarray(obj))
    return out


@dataclass
class _EagerRun:
    """The original function run on the same inputs under a recorder, and what it produced."""

    recorder: Recorder
    plan: Plan                    # its own graph (``plan.node_vids`` maps its nodes to recorded values)
    result: Any
    values: list                  # the result's arrays, flattened
    state: dict[str, Any]         # new values of the state the traced program updates
    python_before: dict[str, Any]  # Python state before the run


def check(traced, args: tuple, kwargs: dict, rtol: float | None = None, atol: float | None = None) -> CheckReport:
    """Run ``traced``'s function eagerly, then the traced call, on ``args``; report where they differ."""
    retraces = traced.retrace_count
    entry = traced.entry_for(*args, **kwargs)
    leaves, _ = signature_of(args, kwargs)
    guarded = traced.guards != "off"
    eager = _run_eager(traced, entry, args, kwargs, leaves, restore_python=guarded)
    notes: list[str] = [f"retraced: {traced.retrace_reasons[-1]}"] if traced.retrace_count > retraces else []
    retraces = traced.retrace_count
    if guarded:
        try:
            traced_result, ran, inputs, rng = _traced_call(traced, args, kwargs, notes)
        except GuardError as e:  # guards="raise": what a call would do, reported
            return CheckReport(False, [Divergence("guard", None, None, str(e))], eager.result, None, notes)
    else:
        ran, rng = entry, rng_state()
        arrays = entry.gather(leaves)
        if arrays is None:
            raise RuntimeError(f"check: the state {traced.name} reads no longer has the traced types after the "
                               "eager run; call the traced function once, then check again.")
        inputs = [a.copy() for a in arrays]  # the call writes its state updates into this memory
        traced_result = entry.finish(leaves, entry.exe.run(arrays))  # for real: state updates are applied once
    state = _state_values(ran if ran is not None else entry, leaves)
    divergences = _compare(_flat_values(traced_result, []), state, eager, rtol, atol)
    broken = _broken_assumption(traced, ran, eager.recorder, eager.python_before) if ran is not None else None
    if divergences and ran is not None:
        _locate(ran, inputs, rng, eager, divergences, broken, rtol, atol)
    elif broken is not None:  # the outputs agree, but Python took another path: still a divergence
        divergences.append(Divergence("assumption", None, broken.source,
                                      f"the outputs agree, but an assumption of the traced program broke "
                                      f"({broken.broken}): Python took another path, which happens to give the same "
                                      "values on these inputs", broken))
    if traced.retrace_count > retraces:
        notes.append(f"the call retraced: {traced.retrace_reasons[-1]}")
    return CheckReport(not divergences, divergences, eager.result, traced_result, notes)


def _traced_call(traced, args: tuple, kwargs: dict, notes: list):
    """A real call (guards checked; retracing or running eagerly as a call would): its result, the entry whose
    results it returned (None: it ran eagerly), and that run's input arrays and random state (for ``_locate``)."""
    runs: list = []

    def observe(entry, arrays):
        runs.append(([a.copy() for a in arrays], rng_state()))  # the call may write state into these arrays
    leaves, key = signature_of(args, kwargs)
    if len(leaves) > 1 and len({id(t) for t in leaves}) != len(leaves):
        from tracer.traced import _alias_key
        key = key + (_alias_key(leaves),)
    result, ran = traced._call(args, kwargs, leaves, key, None, observe, notes)
    inputs, rng = runs[-1] if runs and ran is not None else (None, None)
    return result, ran, inputs, rng


def _run_eager(traced, entry, args: tuple, kwargs: dict, leaves: list, restore_python: bool = False) -> _EagerRun:
    """The eager run, recorded (its own graph, its escapes, its Python state); then tensors, optimizer state
    and the random generators are put back, and Python attributes too with ``restore_python`` (a guarded call
    writes them back itself); else they keep what the run did, as an eager call would."""
    world = World.discover(traced.fn, args, traced._extra_params)
    snap = Snapshot.of(world, leaves)
    pre_slots = occupants(world)
    py_before = {name: ps.value for name, ps in world.python_state().items()}
    rec = Recorder(leaves, snap.tensors)
    try:
        with add_recorder(rec):
            result = traced.fn(*args, **kwargs)
            settle_result(result)
        plan = build(RunRecord(rec, world, result, pre_slots, entry.names, snap.tensors,
                               guards=traced.guards != "off"))
        return _EagerRun(rec, plan, result, _flat_values(result, []), _state_values(entry, leaves), py_before)
    finally:
        snap.restore(python=restore_python)


def _compare(traced_values: list, traced_state: dict, eager: _EagerRun, rtol, atol) -> list[Divergence]:
    """Outputs and updated state, traced against eager."""
    divergences = []
    if len(traced_values) != len(eager.values):
        divergences.append(Divergence("output", None, None, f"the traced call returned {len(traced_values)} values, "
                                      f"the eager call {len(eager.values)}"))
    for i, (a, b) in enumerate(zip(traced_values, eager.values)):
        ok, why = _close(a, b, rtol, atol)
        if not ok:
            divergences.append(Divergence("output", None, None, f"output {i}: {why}"))
    for name, a in traced_state.items():
        b = eager.state.get(name)
        if b is None:
            continue
        ok, why = _close(a, b, rtol, atol)
        if not ok:
            divergences.append(Divergence("state", None, None, f"new value of {name}: {why}"))
    return divergences


def _locate(entry, arrays: list, rng: RngState, eager: _EagerRun, divergences: list[Divergence],
            broken: Assumption | None, rtol, atol) -> None:
    """Replay the traced graph keeping values (from the random state the traced run started with), walk it
    beside the eager run's graph, and put the first diverging call and the broken assumption in front."""
    set_rng_state(rng)
    saved_rng = rng_state()
    try:
        _, traced_node_values = Interpreter(entry.graph).run(arrays, keep=True)
    finally:
        set_rng_state(saved_rng)
    rec = eager.recorder
    eager_node_values = {nid: rec.tape.arrays[vid] for nid, vid in eager.plan.node_vids.items()}
    first = _first_divergence(entry.graph, traced_node_values, eager.plan.graph, eager_node_values, rtol, atol)
    if first is not None:
        first.assumption = broken
        divergences.insert(0, first)
    else:
        divergences[0].assumption = broken


def _state_values(entry, leaves) -> dict[str, Any]:
    plan = entry.plan
    out = {}
    for target in plan.update_targets:
        if type(target) is int:
            out[f"input {entry.names[target]}"] = leaves[target]._data.copy()
        else:
            t = target.get()
            if isinstance(t, Tensor):
                out[target.name] = t._data.copy()
    for slot in plan.extra_slots:
        t = slot.get()
        if isinstance(t, Tensor):
            out[slot.name] = t._data.copy()
    return out


class _StaticArg(NamedTuple):
    """What a call argument is when values are set aside: a node's type, or a scalar baked into the call."""

    kind: str       # "node" | "scalar"
    value: Any      # the node's Aval, or the scalar

    def __str__(self) -> str:
        return str(self.value) if self.kind == "node" else repr(self.value)


def _static_args(n: Node) -> list[_StaticArg]:
    return [_StaticArg("node", a.aval) if isinstance(a, Node) else _StaticArg("scalar", a) for a in n.args]


def _first_divergence(tg, tvals, eg, evals, rtol, atol) -> Divergence | None:
    tcalls, ecalls = tg.calls, eg.calls
    for tn, en in zip(tcalls, ecalls):
        if tn.op != en.op:
            return Divergence("control flow", tn.format(), tn.source,
                              f"the traced graph runs {_call_text(tn)} here, but the eager run did {_call_text(en)} at "
                              f"{en.source}: Python took another path")
        differs = _static_difference(tn, en)
        if differs is not None:
            return differs
        if tn.id in tvals and en.id in evals:
            ok, why = _close(tvals[tn.id], evals[en.id], rtol, atol)
            if not ok:
                return Divergence("value", tn.format(), tn.source, f"value of {tn.ref} ({tn.op}): {why}")
    if len(tcalls) != len(ecalls):
        n = min(len(tcalls), len(ecalls))
        where = tcalls[n] if n < len(tcalls) else (tcalls[-1] if tcalls else None)
        return Divergence("control flow", where.format() if where else None, where.source if where else None,
                          f"the traced graph has {len(tcalls)} calls, the eager run {len(ecalls)}; they agree on "
                          f"the first {n}: Python took another path after that")
    return None


def _static_difference(tn: Node, en: Node) -> Divergence | None:
    """The same op with other static arguments, parameters or type: a baked scalar changed, or control flow."""
    ta, ea = _static_args(tn), _static_args(en)
    if ta == ea and tn.aval == en.aval and not _params_differ(tn.params, en.params):
        return None
    what = [f"argument {i}: traced {x}, eager {y}" for i, (x, y) in enumerate(zip(ta, ea)) if x != y]
    if _params_differ(tn.params, en.params):
        what.append(f"params: traced {tn.params}, eager {en.params}")
    if tn.aval != en.aval:
        what.append(f"type: traced {tn.aval}, eager {en.aval}")
    kind = "baked value" if any(x.kind == "scalar" for x in ta) and ta != ea else "control flow"
    return Divergence(kind, tn.format(), tn.source, f"{tn.op} differs from the eager run: " + "; ".join(what))


def _call_text(n: Node) -> str:
    return n.format().split("    # ")[0].split(" = ", 1)[-1]


def _params_differ(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return True
    return any(repr(a[k]) != repr(b[k]) for k in a)


def _broken_assumption(traced, entry, rec: Recorder, py_before: dict) -> Assumption | None:
    """The first assumption of ``entry``'s program that the eager run ``rec`` broke: Python state found at another
    value, or an escape that may decide something (not one only logged or returned) that saw another value or
    was not reached. A copy of the ledger's assumption, with ``broken`` (and this program's value) set."""
    for change in entry.state_changes:
        if change.name in py_before and py_before[change.name] != change.before:
            a = traced.ledger.by_site.get((change.name, "python_state"))
            if a is not None:
                return _note(a, f"it was {change.before!r} when traced and is {py_before[change.name]!r} now")
    eager_escapes: dict[str, list] = {}
    for e in rec.tape.escapes:
        eager_escapes.setdefault(e.source, []).append(e)
    seen_at: dict[str, int] = {}
    for site in entry.plan.escapes:
        e = site.escape
        n = seen_at[e.source] = seen_at.get(e.source, -1) + 1
        if site.use != "guard":
            continue
        a = traced.ledger.by_site.get((e.source, "escape")) or Assumption(e.kind, e.source, e.value)
        theirs = eager_escapes.get(e.source, [])
        if n >= len(theirs):
            why = ("the eager run did not reach this line" if not theirs else
                   f"the eager run reached this line {len(theirs)} time(s), the traced run more often")
            return _note(a, why, e.value)
        other = theirs[n]
        if outcome(other.kind, rec.tape.arrays[other.vid]) != site.expected:
            return _note(a, f"the eager run saw {other.value!r}", e.value)
    return None


def _note(a: Assumption, why: str, value: Any = None) -> Assumption:
    from dataclasses import replace
    if value is None:
        return replace(a, values=list(a.values), broken=why)
    return replace(a, value=value, values=[value], broken=why)
