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
- guards: the presence/shape of every touched location, so a later call with different state retraces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eager.primitives import PRIMITIVES
from eager.tensor import Tensor
from tracer.ir import Graph, Node
from tracer.pytree import LEAF
from tracer.recorder import Recorder, Ref
from tracer.state import MISSING, Slot, World, layout_of

CONVERSIONS = {"item", "float", "int", "tolist", "bool"}


@dataclass
class Plan:
    """What a traced call does around running the graph."""

    graph: Graph
    n_inputs: int                                        # placeholders 0..n-1 are the flattened tensor args
    readers: list[Slot]                                  # one per param/state placeholder, in order
    reader_layouts: list[tuple]                          # (shape, dtype, array type) each reader must hold
    out_spec: Any                                        # pytree spec of the result (LEAF per user output)
    conversions: list[str | None]                        # per user output: None (a Tensor) or "item", ...
    extra_slots: list[Slot] = field(default_factory=list)       # graph.outputs[n_user:] are assigned here
    update_targets: list = field(default_factory=list)          # per update: Slot (rebind) or input index
    static_writes: list[tuple[Slot, Any]] = field(default_factory=list)
    guard: list[tuple[Slot, Any]] = field(default_factory=list)
    escapes: list = field(default_factory=list)          # (Escape, node ref)
    node_vids: dict[int, int] = field(default_factory=dict)   # node id -> recorded value id (for check)

    @property
    def n_user_outputs(self) -> int:
        return len(self.conversions)


@dataclass
class RunRecord:
    """A traced run and the state around it (what ``build`` reads)."""

    recorder: Recorder
    world: World
    result: Any
    pre_slots: dict[str, tuple[Slot, Any]]               # watched locations and what they held before
    input_names: list[str]
    snapshot_tensors: dict[int, tuple]                   # id -> (tensor, data, version, grad, ...) before


