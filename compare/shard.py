"""Shards: a deterministic 1/N of the matrix's cells per CI job, and the merge of the shards into one run.

Every job computes the same plan from the same inputs (the configuration and a cost per cell), so shard K of
N needs no coordination: cells are dealt, most expensive first, to the least loaded shard (ties: the lower
shard; cells of equal cost: run order). A cell's cost is its measured wall time when a previous run's results
are given (``meta['cell_seconds']``, or, for results older than that, its setup times plus the timing loop its
configuration implies), else an estimate from the configuration alone. The plan is recorded in each shard's
results (``meta['shard']``) and :func:`merge` checks that the shards are one plan's, at one commit, with one
configuration.

    >>> from compare.harness import RunConfig
    >>> cfg = RunConfig.quick(workloads=["softmax", "layer_norm", "mlp_train_adam"], modes=["eager", "numpy"])
    >>> plan_cells(cfg, 2)
    {'softmax/small': 2, 'layer_norm/small': 2, 'mlp_train_adam/small': 1}
    >>> parse_shard("2/4")
    (2, 4)
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from compare import cells as cellrec
from compare.harness import RunConfig
from compare.workloads import REGISTRY

# rough one-time costs of a cell's modes (seconds: trace, C compile, peers' jit), by workload kind and size,
# for when no run has been measured; only their order matters for balance
SETUP_ESTIMATE = {"forward": 0.5, "train": 1.5}
SIZE_WEIGHT = {"small": 1.0, "medium": 2.0, "large": 4.0}
SETUP_METRICS = ("first_call", "trace_time", "compile_cold", "compile_cached")


class MergeError(ValueError):
    """Results that cannot be merged into one run (different commits, configurations or plans; a missing or
    repeated shard); the message names the directories and what differs."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N with whole numbers, e.g. --shard 2/4 (the 2nd of 4 "
                         "shards)") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: K must be between 1 and N (shards are numbered 1..N)")
    return k, n


# ------------------------------------------------------------------ costs and the plan
def estimated_cost(cfg: RunConfig, workload: str, size: str) -> float:
    """Seconds a cell should take, from its configuration: each mode's timing loop (warm-up, calibration and
    repeats of about ``target_s``) plus a one-time setup that grows with the size; train steps cost more."""
    modes = len(cfg.selected_modes())
    kind = REGISTRY[workload].kind if workload in REGISTRY else "forward"
    timing = modes * (cfg.repeats + cfg.warmup + 2) * cfg.target_s
    return timing + modes * SETUP_ESTIMATE.get(kind, 1.0) * SIZE_WEIGHT.get(size, 1.0)


def measured_costs(df: pd.DataFrame) -> dict[str, float]:
    """Seconds per cell of earlier results: their recorded wall times, or (results older than those) the
    measured setup times plus the timing loop their configuration implies."""
    meta = df.attrs.get("meta", {})
    if meta.get("cell_seconds"):
        return {c: float(s) for c, s in meta["cell_seconds"].items() if s is not None and math.isfinite(s)}
    config = meta.get("config") or {}
    loop = (config.get("repeats", 15) + config.get("warmup", 2) + 2) * config.get("target_s", 0.02)
    out = {}
    for (w, s), rows in df.groupby(["workload", "size"], sort=False):
        setup = rows[rows.metric.isin(SETUP_METRICS)].value.fillna(0).sum()
        timed = rows[rows.metric == "time"]["mode"].nunique()
        out[cellrec.key(w, s)] = float(setup + timed * loop)
    return out


def cell_costs(cfg: RunConfig, measured: dict[str, float] | None = None) -> dict[str, float]:
    """A cost for every cell of ``cfg``: measured where known, estimated elsewhere (scaled to the measured ones,
    so a new workload is neither free nor dominant)."""
    measured = measured or {}
    cells = cfg.cells()
    est = {cellrec.key(w, s): estimated_cost(cfg, w, s) for w, s in cells}
    known = [c for c in est if c in measured]
    scale = sum(measured[c] for c in known) / sum(est[c] for c in known) if known else 1.0
    return {c: round(measured[c] if c in measured else est[c] * scale, 6) for c in est}


def plan(costs: dict[str, float], n: int) -> dict[str, int]:
    """Cell -> shard (1..n): most expensive first onto the least loaded shard (longest processing time first);
    deterministic: ties go to the earlier cell and the lower shard."""
    names, values = list(costs), list(costs.values())
    load = [0.0] * n
    out: dict[str, int] = {}
    for i in sorted(range(len(names)), key=lambda i: (-values[i], i)):
        shard = min(range(n), key=lambda j: (load[j], j))
        load[shard] += values[i]
        out[names[i]] = shard + 1
    return {c: out[c] for c in names}  # in run order


def plan_cells(cfg: RunConfig, n: int, measured: dict[str, float] | None = None) -> dict[str, int]:
    """The plan of ``cfg`` over ``n`` shards (see :func:`plan`)."""
    return plan(cell_costs(cfg, measured), n)


def plan_id(assignment: dict[str, int]) -> str:
    return hashlib.sha256(json.dumps(sorted(assignment.items())).encode()).hexdigest()[:12]


def shard_cells(cfg: RunConfig, k: int, n: int, measured: dict[str, float] | None = None
                ) -> tuple[list[tuple[str, str]], dict]:
    """The cells of shard ``k`` of ``n`` (in run order) and the ``meta['shard']`` record that merge checks."""
    assignment = plan_cells(cfg, n, measured)
    mine = [(w, s) for w, s in cfg.cells() if assignment[cellrec.key(w, s)] == k]
    costs = cell_costs(cfg, measured)
    record = {"index": k, "count": n, "plan": assignment, "plan_id": plan_id(assignment),
              "costs": "measured" if measured else "estimated",
              "expected_seconds": round(sum(costs[cellrec.key(w, s)] for w, s in mine), 1)}
    return mine, record


