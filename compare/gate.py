"""The CI performance gate: exact structural checks and noise-aware timing-ratio checks against a baseline.

Two tiers:

- **structure** (deterministic, exact): IR nodes, kernels and fusion groups per workload/size/mode may not grow;
  a decrease passes but asks for a new baseline; a changed generated-source hash is reported, not failed.
  Correctness is gated too: a cell that passed in the baseline must still pass.
- **timing ratios** (noisy, statistical): ``mode/eager`` for traced and compiled and ``ours/peer`` for each
  peer, every ratio computed from repeats timed in the same run (interleaved, so load hits both sides).
  A ratio regresses when its median grew by more than ``threshold`` AND a one-sided Mann-Whitney U test
  says the current ratios exceed the baseline's times ``1 + threshold`` with p < ``alpha``. Growth without
  confidence is re-measured (more repeats, when the gate runs the workloads itself) and passes as ``noisy``
  if it never becomes significant.

Baselines are ``results.json`` files written by ``graphduel run`` (commit one), merged runs (``graphduel run
--ray``, ``graphduel merge``), or pytest-benchmark's saved JSON (``--benchmark-json`` / ``--benchmark-autosave``).

Per machine kind: timing ratios are compared between rows of one machine kind (``compare/machine.py``), so a
run spread over two kinds of machines is gated kind by kind. When each side was measured on one kind only they
are compared as before, whatever the kinds (ratios are what moves least between machines); otherwise a cell the
baseline timed on kind A and the current run only on kind B is reported ``other-machine`` (not gated).
Structure and correctness do not depend on the machine and are compared cell by cell.

    >>> import numpy as np
    >>> verdict(np.array([1.0, 1.02, 0.98, 1.01, 0.99]), np.array([2.0, 2.1, 1.9, 2.05, 1.95]), 0.3, 0.01)[0]
    'regressed'
    >>> verdict(np.array([1.0, 1.02, 0.98, 1.01, 0.99]), np.array([1.05, 0.97, 1.1, 1.0, 0.95]), 0.3, 0.01)[0]
    'ok'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from compare.cells import with_machine_columns
from compare.harness import COLUMNS, CORRECTNESS_METRICS, RunConfig, run_cell
from compare.modes import MODES, OURS
from compare.workloads import get as get_workload

STRUCTURE = ("ir_nodes", "kernels", "fusion_groups")
FAILING = ("regressed", "broken", "missing")


@dataclass
class Finding:
    tier: str        # "structure", "correctness" or "timing"
    what: str        # "softmax / small / compiled kernels", "softmax / small / traced/eager"
    baseline: float
    current: float
    status: str      # ok, improved, noisy, changed, regressed, broken, missing
    detail: str = ""

    @property
    def change(self) -> float:
        return self.current / self.baseline if self.baseline else math.nan


# ------------------------------------------------------------------ reading results
def load_any(path: str | Path) -> pd.DataFrame:
    """A graphduel ``results.json`` or a pytest-benchmark JSON, as harness rows."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"baseline/current file {path} does not exist; write one with "
                                "`graphduel run --out DIR` (DIR/results.json) or pytest --benchmark-json FILE")
    data = json.loads(path.read_text())
    if "rows" in data:
        df = pd.DataFrame(data["rows"], columns=COLUMNS)
        df["value"] = df["value"].astype(float)
        df.attrs["meta"] = data.get("meta", {})
        return with_machine_columns(df)
    if "benchmarks" in data:
        return from_pytest_benchmark(data)
    raise ValueError(f"{path}: neither a graphduel results.json (no 'rows') nor a pytest-benchmark file "
                     "(no 'benchmarks')")


