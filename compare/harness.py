"""The harness: every workload x mode x size on one device, checked for correctness and timed.

For each cell it records, one row per measurement (a tidy DataFrame):

- ``run``: ok / skip (with the reason) / error (with the message);
- correctness: ``abs_err_vs_reference`` and ``rel_err_vs_reference`` (float64 NumPy truth, outputs, gradients
  and the state after one step), ``abs_err_vs_eager`` / ``rel_err_vs_eager`` over several calls; a traced or
  compiled mode that disagrees with eager gets the first diverging IR node and the broken assumption;
- timing: ``time`` (median seconds per call, with the repeat samples), ``time_iqr``, ``first_call``,
  ``trace_time``, ``compile_cold``, ``compile_cached``, ``speedup_vs_eager``, ``break_even_calls``, ``gbps``;
- structure: ``ir_nodes``, ``kernels``, ``fusion_groups``, ``source_hash`` (for the exact tier of the gate);
- guards (traced and compiled modes, counted over every call the cell made: checks and timing): ``retraces``,
  ``guard_failures`` and ``eager_fallbacks``, with the latest reason in the detail.

A workload marked ``expect_divergence`` (DynamicNet) is expected to disagree with eager in peers that freeze
Python state (``jax.jit``, ``torch.jit.trace``); our traced and compiled modes guard what they froze and must
agree (``expected_for``).

    >>> cfg = RunConfig(workloads=["softmax"], modes=["eager", "numpy"], sizes=["small"], repeats=3, target_s=1e-3)
    >>> df = run(cfg)
    >>> df[df.metric == "abs_err_vs_reference"].status.tolist()
    ['pass', 'pass']
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pandas as pd

import eager
from compare import timing
from compare.correctness import compare_outputs, named
from compare.machine import describe, machine_kind
from compare.modes import MODES, Runner, Skip, as_tuple
from compare.workloads import get as get_workload
from compare.workloads import names as workload_names
from compare.workloads.registry import Workload

# machine and host: where the row was measured (compare/machine.py: machine_kind); one cell, one machine
COLUMNS = ["workload", "kind", "size", "mode", "family", "device", "metric", "value", "unit", "status", "detail",
           "samples", "expected_divergence", "machine", "host"]
CORRECTNESS_METRICS = ("abs_err_vs_reference", "rel_err_vs_reference", "abs_err_vs_eager", "rel_err_vs_eager")
GUARD_METRICS = ("retraces", "guard_failures", "eager_fallbacks")


@dataclass
class RunConfig:
    """What to run. ``quick()`` is the README's default: small sizes, few repeats, no torch.compile."""

    workloads: list[str] = field(default_factory=list)   # empty: all registered
    modes: list[str] = field(default_factory=list)       # empty: every mode marked quick (eager always runs)
    sizes: list[str] = field(default_factory=lambda: ["small", "medium", "large"])
    device: str = "cpu"
    repeats: int = 15
    warmup: int = 2
    target_s: float = 0.02      # each timed repeat lasts about this long
    check_calls: int = 2        # calls compared against eager (DynamicNet needs two to show its branch flip)
    seed: int = 0
    command: str | None = None
    excluded: dict[str, str] = field(default_factory=dict)  # mode -> why it was left out (reported as a skip)

    @classmethod
    def quick(cls, **overrides) -> RunConfig:
        """Small sizes, 5 repeats of about 4 ms, modes marked quick (torch.compile is left out, with its reason)."""
        device = overrides.get("device", "cpu")
        excluded = {m: spec.why_not_quick for m, spec in MODES.items() if not spec.quick and device in spec.devices}
        return cls(**{"sizes": ["small"], "repeats": 5, "warmup": 1, "target_s": 0.004, "excluded": excluded,
                      **overrides})

    def selected_modes(self) -> list[str]:
        modes = self.modes or [m for m, spec in MODES.items()
                               if self.device in spec.devices and (spec.quick or m not in self.excluded)]
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
        return ["eager", *[m for m in modes if m != "eager"]]  # eager is the baseline every ratio needs

    def selected_workloads(self) -> list[Workload]:
        return [get_workload(n) for n in (self.workloads or workload_names())]

    def cells(self) -> list[tuple[str, str]]:
        """(workload, size) of every cell this configuration runs, in run order. A cell is the unit that runs
        on one machine: all its modes and peers are timed round-robin there, so its ratios are one machine's.

            >>> RunConfig(workloads=["softmax", "mlp_train_adam"], sizes=["small"]).cells()
            [('softmax', 'small'), ('mlp_train_adam', 'small')]
        """
        return [(wl.name, size) for wl in self.selected_workloads() for size in self.sizes if size in wl.sizes]


