"""A program: the optimised graph, its fusion schedule, each kernel's IR, the host steps movement ops need,
and the memory plan. Backends turn a Program into an executable; nothing here runs anything.

    >>> from compiler.passes.testing import dup_graph
    >>> p = build(dup_graph())
    >>> [s.kind for s in p.steps]
    ['kernel']
"""

from __future__ import annotations

import heapq
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


def _dependency_order(program: Program, steps: list[Step], position: dict[int, int]) -> list[Step]:
    """Steps in an order where each runs after the steps it reads from; among ready steps, the one whose last
    node comes first in the graph (so the order follows the program where it can).

    A kernel that stores a value for another step may end later in the graph than that reader starts (its
    other members come later), so sorting by position alone is not enough once groups have several readers.
    """
    def anchor(step: Step) -> int:
        return position[step.node.id] if step.node is not None else max(position[m.id] for m in step.group.members)

    producer = {}
    for i, s in enumerate(steps):
        for n in (s.group.members if s.kind == "kernel" else [s.node]):
            producer[n.id] = i
    after: list[set[int]] = [set() for _ in steps]
    waiting = [0] * len(steps)
    for i, s in enumerate(steps):
        for src in {producer[n.id] for n in program.step_reads(s) if n.id in producer} - {i}:
            after[src].add(i)
            waiting[i] += 1
    ready = [(anchor(s), i) for i, s in enumerate(steps) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(steps[i])
        for j in after[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (anchor(steps[j]), j))
    if len(order) != len(steps):
        stuck = [steps[i] for i in range(len(steps)) if waiting[i]]
        raise RuntimeError(f"fusion made a cycle of steps (a compiler bug; bisect it with GRAPHDUEL_FUSION_FUEL): "
                           f"{stuck[:3]}")
    return order


def build(graph: Graph, fuel: int | None = -1) -> Program:
    """Fuse, lower every group, add host steps for needed movement ops, and plan memory."""
    schedule = fuse(graph, fuel)
    kernels = {g.id: lower(g) for g in schedule.groups}
    needed = _needed_views(graph, schedule.steps, kernels)
    position = {n.id: i for i, n in enumerate(graph.nodes)}

    steps = schedule.steps + [Step("host", node=n) for n in graph.nodes if n.id in needed]
    program = Program(graph, schedule, [], kernels)
    program.steps = _dependency_order(program, steps, position)
    program.memory = plan_memory(program)
    return program