def from_pytest_benchmark(data: dict) -> pd.DataFrame:
    """pytest-benchmark JSON -> rows. The workload is the benchmark's group (or its name without ``[...]``),
    the mode is ``extra_info['mode']``, else ``params['mode']``, else the ``[...]`` id; samples come from
    ``stats['data']`` when saved (``--benchmark-save-data``), else the median alone."""
    rows = []
    for b in data["benchmarks"]:
        name = b.get("name", "?")
        base, _, ident = name.partition("[")
        mode = (b.get("extra_info") or {}).get("mode") or (b.get("params") or {}).get("mode") or ident.rstrip("]")
        stats = b.get("stats", {})
        samples = stats.get("data") or [stats.get("median", math.nan)]
        mode = mode or "eager"
        rows.append({"workload": b.get("group") or base, "kind": "forward", "size": "-", "mode": mode,
                     "family": "ours" if mode in OURS else "peer", "device": "cpu",
                     "metric": "time", "value": float(np.median(samples)), "unit": "s", "status": "ok",
                     "detail": name, "samples": [float(s) for s in samples], "expected_divergence": False})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["meta"] = {"source": "pytest-benchmark", **{k: str(v) for k, v in (data.get("commit_info") or {}).items()
                                                         if k in ("id", "branch")}}
    return df


# ------------------------------------------------------------------ the statistics
def verdict(base: np.ndarray, cur: np.ndarray, threshold: float, alpha: float) -> tuple[str, float]:
    """('ok' | 'regressed' | 'noisy', p-value) for ratio samples ``cur`` against ``base``."""
    grown = np.median(cur) / np.median(base)
    if grown <= 1.0 + threshold:
        return "ok", math.nan
    if len(base) < 2 or len(cur) < 2:  # a single median each (pytest-benchmark without data): threshold alone
        return "regressed", math.nan
    p = float(mannwhitneyu(cur, base * (1.0 + threshold), alternative="greater").pvalue)
    return ("regressed" if p < alpha else "noisy"), p


def _samples(df: pd.DataFrame) -> dict[tuple, np.ndarray]:
    t = df[(df.metric == "time") & df.samples.notna()]
    return {(r.workload, r["size"], r["mode"]): np.asarray(r.samples, dtype=float) for _, r in t.iterrows()}


def ratio_samples(samples: dict, workload: str, size: str, mode: str, ref: str) -> np.ndarray | None:
    """Per-repeat ``mode/ref`` ratios (paired when both were timed in the same interleaved repeats)."""
    a, b = samples.get((workload, size, mode)), samples.get((workload, size, ref))
    if a is None or b is None or len(a) == 0 or len(b) == 0:
        return None
    return a / b if len(a) == len(b) else a / np.median(b)


def ratio_pairs(modes: set[str]) -> list[tuple[str, str]]:
    """Which ratios are gated: our traced/compiled over eager, and each of ours over each peer."""
    ours = [m for m in modes if MODES.get(m) is None or MODES[m].family == "ours"]
    peers = [m for m in modes if m in MODES and MODES[m].family == "peer"]
    pairs = [(m, "eager") for m in ours if m != "eager"]
    pairs += [(m, p) for m in ours for p in peers]
    if "eager" not in modes:  # e.g. pytest-benchmark groups without an eager benchmark: first mode as reference
        pairs += [(m, sorted(modes)[0]) for m in sorted(modes)[1:]]
    return pairs


# ------------------------------------------------------------------ the tiers
def compare_structure(base: pd.DataFrame, cur: pd.DataFrame) -> list[Finding]:
    out = []
    key = ["workload", "size", "mode", "metric"]
    b = base[base.metric.isin(STRUCTURE)].set_index(key).value
    c = cur[cur.metric.isin(STRUCTURE)].set_index(key).value
    for k, bv in b.items():
        what = f"{k[0]} / {k[1]} / {k[2]} {k[3]}"
        if k not in c.index:
            out.append(Finding("structure", what, bv, math.nan, "missing", "not measured in the current run"))
            continue
        cv = c[k]
        status = "ok" if cv == bv else ("regressed" if cv > bv else "improved")
        detail = "smaller than the baseline: commit a new baseline to lock it in" if status == "improved" else ""
        out.append(Finding("structure", what, bv, cv, status, detail))
    bh = base[base.metric == "source_hash"].set_index(key[:3]).detail
    ch = cur[cur.metric == "source_hash"].set_index(key[:3]).detail
    for k, h in bh.items():
        if k in ch.index and ch[k] != h:
            out.append(Finding("structure", f"{k[0]} / {k[1]} / {k[2]} generated source", math.nan, math.nan,
                               "changed", f"source hash {h} -> {ch[k]} (reported, not gated)"))
    return out


