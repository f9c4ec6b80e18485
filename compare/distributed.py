"""The comparison matrix on a Ray cluster: one Ray task per cell, results merged into one run.

A cell is one workload at one size. Every mode and peer of a cell runs inside one task, so on one machine,
timed round-robin there (``compare/timing.py``): a ratio such as compiled/eager is then one machine's, as in a
serial run. Cells spread over the cluster (``SPREAD`` scheduling); each row records the host and machine kind
it was measured on (``compare/machine.py``), and the report gets a section per machine kind when the cluster
has more than one.

A task that raises, or whose worker or node dies, is submitted once more (``retries``); a cell that fails
again becomes an error cell with the reason, never a missing one. Records are appended to ``OUT/cells.jsonl``
as they arrive (after ``OUT/run.json``, the run's configuration), so a driver that dies keeps every finished
cell: ``graphduel merge OUT --out OUT`` writes the report of what finished.

Ray sets ``OMP_NUM_THREADS`` of a task to its CPUs: ``cpus_per_cell`` is also the thread count of the
compiled kernels; give it a node's core count for timings comparable with a serial run on that node.

Fault injection (what the tests use to kill a worker mid-cell): ``kill={"softmax/small": "1"}`` (or the
environment variable ``GRAPHDUEL_RAY_KILL="softmax/small@1,mlp_forward/small@*"``) makes the worker of that
cell's first attempt (``*``: every attempt) kill itself with SIGKILL once its first mode has run.

    >>> parse_kill("softmax/small@1,mlp_forward/small@*")
    {'softmax/small': '1', 'mlp_forward/small': '*'}
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from compare import cells as cellrec
from compare.harness import RunConfig, run_cell
from compare.machine import describe, machine_record
from compare.workloads import get as get_workload

INSTALL = "pip install 'graphduel[dist]' (the dist extra: Ray), or pip install ray"


class MissingExtra(ImportError):
    """An optional dependency (an extra of pyproject.toml) is not installed; the message says what to install."""


def import_ray():
    """The ``ray`` module, or :class:`MissingExtra` naming the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise MissingExtra(f"graphduel run --ray needs Ray, which is not installed ({e}): {INSTALL}") from None
    return ray


def parse_kill(text: str) -> dict[str, str]:
    """``"cell@attempt,..."`` -> ``{cell: attempt}`` (attempt: a number, or ``*`` for every attempt)."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        cell, _, attempt = item.partition("@")
        out[cell] = attempt or "1"
    return out


# ------------------------------------------------------------------ the task (runs on a worker)
@functools.cache
def _this_machine(device: str) -> dict:
    """This worker's machine record, with its copy bandwidth (the roofline of its GB/s): measured once per
    worker process."""
    record = machine_record(describe(device=device))
    import eager
    if device == "cpu" or eager.cuda_available():
        from compiler.report import copy_bandwidth_gbs
        record["copy_bandwidth_gbps"] = round(copy_bandwidth_gbs(device), 1)
    return record


def _suicide_tick() -> Callable[[str], None]:
    """A progress callback that kills its own process once the cell's first mode has run (a worker dying
    mid-cell, as an out-of-memory kill or a lost node would)."""
    ticks = []

    def tick(label: str) -> None:
        ticks.append(label)
        if len(ticks) == 2:
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    return tick


def cell_task(config: dict, workload: str, size: str, kill: bool = False) -> dict:
    """Run one cell here (all its modes on this machine) and return its record (``compare/cells.py``)."""
    cfg = RunConfig(**config)
    tick = _suicide_tick() if kill else (lambda s: None)
    t0 = time.perf_counter()
    rows = run_cell(get_workload(workload), size, cfg, tick)
    machine = _this_machine(cfg.device)
    record = cellrec.ok_record(workload, size, rows, machine, time.perf_counter() - t0)
    return {**record, "worker": f"{machine['host']}:{os.getpid()}"}


# ------------------------------------------------------------------ the driver
def _reason(ray, e: BaseException) -> str:
    """One line: the task's own exception (a RayTaskError wraps it), or what Ray says happened to the worker."""
    cause = getattr(e, "cause", None)
    if isinstance(e, ray.exceptions.RayTaskError) and cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    else:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        text = f"{type(e).__name__}: {first}"
    return " ".join(text.split())[:400]


