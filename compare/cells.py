"""Cell results: one workload at one size, measured on one machine, as a record that travels and merges.

A run spread over machines (Ray tasks, CI shards) produces one record per cell: its rows (the harness's), the
machine it ran on (``compare.machine.machine_record``), its wall time, how many attempts it took and, for a cell
that could not run, the reason. Records are appended to ``cells.jsonl`` as they arrive, so a run that stops
half-way keeps what finished; :func:`assemble` turns records into the one DataFrame a report is written from.

    >>> from compare.harness import RunConfig
    >>> cfg = RunConfig(workloads=["softmax"], modes=["eager", "numpy"], sizes=["small"])
    >>> rec = error_record(cfg, "softmax", "small", "worker died", attempts=2)
    >>> df = assemble([rec], cfg, {"commit": "abc"})
    >>> df[df.metric == "run"][["mode", "status"]].values.tolist()
    [['eager', 'error'], ['numpy', 'error']]
    >>> df.attrs["meta"]["cells"]["softmax/small"]["attempts"]
    2
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from compare.harness import COLUMNS, RunConfig
from compare.machine import HARDWARE_KEYS, MACHINE_KEYS, machine_kind, machine_record
from compare.modes import MODES
from compare.workloads import REGISTRY

RECORDS = "cells.jsonl"   # one JSON record per finished cell, appended as cells arrive
RUN_META = "run.json"     # the run's configuration, commit and command, written before the first cell
VARIES = "varies: see 'Machines'"


def key(workload: str, size: str) -> str:
    """The name of a cell: ``"softmax/small"``."""
    return f"{workload}/{size}"


def ok_record(workload: str, size: str, rows: list[dict], machine: dict, seconds: float, attempts: int = 1,
              retried_after: str = "") -> dict:
    """A cell that ran: its rows and the machine (a ``machine_record``) every one of them was measured on."""
    return {"cell": key(workload, size), "workload": workload, "size": size, "status": "ok", "rows": rows,
            "machine": machine, "seconds": round(seconds, 3), "attempts": attempts, "retried_after": retried_after}


def error_record(cfg: RunConfig, workload: str, size: str, reason: str, attempts: int) -> dict:
    """A cell that could not run (its task failed or its node died, ``attempts`` times): an ``error`` run row per
    selected mode, with the reason, so the cell shows in every table instead of going missing."""
    wl = REGISTRY.get(workload)
    why = f"cell failed after {attempts} attempt(s): {reason}" if attempts else f"cell did not run: {reason}"
    rows: list[dict] = []
    for mode in cfg.selected_modes():
        family = MODES[mode].family
        rows.append({"workload": workload, "kind": wl.kind if wl else "?", "size": size, "mode": mode,
                     "family": family, "device": cfg.device, "metric": "run", "value": math.nan, "unit": "",
                     "status": "error", "detail": why,
                     "samples": None, "expected_divergence": bool(wl and wl.expect_divergence and family == "peer")})
    return _failed(workload, size, rows, reason, attempts)


def _failed(workload: str, size: str, rows: list[dict], reason: str, attempts: int) -> dict:
    return {"cell": key(workload, size), "workload": workload, "size": size, "status": "error", "rows": rows,
            "machine": None, "seconds": math.nan, "attempts": attempts, "error": reason}


# ------------------------------------------------------------------ cells.jsonl
def append(path: Path, record: dict) -> None:
    """Append one record as a line and flush it to disk: a crash of the driver later loses nothing written."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def read(path: Path) -> list[dict]:
    """Records of a ``cells.jsonl``; a last line cut off by a crash is ignored (its cell counts as not run)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def records_from_frame(df: pd.DataFrame) -> list[dict]:
    """Split results (one machine's run, a shard, or a merged run) back into cell records."""
    meta = df.attrs.get("meta", {})
    machines, cells_meta = meta.get("machines") or {}, meta.get("cells") or {}
    seconds = meta.get("cell_seconds") or {}
    here = machine_record(meta)
    out = []
    for (workload, size), rows in df.groupby(["workload", "size"], sort=False):
        name = key(workload, size)
        info = cells_meta.get(name, {})
        if info.get("error"):
            out.append(_failed(workload, size, _records(rows), info["error"], info.get("attempts", 1)))
            continue
        host = rows.host.dropna().iloc[0] if rows.host.notna().any() else here.get("host", "")
        machine = machines.get(host) or {**here, "copy_bandwidth_gbps": meta.get("copy_bandwidth_gbps")}
        out.append(ok_record(workload, size, _records(rows), machine, seconds.get(name, math.nan),
                             info.get("attempts", 1), info.get("retried_after", "")))
    return out


def _records(rows: pd.DataFrame) -> list[dict]:
    return json.loads(rows[COLUMNS[:-2]].to_json(orient="records"))


# ------------------------------------------------------------------ one DataFrame
def assemble(records: list[dict], cfg: RunConfig, base_meta: dict) -> pd.DataFrame:
    """One DataFrame of ``records`` in the configuration's cell order, every row with its machine and host, and
    metadata: ``base_meta`` (commit, command, date) with the machine fields the machines share, every machine
    in ``meta['machines']`` (by host), and each cell's host, attempts and error in ``meta['cells']``."""
    order = {key(w, s): i for i, (w, s) in enumerate(cfg.cells())}
    records = sorted(records, key=lambda r: order.get(r["cell"], len(order)))
    rows: list[dict] = []
    machines: dict[str, dict] = {}
    cells: dict[str, dict] = {}
    for rec in records:
        m = rec.get("machine") or {}
        host, kind = m.get("host", ""), m.get("kind", "")
        if host:
            machines.setdefault(host, m)
        rows += [{**r, "machine": kind, "host": host} for r in rec["rows"]]
        cells[rec["cell"]] = {"host": host, "machine": kind, "seconds": rec.get("seconds"),
                              "attempts": rec.get("attempts", 1),
                              **({"worker": rec["worker"]} if rec.get("worker") else {}),
                              **({"retried_after": rec["retried_after"]} if rec.get("retried_after") else {}),
                              **({"error": rec["error"]} if rec.get("error") else {})}
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["value"] = df["value"].astype(float)
    df.attrs["meta"] = merged_meta(base_meta, machines, cells, cfg)
    return df


def merged_meta(base: dict, machines: dict[str, dict], cells: dict[str, dict], cfg: RunConfig) -> dict:
    """The run's metadata over several machines: a machine field the machines agree on is stated as it is (so a
    one-machine run reads as before); one they differ on says so and points to the Machines section."""
    meta = {k: v for k, v in base.items() if k not in MACHINE_KEYS or k == "commit"}
    for k in (*HARDWARE_KEYS, *[k for k in MACHINE_KEYS if k not in ("host", "commit", *HARDWARE_KEYS)]):
        values = {m[k] for m in machines.values() if k in m}
        if values:
            meta[k] = values.pop() if len(values) == 1 else VARIES
    meta["device"] = cfg.device
    meta["host"] = next(iter(machines)) if len(machines) == 1 else f"{len(machines)} hosts"
    meta["config"] = asdict(cfg)
    meta["machines"] = machines
    meta["cells"] = cells
    meta["cell_seconds"] = {c: v["seconds"] for c, v in cells.items() if not v.get("error")}
    bandwidth = {m.get("copy_bandwidth_gbps") for m in machines.values()} - {None}
    if len(kinds(machines)) == 1 and bandwidth:  # one roofline only when every row was timed on one kind
        meta["copy_bandwidth_gbps"] = max(float(b) for b in bandwidth)
    else:
        meta.pop("copy_bandwidth_gbps", None)
    return meta


def kinds(machines: dict[str, dict]) -> list[str]:
    """The distinct machine kinds of ``meta['machines']``, in first-seen order."""
    return list(dict.fromkeys(m.get("kind") or machine_kind(m) for m in machines.values()))


def with_machine_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Results written before rows carried their machine: fill ``machine``/``host`` from the run's metadata."""
    meta = df.attrs.get("meta", {})
    if "machine" not in df or df["machine"].isna().all():
        df = df.copy()
        df["machine"] = machine_kind(meta) if meta.get("cpu") or meta.get("gpu") else ""
        df["host"] = meta.get("host", "")
        df.attrs["meta"] = meta
    return df