def compare_correctness(base: pd.DataFrame, cur: pd.DataFrame) -> list[Finding]:
    out = []
    key = ["workload", "size", "mode", "metric"]
    metrics = list(CORRECTNESS_METRICS[::2])
    b = base[base.metric.isin(metrics)].set_index(key)
    c = cur[cur.metric.isin(metrics)].set_index(key)
    for k, row in b.iterrows():
        if row.status != "pass" or k not in c.index:
            continue
        now = c.loc[k]
        if now.status == "fail":
            out.append(Finding("correctness", f"{k[0]} / {k[1]} / {k[2]} {k[3]}", row.value, now.value, "broken",
                               now.detail))
    return out


def compare_timing(base: pd.DataFrame, cur: pd.DataFrame, threshold: float, alpha: float) -> list[Finding]:
    """Timing ratios of ``cur`` against ``base``, machine kind by machine kind (see the module docstring)."""
    bk, ck = _machine_kinds(base), _machine_kinds(cur)
    if len(bk) <= 1 and len(ck) <= 1:
        return _compare_timing(base, cur, threshold, alpha)
    out = []
    for kind in bk:
        b = base[base["machine"] == kind]
        c = cur[cur["machine"] == kind]
        for f in _compare_timing(b, c, threshold, alpha, label=f" on {kind}"):
            if f.status == "missing":
                elsewhere = _timed_on(cur, *f.what.split(" / ")[:2])
                if elsewhere:
                    f.status = "other-machine"
                    f.detail = (f"timed on {', '.join(elsewhere)} now, not on {kind}: a ratio is compared on one "
                                "machine kind only")
            out.append(f)
    return out


def _machine_kinds(df: pd.DataFrame) -> list[str]:
    if "machine" not in df:
        return []
    return [k for k in dict.fromkeys(df.loc[df.metric == "time", "machine"].dropna()) if k]


def _timed_on(df: pd.DataFrame, workload: str, size: str) -> list[str]:
    t = df[(df.metric == "time") & (df.workload == workload) & (df["size"] == size)]
    return [k for k in dict.fromkeys(t["machine"].dropna()) if k] if "machine" in t else []


def _compare_timing(base: pd.DataFrame, cur: pd.DataFrame, threshold: float, alpha: float,
                    label: str = "") -> list[Finding]:
    out = []
    bs, cs = _samples(base), _samples(cur)
    cells = {(w, s) for (w, s, _m) in bs}
    for w, s in sorted(cells):
        modes = {m for (w2, s2, m) in bs if (w2, s2) == (w, s)}
        for mode, ref in ratio_pairs(modes):
            b = ratio_samples(bs, w, s, mode, ref)
            if b is None:
                continue
            c = ratio_samples(cs, w, s, mode, ref)
            what = f"{w} / {s} / {mode}/{ref}{label}"
            if c is None:
                out.append(Finding("timing", what, float(np.median(b)), math.nan, "missing",
                                   "not timed in the current run"))
                continue
            status, p = verdict(b, c, threshold, alpha)
            detail = f"n={len(b)}/{len(c)}" + ("" if math.isnan(p) else f", Mann-Whitney p={p:.3g}")
            out.append(Finding("timing", what, float(np.median(b)), float(np.median(c)), status, detail))
    return out


