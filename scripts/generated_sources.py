"""Dump everything the toolkit generates for every workload into one text file, to prove a refactor changes none
of it: ``python3 scripts/generated_sources.py OUT`` before and after, then ``cmp`` the two files.

Per workload (its first size), for the C backend and the CUDA kernels under the SIMT emulator: the traced IR,
the IR after the passes, each kernel's source, the traced Python source, and the saved graph (``graph.json``).
A move that must keep generated code byte-identical (issue 13's rule) is checked this way.
"""

import os
import sys
import tempfile

import compare.workloads  # noqa: F401  (registers the workloads)
import eager
import tracer
from compare.workloads.registry import REGISTRY
from compiler.api import lower_graph
from tracer.codegen import python_source


def _program(wl):
    eager.manual_seed(0)
    return wl.build(eager, wl.make_inputs(wl.sizes[0], seed=0))


def _compiled_sections(name: str, wl, backend: str) -> list[str]:
    lowered = []
    prog = _program(wl)
    tracer.trace(prog.fn, *prog.args, lower=lambda g: lowered.append(lower_graph(g, "cpu", backend)) or lowered[-1])
    out = []
    for lw in lowered:
        out += [f"==== {name} {backend} graph\n{lw.source_graph}", f"==== {name} {backend} optimized\n{lw.graph}"]
        out += [f"==== {name} {backend} kernel\n{k.source}" for k in lw.kernels]
        if backend == "c":
            out.append(f"==== {name} python\n{python_source(lw.source_graph)}")
    return out


def _saved_sections(name: str, wl) -> list[str]:
    prog = _program(wl)
    traced = tracer.trace(prog.fn, *prog.args)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "g")
        traced.save(path)
        return [f"==== {name} saved {f}\n" + open(os.path.join(path, f)).read()
                for f in sorted(os.listdir(path)) if f.endswith(".json")]


def main(out_path: str) -> None:
    sections = []
    for name in sorted(REGISTRY):
        wl = REGISTRY[name]
        for backend in ("c", "simt"):
            sections += _compiled_sections(name, wl, backend)
        sections += _saved_sections(name, wl)
    with open(out_path, "w") as f:
        f.write("\n".join(sections))
    print(f"{len(sections)} sections -> {out_path}")


if __name__ == "__main__":
    import warnings
    warnings.simplefilter("ignore")  # the dynamic_net seed warns that tracing froze its counter, by design
    main(sys.argv[1])
