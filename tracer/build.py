"""From a recorded run to a Graph and a Plan (how a call gathers inputs and writes state back).

Decisions taken here, once the run is over and everything it touched is known:

- roles: call arguments are ``input`` placeholders; module parameters and buffers are ``param`` placeholders
  (named by their state_dict names); optimizer state, ``.grad`` tensors, trainable free tensors and anything
  mutated are ``state`` placeholders; every other tensor from outside the run is a ``constant``;
- updates: a pre-existing tensor rebound by an in-place op gets ``update placeholder <- new value``;
- write-backs: a location (``p.grad``, ``opt.state[p].exp_avg``, a module tensor attribute) that holds a
  different tensor after the run gets the new value as an extra graph output, assigned after each call;
- dead code: calls whose values reach no output or update are dropped, except random draws (dropping one
  would shift the random stream of the draws after it);
- guards: the presence/shape of every touched location, so a later call with different state retraces; and,
  with ``RunRecord.guards``, every escaped value that may have decided control flow or been baked in
  (``tracer.assumptions.escape_use``) becomes an extra graph output (``Plan.value_guards``), which a call
  compares with the value seen while tracing; a scalar read out of a tensor whose one use is an operand of
  ``+ - * /`` is kept in the graph as that tensor's 0-d value instead of a baked constant (no guard needed).

    >>> import eager
    >>> from eager.autograd.mode import add_recorder
    >>> from tracer.snapshot import Snapshot
    >>> from tracer.world import World
    >>> w = eager.ones(2).requires_grad_(True)
    >>> def step(x):
    ...     return (x * w).sum()
    >>> world = World.discover(step, ())
    >>> x, snap, before = eager.ones(2), Snapshot.of(World.discover(step, ())), occupants(world)
    >>> rec = Recorder([x], snap.tensors)
    >>> with add_recorder(rec):
    ...     result = step(x)
    >>> plan = build(RunRecord(rec, world, result, before, ["x"], snap.tensors))
    >>> [(n.name, n.role) for n in plan.graph.placeholders], [c.op for c in plan.graph.calls]
    ([('x', 'input'), ('w', 'state')], ['mul', 'sum'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from eager.primitives import ELEMENTWISE, PRIMITIVES, Aval
from eager.tensor import Tensor
from tracer.assumptions import direct_operand, escape_use, outcome
from tracer.conversions import CONVERSIONS, conversion_for
from tracer.ir import Graph, Node
from tracer.pytree import LEAF, flatten
from tracer.recorder import Call, Escape, Leaf, Recorder, Ref, Tape
from tracer.slots import MISSING, Slot, array_layout, layout_of
from tracer.snapshot import SavedTensor
from tracer.world import World


class Held(NamedTuple):
    """A location and what it held (before the run, for ``RunRecord.pre_slots`` and guards)."""

    slot: Slot
    value: Any


class Write(NamedTuple):
    """A location that holds another tensor after the run: the graph outputs value ``vid`` for it."""

    slot: Slot
    vid: int


class StaticWrite(NamedTuple):
    """A location a call sets to a Python value (or empties, with ``MISSING``/None) after running the graph."""

    slot: Slot
    value: Any


class Update(NamedTuple):
    """A pre-existing tensor rebound in place: its placeholder's value ``leaf`` gets the new value ``new``."""

    leaf: int
    new: int
    target: Slot | int          # where the tensor lives: a Slot, or the index of the input argument


class Guard(NamedTuple):
    """A call may run the program only while ``slot`` holds something of ``layout`` (see ``layout_of``)."""

    slot: Slot
    layout: tuple | None


class EscapeSite(NamedTuple):
    """A value that left the graph, with the ref of the graph node it came from (None if dropped), how it was
    used (``tracer.assumptions.escape_use``) and, for a guard, the outcome a call must reproduce."""

    escape: Escape
    node: str | None
    use: str = "guard"           # "guard" | "logged" | "returned"
    expected: Any = None         # ``tracer.assumptions.outcome`` of the value seen (for a guard)


class ValueGuard(NamedTuple):
    """An escaped value a call must reproduce: the executable's result ``output`` gives ``expected`` (by
    ``tracer.assumptions.outcome``). ``key`` (source line, n-th escape there) identifies the same guard in the
    programs traced for other outcomes (the trace tree)."""

    output: int
    kind: str
    expected: Any
    source: str
    key: tuple
    site: int                   # index into ``Plan.escapes``