def evaluate(base: pd.DataFrame, cur: pd.DataFrame, threshold: float = 0.3, alpha: float = 0.01) -> list[Finding]:
    """All findings of ``cur`` against ``base``."""
    return compare_structure(base, cur) + compare_correctness(base, cur) + compare_timing(base, cur, threshold, alpha)


def remeasure(base: pd.DataFrame, cur: pd.DataFrame, findings: list[Finding], rounds: int, threshold: float,
              alpha: float, progress: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """Repeat-until-confident: re-time the cells whose ratio grew without significance, adding repeats."""
    cfg = _config_of(base)
    for _ in range(rounds):
        noisy = {tuple(f.what.split(" / ")[:2]) for f in findings if f.status == "noisy"}
        if not noisy:
            break
        extra = []
        for w, s in sorted(noisy):
            progress(f"re-measuring {w}/{s}")
            extra.extend(run_cell(get_workload(w), s, cfg))
        cur = _append_samples(cur, pd.DataFrame(extra, columns=COLUMNS))
        findings = compare_timing(base, cur, threshold, alpha)
    return cur


def _append_samples(cur: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    cur = cur.copy()
    for _, r in extra[(extra.metric == "time") & extra.samples.notna()].iterrows():
        mask = (cur.metric == "time") & (cur.workload == r.workload) & (cur["size"] == r["size"]) & \
               (cur["mode"] == r["mode"])
        for i in cur.index[mask]:
            cur.at[i, "samples"] = list(cur.at[i, "samples"] or []) + list(r.samples)
    return cur


def _config_of(df: pd.DataFrame) -> RunConfig:
    """The run configuration recorded in a baseline, so the gate re-runs exactly what the baseline ran."""
    c = dict(df.attrs.get("meta", {}).get("config") or {})
    if not c:
        raise ValueError("the baseline has no recorded run configuration (pytest-benchmark files have none): "
                         "give --current FILE measured by the same benchmarks")
    fields = RunConfig.__dataclass_fields__
    return RunConfig(**{k: v for k, v in c.items() if k in fields})


def measure_current(base: pd.DataFrame, progress: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """Run now what ``base`` ran (same workloads, modes, sizes, repeats)."""
    from compare.harness import run
    return run(_config_of(base), progress)


def gate(base: pd.DataFrame, cur: pd.DataFrame | None = None, threshold: float = 0.3, alpha: float = 0.01,
         rounds: int = 2, progress: Callable[[str], None] = lambda s: None) -> tuple[bool, list[Finding]]:
    """Gate ``cur`` (measured now when ``None``) against ``base``; returns (passed, findings)."""
    can_repeat = cur is None
    if cur is None:
        cur = measure_current(base, progress)
    findings = evaluate(base, cur, threshold, alpha)
    if can_repeat and any(f.status == "noisy" for f in findings):
        cur = remeasure(base, cur, findings, rounds, threshold, alpha, progress)
        findings = evaluate(base, cur, threshold, alpha)
    return not any(f.status in FAILING for f in findings), findings


def format_findings(findings: list[Finding], show_all: bool = False) -> str:
    """A table of what regressed (and, with ``show_all``, everything checked)."""
    shown = [f for f in findings if show_all or f.status != "ok"]
    if not shown:
        return f"all {len(findings)} checks passed"
    lines = [f"{'tier':<12} {'what':<52} {'baseline':>10} {'current':>10} {'change':>8}  status     detail"]
    for f in sorted(shown, key=lambda f: (f.status not in FAILING, f.tier, f.what)):
        change = "" if math.isnan(f.change) else f"{f.change:.2f}x"
        lines.append(f"{f.tier:<12} {f.what:<52} {_num(f.baseline):>10} {_num(f.current):>10} {change:>8}  "
                     f"{f.status:<10} {f.detail}")
    failed = sum(f.status in FAILING for f in findings)
    lines.append(f"{failed} regression(s) in {len(findings)} checks")
    return "\n".join(lines)


def _num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
