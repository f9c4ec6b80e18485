"""Reports: ``results.csv``, ``results.json``, ``report.md``, a self-contained ``report.html`` and PNG plots.

    >>> from compare.harness import RunConfig, run
    >>> import tempfile, pathlib
    >>> df = run(RunConfig(workloads=["softmax"], modes=["eager"], sizes=["small"], repeats=3, target_s=1e-3))
    >>> out = write_report(df, pathlib.Path(tempfile.mkdtemp()))
    >>> sorted(p.name for p in out.iterdir())[:4]
    ['report.html', 'report.md', 'results.csv', 'results.json']
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from compare.harness import COLUMNS, CORRECTNESS_METRICS, GUARD_METRICS, failed_cells, summary_line
from compare.plots import SIZE_ORDER, write_plots

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.pass { background: #e6f4ea; } td.fail { background: #fce8e6; } td.expected { background: #fef7e0; }
td.skip { color: #888; } td.error { background: #f4cccc; }
code, pre { background: #f6f8fa; padding: .1em .3em; border-radius: 3px; font-size: .85em; }
pre { padding: .6em; overflow-x: auto; white-space: pre-wrap; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.meta td { text-align: left; }
"""


# ------------------------------------------------------------------ results files
def save_results(df: pd.DataFrame, out_dir: Path) -> None:
    """``results.json`` (rows plus machine metadata, read back by ``graphduel report`` and the gate) and
    ``results.csv`` (the same rows; samples as JSON text; metadata repeated as columns)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = df.attrs.get("meta", {})
    rows = json.loads(df.to_json(orient="records"))
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    flat = df.copy()
    flat["samples"] = flat["samples"].map(lambda s: json.dumps(s) if isinstance(s, list) else "")
    for key in ("commit", "cpu", "date"):
        flat[key] = meta.get(key, "")
    flat.to_csv(out_dir / "results.csv", index=False)


def load_results(path: str | Path) -> pd.DataFrame:
    """Read ``results.json`` (or a directory holding one) back into the harness's DataFrame."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a results.json written by `graphduel run`")
    data = json.loads(path.read_text())
    if "rows" not in data:
        raise ValueError(f"{path} is not a graphduel results file (no 'rows'); pytest-benchmark files are read "
                         "by `graphduel gate`, not `graphduel report`")
    df = pd.DataFrame(data["rows"], columns=COLUMNS)
    df["value"] = df["value"].astype(float)
    df.attrs["meta"] = data.get("meta", {})
    return df


# ------------------------------------------------------------------ tables
def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    return f"{s * 1e6:.1f} us" if s < 1e-3 else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


def _modes(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["mode"]))


def correctness_table(df: pd.DataFrame) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Rows (workload/size) x modes; each cell is (text, css class)."""
    modes = _modes(df)
    header = ["workload / size", *modes]
    body = []
    for (wl, size), g in df.groupby(["workload", "size"], sort=False):
        row = [(f"{wl} / {size}", "")]
        row += [_verdict(g[g["mode"] == mode]) for mode in modes]
        body.append(row)
    return header, body


def _verdict(m: pd.DataFrame) -> tuple[str, str]:
    """One cell's correctness (its rows ``m``) as (text, css class): pass, FAIL vs ..., skip, error, or ''."""
    run = m[m.metric == "run"]
    if run.empty:
        return "", ""
    status = run.status.iloc[0]
    if status != "ok":
        return status, status
    checks = m[m.metric.isin(CORRECTNESS_METRICS[::2])]  # abs rows carry the status
    failed = checks[checks.status == "fail"]
    if failed.empty:
        return "pass", "pass"
    if bool(m.expected_divergence.iloc[0]) and (failed.metric == "abs_err_vs_eager").all():
        return "diverged (expected)", "expected"
    which = " + ".join(x.removeprefix("abs_err_vs_") for x in failed.metric)
    return f"FAIL vs {which}", "fail"