class Role(NamedTuple):
    """What a leaf of the run becomes in the graph."""

    kind: str                   # "input" | "param" | "state" | "constant"
    name: str
    slot: Slot | None           # where a param/state placeholder's value is read at each call


CONSTANT = Role("constant", "", None)


@dataclass
class Plan:
    """What a traced call does around running the graph."""

    graph: Graph
    n_inputs: int                                        # placeholders 0..n-1 are the flattened tensor args
    readers: list[Slot]                                  # one per param/state placeholder, in order
    reader_layouts: list[tuple]                          # layout_of what each reader must hold
    out_spec: Any                                        # pytree spec of the result (LEAF per user output)
    conversions: list[str | None]                        # per user output: None (a Tensor) or "item", ...
    extra_slots: list[Slot] = field(default_factory=list)       # graph.outputs[n_user:] are assigned here
    update_targets: list = field(default_factory=list)          # per update: Slot (rebind) or input index
    static_writes: list[StaticWrite] = field(default_factory=list)
    guard: list[Guard] = field(default_factory=list)
    escapes: list[EscapeSite] = field(default_factory=list)
    node_vids: dict[int, int] = field(default_factory=dict)   # node id -> recorded value id (for check)
    value_guards: list[ValueGuard] = field(default_factory=list)
    guard_outputs: int = 0      # graph.outputs[n_user + len(extra_slots):][:guard_outputs] feed value_guards

    @property
    def n_user_outputs(self) -> int:
        return len(self.conversions)


@dataclass
class RunRecord:
    """A traced run and the state around it (what ``build`` reads)."""

    recorder: Recorder
    world: World
    result: Any
    pre_slots: dict[str, Held]                           # watched locations and what they held before
    input_names: list[str]
    snapshot_tensors: dict[int, SavedTensor]             # id -> the tensor and what it held before
    guards: bool = False                                 # escaped values that decide something become outputs


def occupants(world: World) -> dict[str, Held]:
    """What each location a run may rebind holds now (taken before the run; ``build`` compares after it)."""
    return {s.name: Held(s, s.get()) for s in world.rebindable_slots()}


def settle_result(result) -> None:
    """Re-derive every returned view whose storage was written after it was last read, while the recorder still
    listens: otherwise the trace would return the view's old value (eager reads the written memory)."""
    from eager.storage import refresh
    leaves, _ = flatten(result)
    for t in leaves:
        if t._base is not None and t._view_version != t._vc.value:
            refresh(t)


def build(run: RunRecord) -> Plan:
    """The graph and plan of a recorded run (see the module docstring for the decisions taken)."""
    rec = run.recorder
    result = _Result()
    spec = _flatten_result(run.result, rec, result)
    changes = _changed_locations(run)
    first_leaf = _first_leaves(rec.tape)
    updates = _updates(run, first_leaf, changes.touched)
    roles = _roles(run, first_leaf, updates, changes)
    sites = _escape_sites(rec)
    tape_calls, scalar_args = _in_graph(rec, sites) if run.guards else (rec.tape.calls, {})
    guard_vids = _guard_vids(sites, roles) if run.guards else []
    outputs = result.vids + [w.vid for w in changes.writes] + guard_vids
    calls, live = _live_calls(rec.tape, outputs + [u.new for u in updates], tape_calls)
    live |= {u.leaf for u in updates}

    g = Graph()
    node_of: dict[int, Node] = {}
    n_inputs = _add_inputs(g, run, node_of)
    readers = _add_state(g, run, roles, live, node_of)
    _add_constants(g, rec.tape, roles, live, node_of)
    for call in calls:
        args = tuple(node_of[a.vid] if isinstance(a, Ref) else a for a in call.args)
        for i in scalar_args.get(id(call), ()):  # a scalar read out of a tensor: the tensor's value, as 0-d
            if args[i].shape != ():
                args = args[:i] + (g.call("reshape", (args[i],), {"shape": ()}, Aval((), args[i].dtype),
                                          source=call.source),) + args[i + 1:]
        node_of[call.out] = g.call(call.op, args, call.params, rec.aval(call.out), source=call.source)
    g.outputs.extend(node_of[v] for v in outputs)
    g.updates.extend((node_of[u.leaf], node_of[u.new]) for u in updates)
    g.validate()

    return Plan(graph=g, n_inputs=n_inputs, readers=[roles[v].slot for v in readers],
                reader_layouts=[array_layout(rec.tape.arrays[v]) for v in readers],
                out_spec=spec, conversions=result.conversions,
                extra_slots=[w.slot for w in changes.writes], update_targets=[u.target for u in updates],
                static_writes=changes.static_writes, guard=_guards(changes.touched),
                escapes=[s._replace(node=node_of[s.escape.vid].ref if s.escape.vid in node_of else None)
                         for s in sites],
                node_vids={n.id: vid for vid, n in node_of.items()},
                value_guards=_value_guards(sites, guard_vids, len(result.vids) + len(changes.writes)),
                guard_outputs=len(guard_vids))


