"""``GRAPHDUEL_DEBUG=n`` output: 1 the graph after passes, 2 also the fusion groups, 3 also generated source."""

from __future__ import annotations

import os
import sys


def level() -> int:
    try:
        return int(os.environ.get("GRAPHDUEL_DEBUG", "0") or 0)
    except ValueError:
        return 0


def show(program, kernels, stream=None) -> None:
    n = level()
    if n <= 0:
        return
    out = stream or sys.stderr
    print(f"[graphduel] graph after passes ({len(program.graph.calls)} calls):\n{program.graph}", file=out)
    if n >= 2:
        print(f"[graphduel] {len(program.steps)} steps:", file=out)
        for i, s in enumerate(program.steps):
            if s.kind == "kernel":
                k = program.kernels[s.group.id]
                ops = ", ".join(f"{m.ref} {m.op}" for m in s.group.members)
                print(f"  step {i}: kernel {s.group.id} loops={k.loops} [{ops}]", file=out)
            else:
                print(f"  step {i}: {s.kind} {s.node.format()}", file=out)
        for j in program.schedule.log:
            print(f"  {j}", file=out)
    if n >= 3:
        for k in kernels:
            print(f"[graphduel] kernel {k.name}:\n{k.source}", file=out)