def timing_table(df: pd.DataFrame, size: str) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Median time per call and speedup; a cell whose answer is wrong shows its time and no speedup."""
    wrong = failed_cells(df)
    t = df[(df.metric == "time") & (df["size"] == size) & df.value.notna()]
    sp = df[(df.metric == "speedup_vs_eager") & (df["size"] == size)]
    iqr = df[(df.metric == "time_iqr") & (df["size"] == size)]
    modes = _modes(t)
    body = []
    for wl, g in t.groupby("workload", sort=False):
        row = [(wl, "")]
        for mode in modes:
            v = g[g["mode"] == mode].value
            if v.empty:
                row.append(("-", "skip"))
                continue
            s = sp[(sp.workload == wl) & (sp["mode"] == mode)].value
            q = iqr[(iqr.workload == wl) & (iqr["mode"] == mode)].value
            text = f"{_fmt_time(v.iloc[0])} ± {_fmt_time(q.iloc[0] / 2) if not q.empty else '?'}"
            if (wl, size, mode) in wrong:
                row.append((text + " (wrong answer: no speedup)", "fail"))
                continue
            if mode != "eager" and not s.empty:
                text += f" ({s.iloc[0]:.2f}x)"
            row.append((text, ""))
        body.append(row)
    return ["workload", *modes], body


SETUP_METRICS = ["first_call", "trace_time", "compile_cold", "compile_cached", "break_even_calls", "ir_nodes",
                 "kernels", "fusion_groups"]


def setup_table(df: pd.DataFrame) -> tuple[list[str], list[list[tuple[str, str]]]]:
    d = df[df.metric.isin(SETUP_METRICS) & df.value.notna()]
    body = []
    metrics = [m for m in SETUP_METRICS if m in set(d.metric)]
    for (wl, size, mode), g in d.groupby(["workload", "size", "mode"], sort=False):
        vals = dict(zip(g.metric, g.value))
        row = [(f"{wl} / {size} / {mode}", "")]
        for m in metrics:
            v = vals.get(m)
            if v is None:
                row.append(("", ""))
            elif m in ("first_call", "trace_time", "compile_cold", "compile_cached"):
                row.append((_fmt_time(v), ""))
            elif m == "break_even_calls":
                row.append(("never" if math.isinf(v) else f"{int(v)}", ""))
            else:
                row.append((f"{int(v)}", ""))
        body.append(row)
    return ["workload / size / mode", *metrics], body


def guard_table(df: pd.DataFrame) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Per traced/compiled cell: retraces, guard failures, eager fallbacks and the latest reason."""
    d = df[df.metric.isin(GUARD_METRICS) & df.value.notna()]
    body = []
    for (wl, size, mode), g in d.groupby(["workload", "size", "mode"], sort=False):
        vals = dict(zip(g.metric, g.value))
        detail = next((x for x in g.detail if x), "")
        busy = any(vals.get(m, 0) for m in GUARD_METRICS)
        row = [(f"{wl} / {size} / {mode}", "")]
        row += [(f"{int(vals[m])}" if m in vals else "", "expected" if busy and vals.get(m) else "")
                for m in GUARD_METRICS]
        row.append((detail.removeprefix("latest: "), ""))
        body.append(row)
    return ["workload / size / mode", "retraces", "guard failures", "eager fallbacks", "latest reason"], body


CONTROL_OPS = ("cond", "while_loop", "scan")
_LAX = {"cond": "lax.cond", "while_loop": "lax.while_loop", "scan": "lax.scan"}
_TORCH = {"cond": "torch.cond", "while_loop": "torch.while_loop", "scan": "torch._higher_order_ops.scan"}
_REGIONS = {"cond": "both branches as regions", "while_loop": "cond and body as regions",
            "scan": "the step as a region"}


_ONNX = {"cond": "If", "while_loop": "Loop", "scan": "Scan"}
_PY = {"cond": "if", "while_loop": "while", "scan": "for"}
_TS = {"cond": "prim::If", "while_loop": "prim::Loop", "scan": "prim::Loop"}


