"""A program: the optimised graph, its fusion schedule, each kernel's IR, the host steps movement ops need,
and the memory plan. Backends turn a Program into an executable; nothing here runs anything.

    >>> from compiler.passes.testing import dup_graph
    >>> p = build(dup_graph())
    >>> [s.kind for s in p.steps]
    ['kernel']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compiler.fusion import VIEW_OPS, Schedule, Step, fuse
from compiler.kernel import KernelIR, lower
from compiler.memory import MemoryPlan, plan_memory
from tracer.ir import Graph, Node


@dataclass
class Program:
    graph: Graph
    schedule: Schedule
    steps: list[Step]
    kernels: dict[int, KernelIR]               # group id -> kernel IR
    memory: MemoryPlan = field(default=None)
    reads: dict[int, list[Node]] = field(default_factory=dict)  # step index -> materialised values read

    def step_reads(self, step: Step) -> list[Node]:
        if step.kind == "kernel":
            return self.kernels[step.group.id].buffers
        return step.node.inputs


def _needed_views(graph: Graph, steps: list[Step], kernels: dict[int, KernelIR]) -> set[int]:
    """Movement nodes that must run on the host: read by a host/library step, returned, or not affine."""
    needed = set().union(*(k.materialize for k in kernels.values())) if kernels else set()
    for s in steps:
        if s.kind != "kernel":
            needed |= {a.id for a in s.node.inputs if a.op in VIEW_OPS}
    needed |= {n.id for n in graph.outputs if n.op in VIEW_OPS}
    needed |= {v.id for _, v in graph.updates if v.op in VIEW_OPS}
    by_id = {n.id: n for n in graph.nodes}
    stack = list(needed)
    while stack:  # a host movement step reads its source, which must exist too
        src = by_id[stack.pop()].args[0]
        if src.op in VIEW_OPS and src.id not in needed:
            needed.add(src.id)
            stack.append(src.id)
    return needed


def build(graph: Graph, fuel: int | None = -1) -> Program:
    """Fuse, lower every group, add host steps for needed movement ops, and plan memory."""
    schedule = fuse(graph, fuel)
    kernels = {g.id: lower(g) for g in schedule.groups}
    needed = _needed_views(graph, schedule.steps, kernels)
    position = {n.id: i for i, n in enumerate(graph.nodes)}

    def anchor(step: Step) -> int:
        return position[step.node.id] if step.node is not None else max(position[m.id] for m in step.group.members)

    steps = sorted(schedule.steps + [Step("host", node=n) for n in graph.nodes if n.id in needed], key=anchor)
    program = Program(graph, schedule, steps, kernels)
    program.memory = plan_memory(program)
    return program