def build(run: RunRecord) -> Plan:
    rec, world = run.recorder, run.world
    tape = rec.tape

    # ---- outputs (the function's result)
    out_vids: list[int] = []
    conversions: list[str | None] = []
    out_spec = _flatten_result(run.result, rec, out_vids, conversions)

    # ---- locations whose occupant changed: extra outputs and static writes
    post_slots = {s.name: s for s in world.watched_slots() + world.module_tensor_attrs()}
    all_slots = {**{n: s for n, (s, _) in run.pre_slots.items()}, **post_slots}
    extra: list[tuple[Slot, int]] = []
    static_writes: list[tuple[Slot, Any]] = []
    touched: dict[str, tuple[Slot, Any]] = {}
    for name, slot in all_slots.items():
        before = run.pre_slots[name][1] if name in run.pre_slots else MISSING
        after = slot.get()
        if after is before:
            continue
        touched[name] = (slot, before)
        if isinstance(after, Tensor):
            vid = rec.lookup(after)
            extra.append((slot, vid if vid is not None else rec.vid_of(after)))
        elif after is MISSING or after is None:
            if before is not MISSING and before is not None:
                static_writes.append((slot, after))
        elif before is MISSING:  # a new Python value (e.g. a step count): written back as traced
            static_writes.append((slot, after))

    # ---- tensors rebound in place: updates
    mutated = dict(tape.mutated)
    for tid, (t, data, *_rest) in run.snapshot_tensors.items():
        if t._data is not data and tid not in mutated:
            mutated[tid] = t  # changed without the recorder hearing of it (``t.data = ...``)
    first_leaf = {}
    for leaf in tape.leaves.values():
        if leaf.tensor is not None and id(leaf.tensor) not in first_leaf:
            first_leaf[id(leaf.tensor)] = leaf.vid
    updates: list[tuple[int, int, Any]] = []   # (placeholder vid, new vid, target)
    for tid, t in mutated.items():
        known = world.known.get(tid)
        leaf_vid = first_leaf.get(tid)
        if leaf_vid is None:
            if tid not in run.snapshot_tensors:
                continue  # created during the run: internal
            _, data0, version0, grad0, *_ = run.snapshot_tensors[tid]
            leaf_vid = rec.late_leaf(t, data0, version0, grad0)
            first_leaf[tid] = leaf_vid
        leaf = tape.leaves[leaf_vid]
        if leaf.input_index is None and known is None and tid not in run.snapshot_tensors:
            continue  # made during the run outside apply (eager.tensor(...)) and then modified: internal
        new_vid = rec.lookup(t)
        if new_vid is None:
            new_vid = rec.vid_of(t)
        if new_vid == leaf_vid:
            continue
        if leaf.input_index is not None:
            target = leaf.input_index
        elif known is not None:
            if known.slot.get() is not t:
                continue  # no longer at its location: the location's new occupant is written back instead
            target = known.slot
            touched.setdefault(known.slot.name, (known.slot, t))
        else:
            target = Slot(f"tensor@{tid:x}", t, ())
        updates.append((leaf_vid, new_vid, target))

    # ---- roles of the leaves
    update_leaves = {u[0] for u in updates}
    replaced = {slot.name for slot, _ in extra} | {slot.name for slot, _ in static_writes}
    roles: dict[int, tuple[str, str, Slot | None]] = {}
    for leaf in tape.leaves.values():
        t = leaf.tensor
        if leaf.input_index is not None:
            roles[leaf.vid] = ("input", run.input_names[leaf.input_index], None)
        elif t is None or first_leaf.get(id(t)) != leaf.vid:
            roles[leaf.vid] = ("constant", "", None)
        else:
            known = world.known.get(id(t))
            trainable = t._requires_grad and t.grad_fn is None
            if known is not None and known.role in ("param", "state"):
                roles[leaf.vid] = (known.role, known.name, known.slot)
            elif known is not None and (trainable or leaf.vid in update_leaves or known.slot.name in replaced):
                roles[leaf.vid] = ("state", known.name, known.slot)
            elif trainable or leaf.vid in update_leaves:
                roles[leaf.vid] = ("state", f"tensor{leaf.vid}", Slot(f"tensor{leaf.vid}", t, ()))
            else:
                roles[leaf.vid] = ("constant", "", None)
            if roles[leaf.vid][0] in ("param", "state") and known is not None:
                touched.setdefault(known.slot.name, (known.slot, t))

    # ---- liveness (dead-code elimination that keeps random draws)
    live = set(out_vids) | {v for _, v in extra} | {u[1] for u in updates}
    kept_calls = []
    for call in reversed(tape.calls):
        if call.out in live or PRIMITIVES[call.op].random:
            kept_calls.append(call)
            live.update(a.vid for a in call.args if isinstance(a, Ref))
    kept_calls.reverse()
    live |= update_leaves

    # ---- the graph
    g = Graph()
    node_of: dict[int, Node] = {}
    inputs = sorted((leaf for leaf in tape.leaves.values() if leaf.input_index is not None),
                    key=lambda leaf: leaf.input_index)
    seen_inputs = set()
    for leaf in inputs:
        if leaf.input_index in seen_inputs:
            continue
        seen_inputs.add(leaf.input_index)
        node_of[leaf.vid] = g.placeholder(run.input_names[leaf.input_index], rec.aval(leaf.vid), "input")
    readers: list[Slot] = []
    reader_layouts: list[tuple] = []
    names_used = {n.name for n in g.placeholders}
    param_order = {id(k.tensor): i for i, k in enumerate(world.known.values())}
    for role in ("param", "state"):
        leaves = [v for v, r in roles.items() if r[0] == role and v in live]
        if role == "param":
            leaves.sort(key=lambda v: param_order.get(id(tape.leaves[v].tensor), 1 << 30))
        for vid in leaves:
            _, name, slot = roles[vid]
            name = _unique(name, names_used)
            node_of[vid] = g.placeholder(name, rec.aval(vid), role)
            readers.append(slot)
            a = tape.arrays[vid]
            reader_layouts.append((a.shape, a.dtype, type(a)))
    for vid, (role, _, _) in roles.items():
        if role == "constant" and vid in live and vid not in node_of:
            node_of[vid] = g.constant(tape.arrays[vid])
    for call in kept_calls:
        args = tuple(node_of[a.vid] if isinstance(a, Ref) else a for a in call.args)
        node_of[call.out] = g.call(call.op, args, call.params, rec.aval(call.out), source=call.source)
    g.outputs.extend(node_of[v] for v in out_vids)
    g.outputs.extend(node_of[v] for _, v in extra)
    for leaf_vid, new_vid, _ in updates:
        g.updates.append((node_of[leaf_vid], node_of[new_vid]))
    g.validate()

    guard = [(slot, layout_of(before)) for slot, before in touched.values()
             if not (slot.steps == () and isinstance(slot.root, Tensor))]
    escapes = [(e, node_of[e.vid].ref if e.vid in node_of else None) for e in tape.escapes]
    return Plan(graph=g, n_inputs=len(seen_inputs), readers=readers, reader_layouts=reader_layouts,
                out_spec=out_spec, conversions=conversions,
                extra_slots=[s for s, _ in extra], update_targets=[u[2] for u in updates],
                static_writes=static_writes, guard=guard, escapes=escapes,
                node_vids={n.id: vid for vid, n in node_of.items()})


def _unique(name: str, used: set[str]) -> str:
    base, n = name, 2
    while name in used:
        name = f"{base}#{n}"
        n += 1
    used.add(name)
    return name


def _flatten_result(obj, rec: Recorder, out_vids: list[int], conversions: list):
    """Spec of the function's result; tensors (and Python numbers read out of tensors) become outputs."""
    if isinstance(obj, Tensor):
        vid = rec.lookup(obj)
        out_vids.append(vid if vid is not None else rec.vid_of(obj))
        conversions.append(None)
        return LEAF
    if type(obj) in (float, int, list) and id(obj) in rec.escape_values:
        vid, kind = rec.escape_values[id(obj)]
        if kind in CONVERSIONS:
            for esc in rec.tape.escapes:
                if esc.value is obj:
                    esc.returned = True
            out_vids.append(vid)
            conversions.append("tolist" if type(obj) is list else type(obj).__name__)
            return LEAF
    t = type(obj)
    if t is tuple or t is list:
        return (t.__name__, tuple(_flatten_result(o, rec, out_vids, conversions) for o in obj))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("namedtuple", t, tuple(_flatten_result(o, rec, out_vids, conversions) for o in obj))
    if t is dict:
        keys = tuple(obj)
        return ("dict", keys, tuple(_flatten_result(obj[k], rec, out_vids, conversions) for k in keys))
    return ("const", obj)