# ---------------------------------------------------------------- locations whose occupant changed


@dataclass
class _Changes:
    """What the run left at the locations it could rebind, and every location the program depends on."""

    writes: list[Write] = field(default_factory=list)              # extra outputs
    static_writes: list[StaticWrite] = field(default_factory=list)
    touched: dict[str, Held] = field(default_factory=dict)         # guarded, with what each held before


def _changed_locations(run: RunRecord) -> _Changes:
    post = {s.name: s for s in run.world.rebindable_slots()}
    slots = {**{name: held.slot for name, held in run.pre_slots.items()}, **post}
    changes = _Changes()
    for name, slot in slots.items():
        before = run.pre_slots[name].value if name in run.pre_slots else MISSING
        after = slot.get()
        if after is before:
            continue
        changes.touched[name] = Held(slot, before)
        if isinstance(after, Tensor):
            changes.writes.append(Write(slot, run.recorder.vid_after(after)))
        elif after is MISSING or after is None:
            if before is not MISSING and before is not None:
                changes.static_writes.append(StaticWrite(slot, after))
        elif before is MISSING:  # a new Python value (e.g. a step count): written back as traced
            changes.static_writes.append(StaticWrite(slot, after))
    return changes


def _guards(touched: dict[str, Held]) -> list[Guard]:
    # a slot that is a tensor itself (no path) always holds that tensor: nothing to guard
    return [Guard(h.slot, layout_of(h.value)) for h in touched.values()
            if not (h.slot.steps == () and isinstance(h.slot.root, Tensor))]


# ---------------------------------------------------------------- values that left the graph


def _escape_sites(rec: Recorder) -> list[EscapeSite]:
    """Every escape with its use and, for a guard, the outcome seen (a constant's value cannot change: no guard)."""
    sites = []
    for e in rec.tape.escapes:
        use = escape_use(e)
        expected = outcome(e.kind, rec.tape.arrays[e.vid]) if use == "guard" else None
        sites.append(EscapeSite(e, None, use, expected))
    return sites


_SCALAR_OPS = ("add", "sub", "mul", "div")


def _in_graph(rec: Recorder, sites: list[EscapeSite]) -> tuple[list[Call], dict[int, tuple[int, ...]]]:
    """A value baked in as a constant is better kept in the graph: a scalar read out of a tensor whose one use
    is as an operand of ``+ - * /`` on its line (``x / x.max().item()``, ``tracer.assumptions.direct_operand``)
    becomes that tensor's value in the recorded op, and needs no guard (its site's use becomes "in graph").
    Only where nothing changes but where the value comes from: the op is elementwise, got that very Python
    number, on the same line, and every tensor it reads has the tensor's dtype (the conversion is exact: no
    ``int()`` of a float). Returns the calls (replaced ones copied) and, per replaced call, the argument
    positions that read a tensor as 0-d."""
    calls = list(rec.tape.calls)
    scalar_args: dict[int, tuple[int, ...]] = {}
    for i, site in enumerate(sites):
        e = site.escape
        value, array = e.value, rec.tape.arrays[e.vid]
        if site.use != "guard" or type(value) not in (int, float) or array.size != 1 or \
                (e.kind == "int" and array.dtype.kind not in "iu") or (e.kind == "float" and array.dtype.kind != "f"):
            continue
        uses = [(c, k) for c, call in enumerate(calls) for k, a in enumerate(call.args) if a is value]
        if len(uses) != 1 or not direct_operand(e):
            continue
        c, k = uses[0]
        call = calls[c]
        tensors = [rec.aval(a.vid).dtype for a in call.args if isinstance(a, Ref)]
        if call.op not in _SCALAR_OPS or PRIMITIVES[call.op].kind != ELEMENTWISE or call.source != e.source \
                or any(d != array.dtype for d in tensors + [rec.aval(call.out).dtype]):
            continue
        args = call.args[:k] + (Ref(e.vid),) + call.args[k + 1:]
        calls[c] = Call(call.op, args, call.params, call.out, call.source)
        scalar_args[id(calls[c])] = scalar_args.pop(id(call), ()) + (k,)
        sites[i] = site._replace(use="in graph", expected=None)
    return calls, scalar_args


