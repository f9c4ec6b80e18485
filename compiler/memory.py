"""Memory planning: which buffer each materialised value lives in.

- graph inputs are the caller's arrays; constants are baked arrays;
- values returned (outputs, new state) go to per-output pools: a pooled array is reused on a later call only
  when nothing but the pool still references it, so a caller never sees its results overwritten;
- every other kernel/library result gets a *slot*: one preallocated array reused by liveness (a slot whose
  value was read for the last time is free for a later value of the same size), and a kernel may write
  *in place* over an input it reads for the last time when it reads it only at the very index it writes, and
  writes it from the innermost loop (a per-row or scalar store may race with readers of other rows);
- host steps (NumPy) allocate their own results, which may be views of their inputs: those inputs stay
  live as long as the view does.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.program import build
    >>> list(build(dup_graph()).memory.kind.values())
    ['output']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.ir import CONSTANT, PLACEHOLDER


@dataclass
class MemoryPlan:
    kind: dict[int, str]                           # node id -> 'output' | 'slot' | 'host'
    slot_of: dict[int, int] = field(default_factory=dict)
    slot_bytes: list[int] = field(default_factory=list)
    in_place: dict[int, int] = field(default_factory=dict)   # stored node id -> node id whose slot it reuses

    @property
    def total_slot_bytes(self) -> int:
        return sum(self.slot_bytes)


def _nbytes(n) -> int:
    return int(np.prod(n.shape)) * n.dtype.itemsize


def plan_memory(program) -> MemoryPlan:
    graph = program.graph
    returned = {n.id for n in graph.outputs} | {v.id for _, v in graph.updates}
    steps = program.steps
    last: dict[int, int] = {}
    for i, s in enumerate(steps):
        for n in program.step_reads(s):
            last[n.id] = i
    for n in returned:  # returned values (and whatever they view) are read after the last step
        last[n] = len(steps)
    for i in reversed(range(len(steps))):  # a host result may be a view: its inputs live as long as it does
        s = steps[i]
        if s.kind == "host":
            for a in s.node.inputs:
                last[a.id] = max(last.get(a.id, i), last.get(s.node.id, i))
    plan = MemoryPlan({})
    free: list[int] = []
    for i, s in enumerate(steps):
        taken: set[int] = set()
        for n in s.writes:
            if s.kind == "host":
                plan.kind[n.id] = "host"
                continue
            if n.id in returned:
                plan.kind[n.id] = "output"
                continue
            plan.kind[n.id] = "slot"
            donor = _in_place_donor(program, s, n, plan, last, i, taken) if s.kind == "kernel" else None
            if donor is not None:
                plan.slot_of[n.id] = plan.slot_of[donor]
                plan.in_place[n.id] = donor
                taken.add(donor)
                continue
            need = _nbytes(n)
            fits = [f for f in free if plan.slot_bytes[f] >= need]
            if fits:
                slot = min(fits, key=lambda f: plan.slot_bytes[f])
                free.remove(slot)
            else:
                slot = len(plan.slot_bytes)
                plan.slot_bytes.append(need)
            plan.slot_of[n.id] = slot
        for n in program.step_reads(s):
            if last.get(n.id) == i and plan.kind.get(n.id) == "slot" and n.id not in taken:
                free.append(plan.slot_of[n.id])
        for n in s.writes:  # written but never read (should not happen after dce): free at once
            if plan.kind.get(n.id) == "slot" and n.id not in last:
                free.append(plan.slot_of[n.id])
    return plan


def _in_place_donor(program, step, n, plan, last, i, taken):
    k = program.kernels[step.group.id]
    store = next(s for s in k.stores if s.node.id == n.id)
    if not any(store.form[k.n_outer:]):
        # written once per row (or once per kernel) while other rows/threads may still read that element: in
        # place is safe only where each iteration of the innermost loop reads and writes its own element
        return None
    viewed = _viewed_through_host(k.buffers, plan)
    for b in k.buffers:
        if (b.op in (PLACEHOLDER, CONSTANT) or plan.kind.get(b.id) != "slot" or last.get(b.id) != i
                or b.id in taken or b.id in viewed or b.dtype != n.dtype or _nbytes(b) != _nbytes(n)):
            continue
        forms = {e.form for e in k.order if e.op == "load" and e.buffer.id == b.id}
        if forms == {store.form}:
            return b.id
    return None


def _viewed_through_host(buffers, plan) -> set[int]:
    """Values a kernel may also read through a host step's result (a NumPy view, e.g. a reshape that is not
    affine): overwriting one in place would change what the kernel still reads through the view."""
    out: set[int] = set()
    stack = [b for b in buffers if plan.kind.get(b.id) == "host"]
    while stack:
        for a in stack.pop().inputs:
            if a.id not in out:
                out.add(a.id)
                if plan.kind.get(a.id) == "host":
                    stack.append(a)
    return out
