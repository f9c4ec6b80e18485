"""The report's machine sections for a run spread over machines (Ray, merged shards).

``machine_sections(df)`` returns sections in ``compare.report``'s form, ``(title, kind, content)``:

- **Machines** (when results came from several machines, or a cell was retried or failed): each host with its
  machine kind, cells, wall time and versions; the cells that were retried or failed, with the reason; versions
  that differ between hosts of one kind.
- **Machine kind: ...** (one per kind, when there is more than one): that kind's correctness and timing
  tables. Ratios are one machine's (a cell never spans machines), and absolute times of two kinds are not
  comparable, so each kind gets its own tables.

:func:`write_run_report` writes ``compare.report.write_report``'s report and adds these sections to
``report.md`` and ``report.html`` unless the report already has them.

    >>> import pandas as pd
    >>> machine_sections(pd.DataFrame(columns=["machine", "host"]))
    []
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

TITLE = "Machines"
VERSION_KEYS = ("commit", "python", "numpy", "jax", "torch", "cupy-cuda13x", "cupy-cuda12x")


def _kinds(df: pd.DataFrame) -> list[str]:
    return [k for k in dict.fromkeys(df["machine"].dropna()) if k] if "machine" in df else []


def machine_sections(df: pd.DataFrame) -> list[tuple[str, str, object]]:
    """Sections on the machines of a run (see the module docstring); none for a one-machine run."""
    meta = df.attrs.get("meta", {})
    machines = meta.get("machines") or {}
    cells = meta.get("cells") or {}
    troubled = [(c, v) for c, v in cells.items() if v.get("error") or v.get("attempts", 1) > 1]
    kinds = _kinds(df)
    if len(machines) <= 1 and len(kinds) <= 1 and not troubled:
        return []
    secs: list[tuple[str, str, object]] = [(TITLE, "text", _overview(df, machines, cells, kinds))]
    secs.append(("", "table", host_table(machines, cells)))
    if troubled:
        secs.append(("Retried and failed cells", "list", [
            (c, "error" if v.get("error") else f"retried, ran on {v.get('host')}",
             v.get("error") or v.get("retried_after", "")) for c, v in troubled]))
    drift = version_drift(machines)
    if drift:
        secs.append(("Versions that differ between hosts of one kind", "list", drift))
    if len(kinds) > 1:
        secs += per_kind_sections(df, machines)
    return secs


def _overview(df, machines: dict, cells: dict, kinds: list[str]) -> str:
    failed = sum(bool(v.get("error")) for v in cells.values())
    return (f"{len(cells) or df.groupby(['workload', 'size']).ngroups} cells on {len(machines)} host(s) of "
            f"{len(kinds)} machine kind(s){f'; {failed} could not run' if failed else ''}. Every mode and peer of "
            "a cell ran on one machine, timed round-robin there, so each ratio in this report is one machine's; "
            "absolute times of different machine kinds are not comparable"
            + (" (a section per kind follows)." if len(kinds) > 1 else "."))


def host_table(machines: dict, cells: dict) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Host, machine kind, cells run, their wall time, and versions."""
    keys = [k for k in VERSION_KEYS if any(k in m for m in machines.values())]
    body = []
    for host, m in machines.items():
        mine = [v for v in cells.values() if v.get("host") == host]
        seconds = sum(v.get("seconds") or 0.0 for v in mine)
        row = [(host, ""), (m.get("kind", ""), ""), (str(len(mine)), ""), (f"{seconds:.1f} s", "")]
        row += [(str(m.get(k, "")), "") for k in keys]
        body.append(row)
    return ["host", "machine kind", "cells", "wall time", *keys], body


def version_drift(machines: dict) -> list[tuple[str, str, str]]:
    """(machine kind, key, host=value, ...) for versions and commits that differ between hosts of one kind."""
    out = []
    by_kind: dict[str, dict[str, dict]] = {}
    for host, m in machines.items():
        by_kind.setdefault(m.get("kind", ""), {})[host] = m
    for kind, hosts in by_kind.items():
        for k in VERSION_KEYS:
            values = {h: m.get(k, "-") for h, m in hosts.items()}
            if len(set(values.values())) > 1:
                out.append((kind, k, ", ".join(f"{h}={v}" for h, v in values.items())))
    return out


def per_kind_sections(df: pd.DataFrame, machines: dict) -> list[tuple[str, str, object]]:
    """Correctness and timing tables of each machine kind's cells."""
    from compare.plots import SIZE_ORDER
    from compare.report import correctness_table, timing_table
    secs: list[tuple[str, str, object]] = []
    for kind in _kinds(df):
        sub = df[df["machine"] == kind]
        sub.attrs = df.attrs
        hosts = sorted(h for h, m in machines.items() if m.get("kind") == kind) or sorted(set(sub.host))
        bandwidth = {m.get("copy_bandwidth_gbps") for h, m in machines.items() if h in hosts} - {None}
        text = (f"{sub.groupby(['workload', 'size']).ngroups} cells on {', '.join(hosts)}"
                + (f"; copy bandwidth {max(bandwidth)} GB/s" if bandwidth else "") + ".")
        secs += [(f"Machine kind: {kind}", "text", text), ("", "table", correctness_table(sub))]
        for size in [s for s in SIZE_ORDER if s in set(sub[sub.metric == "time"]["size"])]:
            secs += [(f"Time per call on {kind}, size {size}", "table", timing_table(sub, size))]
    return secs


# ------------------------------------------------------------------ rendering into a written report
def _md(secs) -> str:
    from compare.report import _md_table
    out = []
    for title, kind, content in secs:
        if title:
            out += [f"## {title}", ""]
        if kind == "text":
            out += [content, ""]
        elif kind == "table":
            out += [_md_table(*content), ""]
        elif kind == "list":
            out += [f"- **{a}** [{b}]: {c}" for a, b, c in content] or ["none"]
            out.append("")
    return "\n".join(out)


def _html(secs) -> str:
    from compare.report import _html_table
    parts = []
    for title, kind, content in secs:
        if title:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        if kind == "text":
            parts.append(f"<p>{html.escape(content)}</p>")
        elif kind == "table":
            parts.append(_html_table(*content))
        elif kind == "list":
            items = "".join(f"<li><b>{html.escape(a)}</b> [{html.escape(b)}]: <code>{html.escape(c)}</code></li>"
                            for a, b, c in content)
            parts.append(f"<ul>{items}</ul>")
    return "\n".join(parts)


def write_run_report(df: pd.DataFrame, out_dir: Path) -> Path:
    """``compare.report.write_report``, plus the machine sections when the run had several machines (added to
    report.md and report.html unless ``write_report`` already wrote them)."""
    from compare.report import write_report
    out_dir = write_report(df, Path(out_dir))
    secs = machine_sections(df)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    if not secs or f"## {TITLE}\n" in md_path.read_text():
        return out_dir
    md_path.write_text(md_path.read_text().rstrip("\n") + "\n\n" + _md(secs))
    page = html_path.read_text()
    cut = page.rfind("</body>")
    html_path.write_text(page[:cut] + _html(secs) + page[cut:])
    return out_dir