def _guard_vids(sites: list[EscapeSite], roles: dict[int, Role]) -> list[int]:
    """The values guards read, each once, in order; a constant of the graph always gives what it gave."""
    vids: list[int] = []
    for s in sites:
        vid, role = s.escape.vid, roles.get(s.escape.vid)
        if s.use == "guard" and vid not in vids and (role is None or role.kind != "constant"):
            vids.append(vid)
    return vids


def _value_guards(sites: list[EscapeSite], guard_vids: list[int], first: int) -> list[ValueGuard]:
    out, seen = [], {}
    index = {vid: first + i for i, vid in enumerate(guard_vids)}
    for i, s in enumerate(sites):
        e = s.escape
        n = seen[e.source] = seen.get(e.source, -1) + 1
        if s.use == "guard" and e.vid in index:
            out.append(ValueGuard(index[e.vid], e.kind, s.expected, e.source, (e.source, n), i))
    return out


# ---------------------------------------------------------------- tensors rebound in place


def _first_leaves(tape: Tape) -> dict[int, int]:
    """id(tensor) -> the first leaf recorded for it (the value a placeholder stands for)."""
    first: dict[int, int] = {}
    for leaf in tape.leaves.values():
        if leaf.tensor is not None and id(leaf.tensor) not in first:
            first[id(leaf.tensor)] = leaf.vid
    return first


def _mutated(run: RunRecord) -> dict[int, Tensor]:
    mutated = dict(run.recorder.tape.mutated)
    for tid, saved in run.snapshot_tensors.items():
        if saved.tensor._data is not saved.memory and tid not in mutated:
            mutated[tid] = saved.tensor  # changed without the recorder hearing of it (``t.data = ...``)
    return mutated


def _updates(run: RunRecord, first_leaf: dict[int, int], touched: dict[str, Held]) -> list[Update]:
    updates = [_update_of(run, tid, t, first_leaf, touched) for tid, t in _mutated(run).items()]
    return [u for u in updates if u is not None]


def _update_of(run: RunRecord, tid: int, t: Tensor, first_leaf: dict[int, int],
               touched: dict[str, Held]) -> Update | None:
    """The update for a mutated tensor, or None when it is internal to the run or its location moved on."""
    rec = run.recorder
    known = run.world.known.get(tid)
    leaf_vid = first_leaf.get(tid)
    if leaf_vid is None:
        saved = run.snapshot_tensors.get(tid)
        if saved is None:
            return None  # created during the run: internal
        leaf_vid = first_leaf[tid] = rec.late_leaf(t, saved.data, saved.version, saved.grad)
    leaf = rec.tape.leaves[leaf_vid]
    if leaf.input_index is None and known is None and tid not in run.snapshot_tensors:
        return None  # made during the run outside apply (eager.tensor(...)) and then modified: internal
    new_vid = rec.vid_after(t)
    if new_vid == leaf_vid:
        return None
    if leaf.input_index is not None:
        return Update(leaf_vid, new_vid, leaf.input_index)
    if known is None:
        return Update(leaf_vid, new_vid, Slot(f"tensor@{tid:x}", t, ()))
    if known.slot.get() is not t:
        return None  # no longer at its location: the location's new occupant is written back instead
    touched.setdefault(known.slot.name, Held(known.slot, t))
    return Update(leaf_vid, new_vid, known.slot)


# ---------------------------------------------------------------- roles of the leaves


def _roles(run: RunRecord, first_leaf: dict[int, int], updates: list[Update], changes: _Changes) -> dict[int, Role]:
    updated = {u.leaf for u in updates}
    replaced = {w.slot.name for w in changes.writes} | {w.slot.name for w in changes.static_writes}
    roles: dict[int, Role] = {}
    for leaf in run.recorder.tape.leaves.values():
        role = roles[leaf.vid] = _role_of(leaf, run, first_leaf, updated, replaced)
        known = run.world.known.get(id(leaf.tensor)) if role.kind in ("param", "state") else None
        if known is not None:
            changes.touched.setdefault(known.slot.name, Held(known.slot, leaf.tensor))
    return roles