def _init(ray, address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` (or the cluster ``ray job submit`` runs us on), else start a local cluster of
    ``num_cpus`` CPUs; returns whether we started it (and so shut it down)."""
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def run_ray(cfg: RunConfig, address: str | None = None, out: str | Path | None = None,
            progress: Callable[[str], None] | None = None, retries: int = 1, cpus_per_cell: float = 1,
            num_cpus: int | None = None, kill: dict[str, str] | None = None) -> pd.DataFrame:
    """Run every cell of ``cfg`` as a Ray task and return the merged results (rows in run order, each with its
    host and machine; ``meta['cells']`` has every cell's host, worker, attempts and error).

    ``address``: a cluster (``"auto"``, ``"ray://head:10001"``); ``None`` starts a local one of ``num_cpus`` CPUs
    (default: all) unless Ray is already initialised. ``out``: where ``run.json`` and ``cells.jsonl`` are
    written as cells arrive.

        >>> df = run_ray(RunConfig.quick(workloads=["softmax"], modes=["eager", "numpy"]), num_cpus=1)  # doctest: +SKIP
    """
    ray = import_ray()
    kill = parse_kill(os.environ.get("GRAPHDUEL_RAY_KILL", "")) if kill is None else kill
    base = describe(cfg.command, cfg.device)
    sink = _open_sink(out, base, cfg)
    started = _init(ray, address, num_cpus)
    try:
        base["ray"] = {"address": address or os.environ.get("RAY_ADDRESS") or "local", "version": ray.__version__,
                       "nodes": sum(n.get("Alive", False) for n in ray.nodes()), "cpus_per_cell": cpus_per_cell}
        task = ray.remote(cell_task).options(num_cpus=cpus_per_cell, num_gpus=1 if cfg.device == "cuda" else 0,
                                             max_retries=0, scheduling_strategy="SPREAD")
        config = asdict(cfg)

        def submit(w: str, s: str, attempt: int):
            return task.remote(config, w, s, kill.get(cellrec.key(w, s)) in (str(attempt), "*"))
        records = _collect(ray, cfg, submit, retries, sink, progress or (lambda s: None))
    finally:
        if started:
            ray.shutdown()
    return cellrec.assemble(records, cfg, base)


def _collect(ray, cfg: RunConfig, submit, retries: int, sink, tick) -> list[dict]:
    """Submit every cell, take results as they finish (each to ``sink`` at once), resubmit a failed task up to
    ``retries`` times, and turn a cell that keeps failing into an error record."""
    pending = {submit(w, s, 1): (w, s, 1, "") for w, s in cfg.cells()}
    records = []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        w, s, attempt, earlier = pending.pop(ref)
        try:
            rec = {**ray.get(ref), "attempts": attempt, "retried_after": earlier}
        except ray.exceptions.RayError as e:
            reason = _reason(ray, e)
            if attempt <= retries:
                pending[submit(w, s, attempt + 1)] = (w, s, attempt + 1, reason)
                continue
            rec = cellrec.error_record(cfg, w, s, _history(earlier, reason), attempt)
        records.append(rec)
        sink(rec)
        tick(f"{rec['cell']} on {(rec.get('machine') or {}).get('host', 'no machine')}")
    return records


def _history(earlier: str, reason: str) -> str:
    if not earlier:
        return reason
    return f"twice: {reason}" if earlier == reason else f"{earlier}; then {reason}"


def _open_sink(out: str | Path | None, base: dict, cfg: RunConfig) -> Callable[[dict], None]:
    """``OUT/run.json`` now and a fresh ``OUT/cells.jsonl`` to append each record to (nothing when no ``out``)."""
    if out is None:
        return lambda rec: None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / cellrec.RUN_META).write_text(json.dumps({**base, "config": asdict(cfg)}, indent=1, default=str))
    records = out / cellrec.RECORDS
    records.write_text("")
    return lambda rec: cellrec.append(records, rec)