def control_flow_approach(op: str | None, mode: str) -> str:
    """How ``mode`` answers a workload's control flow: ``op`` is its structured op (cond, while_loop, scan), or
    None for Python control flow on Python state (DynamicNet's call counter).

        >>> control_flow_approach("scan", "jax.jit")
        'lax.scan under jax.jit'
        >>> control_flow_approach(None, "traced")
        'plain trace, guarded: the frozen branch is checked each call, a new outcome retraces'
    """
    if op == "script":  # tracer.script: Python control flow converted to cond / while_loop / scan
        scripted = {"traced": "tracer.script: the Python if on state becomes a cond node on lifted state",
                    "compiled": "tracer.script, compiled: a cond node on lifted state, its regions fused"}
        return scripted.get(mode) or control_flow_approach(None, mode)
    if op is None:
        return {
            "eager": "Python: the branch runs as it is reached",
            "traced": "plain trace, guarded: the frozen branch is checked each call, a new outcome retraces",
            "compiled": "plain trace compiled, guarded: a new outcome retraces and compiles again",
            "compiled+graph": "the compiled mode's trace, replayed as a CUDA graph",
            "numpy": "Python",
            "jax": "Python, op by op (no trace)",
            "jax.jit": "Python state frozen into the jitted program",
            "torch": "Python, eager",
            "torch.jit.trace": "Python state frozen into the traced graph",
            "torch.jit.script": "TorchScript keeps the Python if on the module's counter as a prim::If",
            "torch.compile": "Dynamo guards on the Python state and recompiles",
            "onnxruntime": "Python state frozen into the exported ONNX graph",
        }.get(mode, "")
    return {
        "eager": "Python: only the taken branch runs" if op == "cond" else "Python: the loop runs trip by trip",
        "traced": f"one {op} node with {_REGIONS[op]}, decided by the executor each call",
        "compiled": ("cond node: a host branch between the branches' fused kernels" if op == "cond" else
                     f"{op} node: one generated C loop around the region's fused kernels (no Python per trip; "
                     "a host loop on CUDA)"),
        "compiled+graph": "refused: a host-decided branch or trip count cannot be captured in a CUDA graph",
        "numpy": "Python (the float64 reference)",
        "jax": f"{_LAX[op]} without jax.jit (dispatched op by op)",
        "jax.jit": f"{_LAX[op]} under jax.jit",
        "torch": f"{_TORCH[op]}, eager",
        "torch.jit.trace": f"cannot record {_TORCH[op]}",
        "torch.jit.script": f"the TorchScript twin's Python {_PY[op]} kept as {_TS[op]}",
        "torch.compile": f"{_TORCH[op]} captured by Dynamo, compiled by Inductor",
        "onnxruntime": f"ONNX {_ONNX[op]} in the exported model, run by ONNX Runtime",
    }.get(mode, "")


def _control_op(workload: str) -> tuple[bool, str | None]:
    """Whether a workload belongs in the Control flow section, and its structured op (None: Python control
    flow, as in DynamicNet). Workloads no longer registered (an old results file) are judged by name."""
    from compare.workloads import REGISTRY
    wl = REGISTRY.get(workload)
    tags = wl.tags if wl is not None else ()
    op = next((t for t in tags if t in CONTROL_OPS), "script" if "script" in tags else None)
    return "control-flow" in tags or workload.startswith("dynamic_net"), op


def control_flow_table(df: pd.DataFrame) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Per control-flow workload (tag ``control-flow``, and DynamicNet) x size x mode: correct or not, retraces,
    guard failures, median time per call, and the static approach the mode used."""
    wrong = failed_cells(df)
    body = []
    for (wl, size), g in df.groupby(["workload", "size"], sort=False):
        listed, op = _control_op(wl)
        if not listed:
            continue
        for mode in _modes(g[g.metric == "run"]):
            m = g[g["mode"] == mode]
            vals = dict(zip(m.metric, m.value))
            t = vals.get("time", math.nan)
            time_text = _fmt_time(t) + (" (wrong answer)" if (wl, size, mode) in wrong else "")
            counts = [(f"{int(vals[k])}" if k in vals and math.isfinite(vals[k]) else "-", "")
                      for k in ("retraces", "guard_failures")]
            run = m[m.metric == "run"]
            approach = control_flow_approach(op, mode)
            if not run.empty and run.status.iloc[0] == "skip":  # the reason it could not, as measured
                approach = f"skipped: {run.detail.iloc[0]}"
            body.append([(f"{wl} / {size} / {mode}", ""), _verdict(m), *counts, (time_text, ""), (approach, "")])
    return ["workload / size / mode", "correct", "retraces", "guard failures", "time per call", "static approach"], \
        body


def problems(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(where, status, detail) for correctness failures and errors."""
    out = []
    bad = df[(df.metric.isin(CORRECTNESS_METRICS[::2]) & (df.status == "fail")) | (df.status == "error")]
    for _, r in bad.iterrows():
        label = "expected divergence" if r.expected_divergence and r.metric == "abs_err_vs_eager" else r.status
        out.append((f"{r.workload} / {r['size']} / {r['mode']} ({r.metric})", label, r.detail))
    return out