# ------------------------------------------------------------------ merge
def load(path: str | Path) -> pd.DataFrame:
    """Results of one directory: ``results.json``, or the ``cells.jsonl`` of a run that stopped before writing
    it (with its ``run.json``); cells of such a run that never reported become error cells."""
    from compare.report import load_results
    path = Path(path)
    if (path / "results.json").exists() or path.suffix == ".json":
        return cellrec.with_machine_columns(load_results(path))
    if (path / cellrec.RECORDS).exists() and (path / cellrec.RUN_META).exists():
        meta = json.loads((path / cellrec.RUN_META).read_text())
        cfg = config_of(meta, path)
        records = cellrec.read(path / cellrec.RECORDS)
        seen = {r["cell"] for r in records}
        records += [cellrec.error_record(cfg, w, s, "not run: the run stopped before this cell reported", 0)
                    for w, s in cfg.cells() if cellrec.key(w, s) not in seen]
        return cellrec.assemble(records, cfg, meta)
    raise FileNotFoundError(f"{path}: no results.json (nor cells.jsonl with run.json): give a directory written by "
                            "`graphduel run --out DIR` (with --shard K/N or --ray)")


def config_of(meta: dict, where: object = "results") -> RunConfig:
    config = dict(meta.get("config") or {})
    if not config:
        raise MergeError(f"{where}: no recorded run configuration; only results of `graphduel run` merge")
    fields = RunConfig.__dataclass_fields__
    return RunConfig(**{k: v for k, v in config.items() if k in fields})


def _same_config(metas: dict[str, dict]) -> None:
    """Every input at one commit with one configuration (the command, which names the shard, aside)."""
    commits = {d: m.get("commit", "unknown") for d, m in metas.items()}
    if len(set(commits.values())) > 1:
        listing = ", ".join(f"{d}: {c}" for d, c in commits.items())
        raise MergeError(f"shards of different commits cannot be merged ({listing}); run every shard at one commit")
    configs = {d: {k: v for k, v in (m.get("config") or {}).items() if k != "command"} for d, m in metas.items()}
    first_dir, first = next(iter(configs.items()))
    for d, c in configs.items():
        diff = sorted(k for k in set(first) | set(c) if first.get(k) != c.get(k))
        if diff:
            detail = "; ".join(f"{k}: {first.get(k)!r} in {first_dir}, {c.get(k)!r} in {d}" for k in diff)
            raise MergeError(f"shards of different configurations cannot be merged ({detail}); run every shard "
                             "with the same options")


def _same_plan(metas: dict[str, dict]) -> None:
    """Shards of one plan, each once, none missing (a run without ``--shard`` merges as a whole)."""
    shards = {d: m["shard"] for d, m in metas.items() if m.get("shard")}
    if not shards:
        return
    if len(shards) != len(metas):
        whole = [d for d in metas if d not in shards]
        raise MergeError(f"{', '.join(whole)}: not a shard (no --shard K/N); merge shards of one plan only")
    if len({(s["plan_id"], s["count"]) for s in shards.values()}) > 1:
        listing = ", ".join(f"{d}: {s['index']}/{s['count']} plan {s['plan_id']}" for d, s in shards.items())
        raise MergeError(f"shards of different plans ({listing}): every shard must be planned from the same "
                         "--costs file (or none) and the same N")
    seen: dict[int, str] = {}
    for d, s in shards.items():
        if s["index"] in seen:
            raise MergeError(f"shard {s['index']}/{s['count']} given twice ({seen[s['index']]} and {d})")
        seen[s["index"]] = d
    count = next(iter(shards.values()))["count"]
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise MergeError(f"shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing: give all {count} shard "
                         "directories")


def merge(dirs: list[str | Path]) -> pd.DataFrame:
    """One run from shard results (or the cells a stopped run wrote): checked to be of one commit,
    configuration and plan, every cell exactly once, rows in the configuration's order."""
    if not dirs:
        raise MergeError("nothing to merge: give the shard directories")
    repeated = [d for i, d in enumerate(dirs) if Path(d).resolve() in {Path(e).resolve() for e in dirs[:i]}]
    if repeated:
        raise MergeError(f"{', '.join(map(str, repeated))} given twice: give each shard directory once")
    frames = {str(d): load(d) for d in dirs}
    metas = {d: f.attrs.get("meta", {}) for d, f in frames.items()}
    for d, m in metas.items():
        config_of(m, d)
    _same_config(metas)
    _same_plan(metas)
    cfg = config_of(next(iter(metas.values())))
    records, origin = [], {}
    for d, f in frames.items():
        for rec in cellrec.records_from_frame(f):
            if rec["cell"] in origin:
                raise MergeError(f"cell {rec['cell']} is in both {origin[rec['cell']]} and {d}: each cell must be "
                                 "measured once (merge the shards of one plan)")
            origin[rec["cell"]] = d
            records.append(rec)
    first = next(iter(metas.values()))
    base = {k: first[k] for k in ("commit", "device") if k in first}
    base["date"] = max(m.get("date", "") for m in metas.values())
    base["command"] = "graphduel merge " + " ".join(str(d) for d in dirs)
    base["merged"] = {d: m.get("command", "") for d, m in metas.items()}
    return cellrec.assemble(records, cfg, base)