def _role_of(leaf: Leaf, run: RunRecord, first_leaf: dict[int, int], updated: set[int], replaced: set[str]) -> Role:
    t = leaf.tensor
    if leaf.input_index is not None:
        return Role("input", run.input_names[leaf.input_index], None)
    if t is None or first_leaf.get(id(t)) != leaf.vid:
        return CONSTANT
    known = run.world.known.get(id(t))
    changes = (t._requires_grad and t.grad_fn is None) or leaf.vid in updated  # trainable or mutated
    if known is not None and known.role in ("param", "state"):
        return Role(known.role, known.name, known.slot)
    if known is not None and (changes or known.slot.name in replaced):
        return Role("state", known.name, known.slot)
    if changes:
        return Role("state", f"tensor{leaf.vid}", Slot(f"tensor{leaf.vid}", t, ()))
    return CONSTANT


# ---------------------------------------------------------------- liveness and the graph's nodes


def _live_calls(tape: Tape, roots: list[int], calls: list[Call] | None = None) -> tuple[list[Call], set[int]]:
    """Dead-code elimination that keeps random draws: the calls kept, and every value they read. ``calls``: the
    tape's calls as ``_in_graph`` rewrote them (default: ``tape.calls``)."""
    live = set(roots)
    kept = []
    for call in reversed(tape.calls if calls is None else calls):
        if call.out in live or PRIMITIVES[call.op].random:
            kept.append(call)
            live.update(a.vid for a in call.args if isinstance(a, Ref))
    kept.reverse()
    return kept, live


def _add_inputs(g: Graph, run: RunRecord, node_of: dict[int, Node]) -> int:
    """One ``input`` placeholder per argument tensor, in argument order; returns how many."""
    rec = run.recorder
    leaves = sorted((leaf for leaf in rec.tape.leaves.values() if leaf.input_index is not None),
                    key=lambda leaf: leaf.input_index)
    seen = set()
    for leaf in leaves:
        if leaf.input_index not in seen:  # the same tensor passed twice reads through its first leaf
            seen.add(leaf.input_index)
            node_of[leaf.vid] = g.placeholder(run.input_names[leaf.input_index], rec.aval(leaf.vid), "input")
    return len(seen)


def _add_state(g: Graph, run: RunRecord, roles: dict[int, Role], live: set[int], node_of: dict[int, Node]) -> list[int]:
    """``param`` placeholders (in the world's order: state_dict order), then ``state``; returns their values."""
    rec = run.recorder
    names_used = {n.name for n in g.placeholders}
    param_order = {id(k.tensor): i for i, k in enumerate(run.world.known.values())}
    order: list[int] = []
    for kind in ("param", "state"):
        vids = [v for v, r in roles.items() if r.kind == kind and v in live]
        if kind == "param":
            vids.sort(key=lambda v: param_order.get(id(rec.tape.leaves[v].tensor), 1 << 30))
        for vid in vids:
            node_of[vid] = g.placeholder(_unique(roles[vid].name, names_used), rec.aval(vid), kind)
            order.append(vid)
    return order


def _add_constants(g: Graph, tape: Tape, roles: dict[int, Role], live: set[int], node_of: dict[int, Node]) -> None:
    for vid, role in roles.items():
        if role.kind == "constant" and vid in live and vid not in node_of:
            node_of[vid] = g.constant(tape.arrays[vid])


def _unique(name: str, used: set[str]) -> str:
    base, n = name, 2
    while name in used:
        name = f"{base}#{n}"
        n += 1
    used.add(name)
    return name


# ---------------------------------------------------------------- the function's result


@dataclass
class _Result:
    """The graph values the function returned, and how each is handed back (None: as a Tensor)."""

    vids: list[int] = field(default_factory=list)
    conversions: list[str | None] = field(default_factory=list)


def _flatten_result(obj, rec: Recorder, out: _Result):
    """Spec of the function's result; tensors (and Python numbers read out of tensors) become outputs."""
    if isinstance(obj, Tensor):
        out.vids.append(rec.vid_after(obj))
        out.conversions.append(None)
        return LEAF
    if type(obj) in (float, int, list) and id(obj) in rec.escape_values:
        vid, kind = rec.escape_values[id(obj)]
        if kind in CONVERSIONS:
            for esc in rec.tape.escapes:
                if esc.value is obj:
                    esc.returned = True
            out.vids.append(vid)
            out.conversions.append(conversion_for(obj))
            return LEAF
    t = type(obj)
    if t is tuple or t is list:
        return (t.__name__, tuple(_flatten_result(o, rec, out) for o in obj))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("namedtuple", t, tuple(_flatten_result(o, rec, out) for o in obj))
    if t is dict:
        keys = tuple(obj)
        return ("dict", keys, tuple(_flatten_result(obj[k], rec, out) for k in keys))
    return ("const", obj)
