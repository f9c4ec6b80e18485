"""Memory planning: which buffer each materialised value lives in.

- graph inputs are the caller's arrays; constants are baked arrays;
- values returned (outputs, new state) go to per-output pools: a pooled array is reused on a later call only
  when nothing but the pool still references it, so a caller never sees its results overwritten;
- every other kernel/library result gets a *slot*: one preallocated array reused by liveness (a slot whose
  value was read for the last time is free for a later value of the same size), and a kernel may write
  *in place* over an input it reads for the last time when it reads it only at the very index it writes, and
  writes it from the innermost loop (a per-row or scalar store may race with readers of other rows);
- host steps (NumPy) allocate their own results, which may be views of their inputs: those inputs stay
  live as long as the view does;
- with ``donate_state`` (a step replayed on fixed buffers, as a CUDA graph does), a new state value is written
  over its placeholder's array (*donated*) when the kernel computing it is the last reader of the old value and
  reads it only at the index it writes: the state is updated in place, as PyTorch's optimizers do, and nothing
  is copied between calls.

    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.program import build
    >>> list(build(dup_graph()).memory.kind.values())
    ['output']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracer.ir import CONSTANT, PLACEHOLDER, Node


@dataclass
class MemoryPlan:
    kind: dict[int, str]                           # node id -> 'output' | 'slot' | 'host' | 'donated'
    slot_of: dict[int, int] = field(default_factory=dict)
    slot_bytes: list[int] = field(default_factory=list)
    in_place: dict[int, int] = field(default_factory=dict)   # stored node id -> node id whose buffer it reuses

    @property
    def total_slot_bytes(self) -> int:
        return sum(self.slot_bytes)


def _nbytes(n) -> int:
    return int(np.prod(n.shape)) * n.dtype.itemsize


def plan_memory(program, donate_state: bool = False) -> MemoryPlan:
    """Where each value the program's steps write lives (the module docstring says how it is decided)."""
    graph = program.graph
    outputs = {n.id for n in graph.outputs}
    planner = _Planner(program, _last_reads(program), outputs | {v.id for _, v in graph.updates}, outputs,
                       {v.id: p for p, v in graph.updates} if donate_state else {})
    for i, step in enumerate(program.steps):
        taken: set[int] = set()  # buffers this step writes over in place: none is free for its other values
        for n in step.writes:
            planner.place(i, step, n, taken)
        planner.release(i, step, taken)
    return planner.plan


def _last_reads(program) -> dict[int, int]:
    """Node id -> index of the last step that reads it (``len(steps)`` for a returned value)."""
    graph, steps = program.graph, program.steps
    last: dict[int, int] = {}
    for i, s in enumerate(steps):
        for n in program.step_reads(s):
            last[n.id] = i
    for n in graph.outputs + [v for _, v in graph.updates]:  # returned values are read after the last step
        last[n.id] = len(steps)
    for i in reversed(range(len(steps))):  # a host result may be a view: its inputs live as long as it does
        s = steps[i]
        if s.kind == "host":
            for a in s.node.inputs:
                last[a.id] = max(last.get(a.id, i), last.get(s.node.id, i))
    return last


@dataclass
class _Planner:
    """One walk over the steps, placing each value a step writes and freeing slots after their last read."""

    program: object
    last: dict[int, int]        # node id -> its last reading step (``_last_reads``)
    returned: set[int]          # ids of the values a run returns: outputs and new state
    outputs: set[int]           # ids of the outputs alone
    state_of: dict[int, Node]   # new state value id -> its placeholder, where state may be donated
    plan: MemoryPlan = field(default_factory=lambda: MemoryPlan({}))
    free: list[int] = field(default_factory=list)  # slots no later step reads

    def place(self, i: int, step, n: Node, taken: set[int]) -> None:
        if step.kind == "host":
            self.plan.kind[n.id] = "host"
        elif n.id in self.returned:
            self.place_returned(i, step, n, taken)
        else:
            self.place_slot(i, step, n, taken)

    def place_returned(self, i: int, step, n: Node, taken: set[int]) -> None:
        """A new state value is donated its old value's array where the kernel may write over it; every other
        returned value goes to an output pool."""
        plan, old = self.plan, self.state_of.get(n.id)
        if (step.kind == "kernel" and old is not None and n.id not in self.outputs and old.id not in taken
                and _reads_only_where_written(self.program, step, n, old, self.last, i, plan)):
            plan.kind[n.id] = "donated"
            plan.in_place[n.id] = old.id
            taken.add(old.id)
        else:
            plan.kind[n.id] = "output"

    def place_slot(self, i: int, step, n: Node, taken: set[int]) -> None:
        """In place over an input the kernel reads for the last time, else the smallest free slot that fits,
        else a new slot."""
        plan = self.plan
        plan.kind[n.id] = "slot"
        donor = _in_place_donor(self.program, step, n, plan, self.last, i, taken) if step.kind == "kernel" else None
        if donor is not None:
            plan.slot_of[n.id] = plan.slot_of[donor]
            plan.in_place[n.id] = donor
            taken.add(donor)
            return
        need = _nbytes(n)
        fits = [f for f in self.free if plan.slot_bytes[f] >= need]
        if fits:
            slot = min(fits, key=lambda f: plan.slot_bytes[f])
            self.free.remove(slot)
        else:
            slot = len(plan.slot_bytes)
            plan.slot_bytes.append(need)
        plan.slot_of[n.id] = slot

    def release(self, i: int, step, taken: set[int]) -> None:
        """Free the slots of values step ``i`` read for the last time (not those it wrote over in place)."""
        plan, last = self.plan, self.last
        for n in self.program.step_reads(step):
            if last.get(n.id) == i and plan.kind.get(n.id) == "slot" and n.id not in taken:
                self.free.append(plan.slot_of[n.id])
        for n in step.writes:  # written but never read (should not happen after dce): free at once
            if plan.kind.get(n.id) == "slot" and n.id not in last:
                self.free.append(plan.slot_of[n.id])


def _in_place_donor(program, step, n, plan, last, i, taken):
    k = program.kernels[step.group.id]
    for b in k.buffers:
        if (b.op in (PLACEHOLDER, CONSTANT) or plan.kind.get(b.id) != "slot" or b.id in taken):
            continue
        if _reads_only_where_written(program, step, n, b, last, i, plan):
            return b.id
    return None


def _reads_only_where_written(program, step, n, b, last, i, plan) -> bool:
    """Whether kernel ``step`` may store ``n`` over ``b``: it is b's last reader, reads b only at the element it
    writes, from the innermost loop (written once per row or once per kernel, an element may still be read by
    other rows' threads), and nothing reads b through a host step's view."""
    k = program.kernels[step.group.id]
    store = next(s for s in k.stores if s.node.id == n.id)
    if not any(store.form[k.n_outer:]) or last.get(b.id) != i or b.dtype != n.dtype or _nbytes(b) != _nbytes(n):
        return False
    if b.id in _viewed_through_host(k.buffers, plan):
        return False
    forms = {e.form for e in k.order if e.op == "load" and e.buffer.id == b.id}
    return forms == {store.form}


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