def skips(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    s = df[(df.metric == "run") & (df.status == "skip")]
    out = []
    for (mode, detail), g in s.groupby(["mode", "detail"], sort=False):
        out.append((mode, ", ".join(dict.fromkeys(g.workload)), detail))
    return out


# ------------------------------------------------------------------ rendering
def _md_table(header: list[str], body: list[list[tuple[str, str]]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(text.replace("|", "\\|") for text, _ in row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[tuple[str, str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f'<td class="{c}">{html.escape(t)}</td>' for t, c in row) + "</tr>"
                   for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _sections(df: pd.DataFrame) -> list[tuple[str, str, object]]:
    """(title, kind, content): kind is 'table', 'text', 'list' or 'image'."""
    meta = df.attrs.get("meta", {})
    secs: list[tuple[str, str, object]] = []
    secs.append(("Summary", "text", summary_line(df)))
    secs.append(("Correctness", "text",
                 "Each mode against the float64 NumPy reference (outputs, gradients and the state after one step) "
                 "and against eager over several calls; tolerances per dtype are in compare/correctness.py "
                 "(float32: rtol 1e-3, atol 1e-4 x max(1, max|ref|))."))
    secs.append(("", "table", correctness_table(df)))
    if (df.metric.isin(GUARD_METRICS)).any():
        secs.append(("Retraces and guard failures", "text",
                     "Traced and compiled modes check every value a trace froze (a branch on a tensor, .item(), a "
                     "boolean mask's positions, Python state such as a call counter): a failed guard runs the program "
                     "traced for that outcome or retraces, and past cache_size programs per signature the call runs "
                     "eagerly (as torch.compile does). Counted over every call of the cell (checks and timing)."))
        secs.append(("", "table", guard_table(df)))
    flow = control_flow_table(df)
    if flow[1]:
        secs.append(("Control flow", "text",
                     "Workloads whose result depends on a data-dependent branch or trip count (cond, while_loop, "
                     "scan), and DynamicNet (Python control flow on Python state). Correct: against float64 and "
                     "eager on every checked call; retraces and guard failures are counted for our traced and "
                     "compiled modes ('-': a peer, or not counted); time: median per call; the static approach "
                     "says how each mode keeps the decision on every call, or where it freezes it."))
        secs.append(("", "table", flow))
    sizes = [s for s in SIZE_ORDER if s in set(df[df.metric == "time"]["size"])]
    for size in sizes:
        secs.append((f"Time per call, size {size}", "text",
                     "Median seconds per call ± half the interquartile range over interleaved repeats, and the speedup "
                     "over eager measured in the same run. A cell with a wrong answer shows no speedup, and the plots "
                     "leave it out (marked 'wrong answer')."))
        secs.append(("", "table", timing_table(df, size)))
        secs.append(("", "image", f"speedup_{size}.png"))
    if len(sizes) > 1:
        secs.append(("Scaling", "image", "scaling.png"))
    if meta.get("copy_bandwidth_gbps"):
        secs.append(("Roofline", "text",
                     f"Effective GB/s (bytes of inputs and outputs, each once, per second) of the memory-bound "
                     f"workloads at the largest size, against this device's measured copy bandwidth "
                     f"({meta['copy_bandwidth_gbps']} GB/s, every core copying; compiler/report.py)."))
        secs.append(("", "image", "roofline.png"))
    train = list(dict.fromkeys(df[df.kind == "train"].workload))
    if train:
        secs.append(("Timeline of one train step", "text",
                     "One call of each train step after warm-up, eager above compiled on one time axis "
                     "(compare/timeline.py): eager's ops (blue) and backward nodes, the compiled kernels (red), "
                     "library calls and host steps; the white between slices is Python, dispatch and autograd "
                     "bookkeeping, which the static graph removes. `graphduel profile WORKLOAD --out trace.json` "
                     "writes the same call as a Chrome trace for Perfetto."))
        secs += [("", "image", f"timeline_{w}.png") for w in train]
        not_drawn = [(w, "timeline", why) for w, why in df.attrs.get("timelines", {}).items()]
        if not_drawn:
            secs.append(("", "list", not_drawn))
    secs.append(("One-time costs and structure", "text",
                 "First call (includes lazy compilation for jax.jit and torch.compile), trace and compile time "
                 "(cold: empty kernel cache; cached: compiled again), break-even: calls after which trace + compile "
                 "pay for themselves against eager; IR nodes, kernels and fusion groups per call. For torch.compile, "
                 "compile_cold is its first-call compile time (Dynamo, AOTAutograd and Inductor in an empty cache: "
                 "the first call less a steady one; on a train step, the modules' forward and backward and "
                 "optimizer.step); for torch.jit.script, the scripting of the workload's TorchScript twin."))
    secs.append(("", "table", setup_table(df)))
    from compare.machine_report import machine_sections  # lazy: machine_report imports this module
    secs.extend(machine_sections(df))
    secs.append(("Divergences, failures and errors", "list", problems(df)))
    secs.append(("Skipped", "list", skips(df)))
    return secs


def _meta_rows(meta: dict) -> list[tuple[str, str]]:
    keys = ["date", "command", "commit", "host", "device", "gpu", "cpu", "cores", "platform", "python", "numpy",
            "scipy", "jax", "jaxlib", "torch", "pandas", "cupy-cuda13x", "cupy-cuda12x", "copy_bandwidth_gbps"]
    return [(k, str(meta[k])) for k in keys if k in meta]


def render_markdown(df: pd.DataFrame, images: set[str]) -> str:
    meta = df.attrs.get("meta", {})
    out = [f"# graphduel report ({meta.get('device', 'cpu')})", "",
           "Machine, versions, command and date:", "",
           _md_table(["", ""], [[(f"**{k}**", ""), (f"`{v}`" if k == "command" else v, "")]
                                for k, v in _meta_rows(meta)]), ""]
    for title, kind, content in _sections(df):
        if title:
            out += [f"## {title}", ""]
        if kind == "text":
            out += [content, ""]
        elif kind == "table":
            out += [_md_table(*content), ""]
        elif kind == "image" and content in images:
            out += [f"![{content}]({content})", ""]
        elif kind == "list":
            out += [f"- **{a}** [{b}]: {c}" for a, b, c in content] or ["none"]
            out.append("")
    return "\n".join(out)


def render_html(df: pd.DataFrame, out_dir: Path, images: set[str]) -> str:
    meta = df.attrs.get("meta", {})
    parts = [f"<h1>graphduel report ({html.escape(meta.get('device', 'cpu'))})</h1>",
             '<table class="meta">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                             for k, v in _meta_rows(meta)) + "</table>"]
    for title, kind, content in _sections(df):
        if title:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        if kind == "text":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "table":
            parts.append(_html_table(*content))
        elif kind == "image" and content in images:
            data = base64.b64encode((out_dir / content).read_bytes()).decode()
            parts.append(f'<img alt="{content}" src="data:image/png;base64,{data}">')
        elif kind == "list":
            items = "".join(f"<li><b>{html.escape(a)}</b> [{html.escape(b)}]: <code>{html.escape(c)}</code></li>"
                            for a, b, c in content)
            parts.append(f"<ul>{items}</ul>" if items else "<p>none</p>")
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>graphduel report</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def write_report(df: pd.DataFrame, out_dir: Path) -> Path:
    """Write results, plots, ``report.md`` and ``report.html`` into ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_results(df, out_dir)
    copy_gbps = df.attrs.get("meta", {}).get("copy_bandwidth_gbps")
    images = {p.name for p in write_plots(df, out_dir, float(copy_gbps) if copy_gbps else None)}
    from compare.timeline import write_timeline_figures  # after the results are saved: a picture never loses them
    drawn = write_timeline_figures(df, out_dir)
    images |= {p.name for p in drawn.values() if isinstance(p, Path)}
    df.attrs["timelines"] = {w: why for w, why in drawn.items() if isinstance(why, str)}
    (out_dir / "report.md").write_text(render_markdown(df, images))
    (out_dir / "report.html").write_text(render_html(df, out_dir, images))
    return out_dir
