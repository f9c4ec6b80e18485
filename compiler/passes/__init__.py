"""Graph -> Graph passes, each in its own module; ``optimize`` runs the standard pipeline.

Every pass returns a new, validated graph (``Graph.validate`` names the first bad node if a pass is wrong).

    >>> from compiler.passes.testing import identity_graph
    >>> optimize(identity_graph()).calls
    []
"""

from __future__ import annotations

from compiler.passes.cse import cse
from compiler.passes.dce import dce
from compiler.passes.fold import fold_constants
from compiler.passes.simplify import simplify
from tracer.ir import Graph

PIPELINE = (("simplify", simplify), ("fold", fold_constants), ("cse", cse), ("simplify", simplify), ("dce", dce))


def optimize(graph: Graph, pipeline=PIPELINE) -> Graph:
    """Run each pass in order; each result is validated by the pass itself."""
    for _, run in pipeline:
        graph = run(graph)
    return graph


__all__ = ["cse", "dce", "fold_constants", "optimize", "simplify", "PIPELINE"]
