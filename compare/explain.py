"""``graphduel explain WORKLOAD``: what each mode makes of one workload, in words a user can act on.

Prints the workload (kind, source, note), the traced IR with its assumptions, the compiler's fusion groups and
kernels, and the result of running eager, traced and compiled side by side (the divergence, if any, with the
first diverging IR node and its source line).

    >>> text = explain("softmax", modes=["eager"])
    >>> text.splitlines()[0]
    'workload softmax (forward), defined at elementwise.py:50'
"""

from __future__ import annotations

import io

from compare.harness import CORRECTNESS_METRICS, RunConfig, run_cell
from compare.modes import Skip, _build, _eager_lib, default_modes
from compare.workloads import get as get_workload


def _section(out: io.StringIO, title: str) -> None:
    out.write(f"\n== {title} ==\n")


def _report_text(report) -> str:
    return report.to_string(max_rows=60, max_colwidth=60)


def explain(name: str, size: str = "small", device: str = "cpu", modes: list[str] | None = None) -> str:
    """The explanation as text (the CLI prints it)."""
    wl = get_workload(name)
    modes = modes or default_modes(device)
    out = io.StringIO()
    out.write(f"workload {wl.name} ({wl.kind}), defined at {wl.source}\n")
    if wl.note:
        out.write(f"note: {wl.note}\n")
    out.write(f"sizes: {', '.join(wl.sizes)}; outputs: {', '.join(wl.outputs)}; peers written: "
              f"{', '.join(sorted(wl.peers)) or 'none (torch runs the workload itself)'}\n")
    arrays = wl.make_inputs(size)
    out.write("inputs (" + size + "): " + ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in arrays.items())
              + "\n")
    if "traced" in modes:
        _explain_traced(out, wl, arrays, device)
    if "compiled" in modes:
        _explain_compiled(out, wl, arrays, device)
    _section(out, "side by side (" + ", ".join(modes) + ")")
    cfg = RunConfig(modes=modes, sizes=[size], device=device, repeats=3, warmup=1, target_s=1e-3)
    rows = run_cell(wl, size, cfg)
    for r in rows:
        if r["metric"] == "run" and r["status"] != "ok":
            out.write(f"{r['mode']}: {r['status']}: {r['detail']}\n")
        elif r["metric"] in CORRECTNESS_METRICS[::2]:
            out.write(f"{r['mode']} {r['metric'].replace('abs_err_', '')}: {r['status']}: {r['detail']}\n")
        elif r["metric"] == "time":
            out.write(f"{r['mode']} time per call: {r['value'] * 1e3:.3f} ms\n")
    return out.getvalue()


def _explain_traced(out: io.StringIO, wl, arrays: dict, device: str) -> None:
    import tracer
    _section(out, "traced")
    try:
        prog = _build(wl, _eager_lib(device), arrays, device)
        traced = tracer.trace(prog.fn, *prog.args)
    except Skip as s:
        out.write(f"skipped: {s}\n")
        return
    except Exception as e:  # noqa: BLE001  (explain reports what failed instead of dying)
        out.write(f"tracing failed: {type(e).__name__}: {e}\n")
        return
    out.write(f"{traced.graph}\n")
    assumptions = list(traced.assumptions)
    out.write("assumptions:\n" + ("".join(f"  - {a}\n" for a in assumptions) if assumptions else "  none recorded\n"))


def _explain_compiled(out: io.StringIO, wl, arrays: dict, device: str) -> None:
    import compiler
    _section(out, "compiled")
    try:
        prog = _build(wl, _eager_lib(device), arrays, device)
        compiled = compiler.compile(prog.fn, *prog.args, device=device)
    except Skip as s:
        out.write(f"skipped: {s}\n")
        return
    except Exception as e:  # noqa: BLE001
        out.write(f"compiling failed: {type(e).__name__}: {e}\n")
        return
    groups = compiled.lowered.program.schedule.groups
    out.write(f"fusion groups: {len(groups)}\n" + "".join(f"  - {g}\n" for g in groups))
    out.write(f"kernels per call: {len(compiled.kernels)}\n")
    for k in compiled.kernels:
        out.write(f"--- {k.name}\n{k.source}\n")
    try:
        out.write(_report_text(compiled.report(show=False)) + "\n")
    except Exception as e:  # noqa: BLE001
        out.write(f"report() failed: {type(e).__name__}: {e}\n")