def expected_for(wl: Workload, family: str) -> bool:
    """Whether a divergence from eager is expected of a mode of ``family`` on ``wl``: only of peers (they freeze
    Python state as traced); our static modes guard every value they froze, so they must agree."""
    return bool(wl.expect_divergence) and family == "peer"


def _row(wl: Workload, size: str, mode: str, device: str, metric: str, value=math.nan, unit: str = "",
         status: str = "ok", detail: str = "", samples: list[float] | None = None) -> dict:
    family = MODES[mode].family if mode in MODES else "reference"
    return {"workload": wl.name, "kind": wl.kind, "size": size, "mode": mode, "family": family, "device": device,
            "metric": metric, "value": float(value), "unit": unit, "status": status, "detail": detail,
            "samples": samples, "expected_divergence": expected_for(wl, family)}


def _error_text(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {e}{where}".replace("\n", " ")


@dataclass
class _Cell:
    runner: Runner
    calls: list[dict] = field(default_factory=list)  # named outputs (and state after the first call) per call
    first_call: float = math.nan


def _run_checks(wl: Workload, runner: Runner, n_calls: int) -> _Cell:
    cell = _Cell(runner)
    for i in range(n_calls):
        t0 = time.perf_counter()
        out = runner.call()
        if i == 0:
            cell.first_call = time.perf_counter() - t0
        cell.calls.append(named(as_tuple(out), wl.outputs, runner.state() if i == 0 else None))
    return cell


def locate_divergence(wl: Workload, runner: Runner, bad_call: int = 1) -> str:
    """Why a traced/compiled run disagrees with eager: the first diverging IR node (from ``check``) with its
    source line, and the assumptions the trace made (the broken one for dynamic control flow).

    ``check`` runs eager beside the replay and, like a real eager call, advances the program's Python state
    (DynamicNet's counter), while replays do not; so it is called up to ``bad_call`` times, to reach the call
    whose Python state differs from the traced one."""
    handle, parts = runner.handle, []
    check = getattr(handle, "check", None)
    if check is not None and runner.program is not None:
        try:
            for attempt in range(1, bad_call + 1):
                report = check(*runner.program.args)
                divergences = list(getattr(report, "divergences", []) or [])
                if divergences:
                    parts.append(f"first diverging node (check() call {attempt}): {divergences[0]}")
                    break
            else:
                parts.append(f"check() found no diverging node in {bad_call} call(s)")
        except Exception as e:  # noqa: BLE001  (the divergence is reported, never raised)
            parts.append(f"check() failed: {_error_text(e)}")
    assumptions = list(getattr(handle, "assumptions", []) or [])
    if any("broken assumption" in p for p in parts):
        pass  # check() already named the assumption that broke
    elif assumptions:
        parts.append("assumptions: " + "; ".join(str(a) for a in assumptions))
    elif wl.expect_divergence:
        parts.append(f"no recorded assumption: {wl.note}")
    text = " | ".join(parts) if parts else "no Traced.check()/assumptions available"
    return "divergence: " + " ".join(text.split())  # one line: it goes into tables and CSV cells


def _correctness_rows(wl, size, mode, device, cell: _Cell, reference, eager_cell: _Cell | None) -> list[dict]:
    rows = []
    if reference is None:
        rows.append(_row(wl, size, mode, device, "abs_err_vs_reference", status="skip",
                         detail="no float64 reference written for this workload"))
    else:
        c = compare_outputs(cell.calls[0], reference)
        status = "pass" if c.ok else "fail"
        rows.append(_row(wl, size, mode, device, "abs_err_vs_reference", c.max_abs, "abs", status, c.summary()))
        rows.append(_row(wl, size, mode, device, "rel_err_vs_reference", c.max_rel, "rel", status, c.summary()))
    if eager_cell is None or mode == "eager":
        return rows
    comparisons = [(i + 1, compare_outputs(got, want))
                   for i, (got, want) in enumerate(zip(cell.calls, eager_cell.calls))]
    failing = [c for c in comparisons if not c[1].ok]
    bad_call, worst = failing[0] if failing else max(comparisons, key=lambda c: c[1].max_abs)
    detail = f"call {bad_call}: {worst.summary()}"
    status = "pass" if worst.ok else "fail"
    if _judged_by_reference(failing, cell, eager_cell, reference):
        status = "pass"
        detail += (" | both this mode and eager pass the float64 reference on this call: they differ by rounding "
                   "(e.g. Adam turning a near-zero gradient into +-lr), not a wrong result")
    elif not worst.ok and MODES[mode].family == "ours":
        detail += " | " + locate_divergence(wl, cell.runner, bad_call)
    elif not worst.ok and expected_for(wl, MODES[mode].family):
        detail += f" | divergence: {wl.note}"
    rows.append(_row(wl, size, mode, device, "abs_err_vs_eager", worst.max_abs, "abs", status, detail))
    rows.append(_row(wl, size, mode, device, "rel_err_vs_eager", worst.max_rel, "rel", status, detail))
    return rows


def _judged_by_reference(failing, cell: _Cell, eager_cell: _Cell, reference) -> bool:
    """float64 is the judge: a disagreement with eager only on call 1, where both agree with the float64
    reference within its tolerance, is rounding on both sides, not a wrong result."""
    if reference is None or [call for call, _ in failing] != [1]:
        return False
    return compare_outputs(cell.calls[0], reference).ok and compare_outputs(eager_cell.calls[0], reference).ok


def _bytes_moved(arrays: dict, outputs: dict) -> int:
    """Bytes a perfect kernel must read and write: inputs once, outputs once (the roofline's numerator)."""
    return sum(a.nbytes for a in arrays.values()) + sum(o.nbytes for o in outputs.values() if o is not None)


def run_cell(wl: Workload, size: str, cfg: RunConfig, tick: Callable[[str], None] = lambda s: None) -> list[dict]:
    """All modes of one workload at one size: prepare, check, time; returns rows."""
    rows: list[dict] = []
    device = cfg.device
    arrays = wl.make_inputs(size, cfg.seed)
    try:
        reference = wl.run_reference(arrays)
    except Exception as e:  # noqa: BLE001
        reference = None
        rows.append(_row(wl, size, "eager", device, "reference", status="error", detail=_error_text(e)))
    cells: dict[str, _Cell] = {}
    for mode in cfg.selected_modes():
        tick(f"{wl.name}/{size}/{mode}")
        try:
            runner = MODES[mode].prepare(wl, arrays, device)
            cells[mode] = _run_checks(wl, runner, cfg.check_calls)
        except Skip as s:
            rows.append(_row(wl, size, mode, device, "run", status="skip", detail=str(s)))
            continue
        except Exception as e:  # noqa: BLE001  (one broken mode must not stop the others)
            rows.append(_row(wl, size, mode, device, "run", status="error", detail=_error_text(e)))
            continue
        rows.append(_row(wl, size, mode, device, "run", status="ok"))
        cell = cells[mode]
        rows.extend(_correctness_rows(wl, size, mode, device, cell, reference, cells.get("eager")))
        rows.append(_row(wl, size, mode, device, "first_call", cell.first_call, "s"))
        for metric, seconds in cell.runner.setup.items():
            rows.append(_row(wl, size, mode, device, metric, seconds, "s"))
        for metric, value in cell.runner.structure.items():
            if metric == "source_hash":
                rows.append(_row(wl, size, mode, device, metric, detail=str(value)))
            else:
                rows.append(_row(wl, size, mode, device, metric, value, "count"))
    for mode, why in cfg.excluded.items():
        rows.append(_row(wl, size, mode, device, "run", status="skip", detail=why))
    tick(f"{wl.name}/{size}/timing")
    rows.extend(_timing_rows(wl, size, cfg, cells, arrays))
    rows.extend(_guard_rows(wl, size, cfg.device, cells))
    return rows


def _guard_rows(wl, size, device: str, cells: dict[str, _Cell]) -> list[dict]:
    """Retraces, guard failures and eager fallbacks of each traced/compiled cell, over all the calls it made."""
    rows = []
    for mode, cell in cells.items():
        handle = cell.runner.handle
        if MODES[mode].family != "ours" or handle is None or not hasattr(handle, "retrace_count"):
            continue
        reasons = list(getattr(handle, "retrace_reasons", ()) or ())
        detail = f"latest: {reasons[-1]}" if reasons else ""
        for metric in GUARD_METRICS:
            value = getattr(handle, "retrace_count" if metric == "retraces" else metric, math.nan)
            rows.append(_row(wl, size, mode, device, metric, value, "count", detail=detail))
    return rows


def _timing_rows(wl, size, cfg: RunConfig, cells: dict[str, _Cell], arrays: dict) -> list[dict]:
    rows = []
    calls = {m: c.runner.call for m, c in cells.items()}
    clocks = {m: c.runner.clock for m, c in cells.items()}
    try:
        samples = timing.measure(calls, cfg.repeats, cfg.warmup, cfg.target_s, clocks)
    except Exception as e:  # noqa: BLE001  (a mode that fails on a later call: report it, keep the run)
        return [_row(wl, size, "eager", cfg.device, "time", status="error", detail=f"timing: {_error_text(e)}")]
    stats = {m: timing.summarize(s) for m, s in samples.items()}
    eager_t = stats.get("eager", {}).get("median", math.nan)
    for mode, st in stats.items():
        d = cfg.device
        rows.append(_row(wl, size, mode, d, "time", st["median"], "s", samples=[float(x) for x in samples[mode]]))
        rows.append(_row(wl, size, mode, d, "time_iqr", st["iqr"], "s"))
        rows.append(_row(wl, size, mode, d, "speedup_vs_eager", eager_t / st["median"], "x"))
        moved = _bytes_moved(arrays, cells[mode].calls[0])
        rows.append(_row(wl, size, mode, d, "gbps", moved / st["median"] / 1e9, "GB/s"))
        setup = cells[mode].runner.setup
        one_time = setup.get("trace_time", 0.0) + setup.get("compile_cold", 0.0)
        if MODES[mode].family == "ours" and mode != "eager" and one_time > 0:
            rows.append(_row(wl, size, mode, d, "break_even_calls", timing.break_even(one_time, st["median"], eager_t),
                             "calls", detail="calls before trace + compile pay for themselves against eager"))
    return rows


def run(cfg: RunConfig, progress: Callable[[str], None] | None = None,
        cells: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Run ``cfg`` (or only its ``cells``, as a shard does) and return the tidy results, with machine and versions
    in ``df.attrs['meta']`` and each cell's wall time in ``meta['cell_seconds']`` (what shards balance on)."""
    rows: list[dict] = []
    tick = progress or (lambda s: None)
    seconds: dict[str, float] = {}
    for name, size in cfg.cells() if cells is None else cells:
        t0 = time.perf_counter()
        rows.extend(run_cell(get_workload(name), size, cfg, tick))
        seconds[f"{name}/{size}"] = round(time.perf_counter() - t0, 3)
    meta = {**describe(cfg.command, cfg.device), "config": asdict(cfg), "cell_seconds": seconds}
    df = frame(rows, meta["host"], machine_kind(meta))
    df.attrs["meta"] = meta
    if cfg.device == "cpu" or eager.cuda_available():  # the roofline of the report's GB/s plot
        from compiler.report import copy_bandwidth_gbs
        df.attrs["meta"]["copy_bandwidth_gbps"] = round(copy_bandwidth_gbs(cfg.device), 1)
    return df


def frame(rows: list[dict], host: str, machine: str) -> pd.DataFrame:
    """Rows of cells measured on one machine as the harness's DataFrame (``COLUMNS``, machine columns set)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["machine"], df["host"] = machine, host
    return df


def steps(cfg: RunConfig, cells: list[tuple[str, str]] | None = None) -> int:
    """How many progress ticks :func:`run` will make (for a progress bar)."""
    return len(cfg.cells() if cells is None else cells) * (len(cfg.selected_modes()) + 1)


def correctness_failures(df: pd.DataFrame) -> pd.DataFrame:
    """Correctness rows that did not pass (skips aside)."""
    rows = df[df.metric.isin(CORRECTNESS_METRICS)]
    return rows[rows.status == "fail"]


def failed_cells(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(workload, size, mode) of every cell with a correctness failure: a wrong answer, never a speedup."""
    fails = correctness_failures(df)
    return set(zip(fails.workload, fails["size"], fails["mode"]))


def summary_line(df: pd.DataFrame) -> str:
    fails = correctness_failures(df)
    expected = fails[fails.expected_divergence.astype(bool)]
    errors = df[df.status == "error"]
    retraces = df[df.metric == "retraces"].value.sum() if "metric" in df else 0
    guard_fails = df[df.metric == "guard_failures"].value.sum() if "metric" in df else 0
    return (f"{df.workload.nunique()} workloads, {df[df.metric == 'run'].shape[0]} cells: "
            f"{len(fails.drop_duplicates(['workload', 'size', 'mode']))} with a correctness failure "
            f"({len(expected.drop_duplicates(['workload', 'size', 'mode']))} expected: peers that freeze dynamic "
            f"control flow), {len(errors)} errors, {int((df.status == 'skip').sum())} skipped; our traced and "
            f"compiled cells retraced {int(retraces)} times on {int(guard_fails)} guard failures")

