"""A program's generated kernels, as both native backends (C and CUDA) make them: one ``GeneratedKernel`` per
fused group, named after its ops, taking one argument per distinct buffer. The backends differ only in the
function that renders a kernel's source and in the header of the module the kernels are built in.

    >>> from compiler.codegen import c
    >>> from compiler.passes.testing import dup_graph
    >>> from compiler.program import build
    >>> [(k.name, k.ops) for k in generate(build(dup_graph()), c.render_function)]
    [('k0_exp_add', ['exp', 'exp', 'add'])]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from compiler.kernel import KernelIR
from compiler.memory import MemoryPlan
from tracer.ir import Node

# (kernel IR, kernel name, argument index of each node id) -> the kernel's source
RenderFunction = Callable[[KernelIR, str, dict[int, int]], str]


@dataclass
class GeneratedKernel:
    """One generated kernel: its name, source, the kernel IR it was rendered from, and the value each argument
    points at (argument ``i`` is ``arg_nodes[i]``)."""

    name: str
    source: str
    ir: KernelIR
    arg_nodes: list[Node]

    @property
    def ops(self) -> list[str]:
        return [m.op for m in self.ir.group.members]


class Arguments(NamedTuple):
    """A kernel's arguments: ``index`` maps a node id to its argument, ``nodes`` lists the value each
    argument points at."""

    index: dict[int, int]
    nodes: list[Node]


def arguments(k: KernelIR, memory: MemoryPlan) -> Arguments:
    """One argument per distinct buffer: an in-place store shares its donor's argument."""
    index: dict[int, int] = {}
    nodes = []
    for n in k.buffers:
        index[n.id] = len(nodes)
        nodes.append(n)
    for s in k.stores:
        donor = memory.in_place.get(s.node.id)
        if donor is not None and donor in index:
            index[s.node.id] = index[donor]
        else:
            index[s.node.id] = len(nodes)
            nodes.append(s.node)
    return Arguments(index, nodes)


def kernel_name(group) -> str:
    """``k<group id>_<its distinct ops>``, cut to stay a readable symbol."""
    return f"k{group.id}_" + "_".join(dict.fromkeys(m.op for m in group.members))[:48]


def generate(program, render_function: RenderFunction) -> list[GeneratedKernel]:
    """The program's kernels in step order, each rendered by ``render_function``."""
    kernels = []
    for step in program.steps:
        if step.kind != "kernel":
            continue
        k = program.kernels[step.group.id]
        name = kernel_name(step.group)
        args = arguments(k, program.memory)
        kernels.append(GeneratedKernel(name, render_function(k, name, args.index), k, args.nodes))
    return kernels


def module_source(header: str, kernels: list[GeneratedKernel]) -> str:
    """The one source file every kernel of a program is built in."""
    return header + "\n" + "\n".join(k.source for k in kernels)
