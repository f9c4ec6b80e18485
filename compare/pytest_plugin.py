"""The pytest plugin: run graphduel's harness on your own function, module or train step inside your tests.

Installed with graphduel (the ``pytest11`` entry point ``graphduel``), it gives every test a ``graphduel``
fixture whose :meth:`Duel.compare` runs a function in eager, traced and compiled mode (and any peers), checks
the modes against eager (and a float64 reference when you give one), times them round-robin and returns a
:class:`DuelResult`::

    def test_my_model_compiles_well(graphduel):
        r = graphduel.compare(MyModel(), eager.randn(32, 64))
        assert r.correct("compiled")
        assert r.kernels("compiled") <= 4
        assert r.speedup("compiled", over="eager") > 1.5

``pytest --graphduel-save base.json`` writes a baseline of every compare of the session;
``pytest --graphduel-baseline base.json`` gates each compare against its entry with ``graphduel gate``'s rules
(``compare/gate.py``: structure exactly; time ratios with the Mann-Whitney confidence test, re-measured when
unsure) and fails the test that regressed, with the gate's table in the failure message.

The same runs without pytest: :func:`compare` takes the same arguments.

    >>> import eager
    >>> r = compare(lambda x: (x * 2).exp().sum(), eager.ones(8), modes=["eager", "compiled"], repeats=3,
    ...             target_s=1e-3, reference=lambda x: (x * 2).exp().sum())
    >>> r.correct("compiled"), r.kernels("compiled")
    (True, 1)
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import pandas as pd

# Loaded by every pytest run once graphduel is installed: the harness (eager, pandas, ...) is imported on the
# first compare(), not here, so test suites that never use the fixture start as fast as before.
SIZE = "user"                # the size column of a user's compare: the inputs are the ones given
OUTPUT_NAMES = ("out", *(f"out{i}" for i in range(1, 64)))  # zip() names as many as a call returns
DEFAULT_MODES = ("eager", "traced", "compiled")


# ------------------------------------------------------------------ the result
class DuelResult:
    """What one compare measured: ``df`` (the harness's rows) and helpers that read it."""

    def __init__(self, name: str, df: pd.DataFrame, modes: Sequence[str]):
        self.name, self.df, self.modes = name, df, list(modes)

    def _rows(self, mode: str, metric: str) -> pd.DataFrame:
        if mode not in self.modes:
            raise KeyError(f"{self.name}: mode {mode!r} was not compared; this compare ran {', '.join(self.modes)} "
                           "(pass modes=[...] or peers=[...] to compare())")
        return self.df[(self.df["mode"] == mode) & (self.df.metric == metric)]

    def ran(self, mode: str) -> bool:
        """Whether ``mode`` ran (not skipped, no error)."""
        run = self._rows(mode, "run")
        return bool(len(run)) and (run.status == "ok").all()

    def _ran_or_raise(self, mode: str, what: str) -> None:
        if not self.ran(mode):
            r = self._rows(mode, "run").iloc[0]
            raise AssertionError(f"{self.name}: no {what} for {mode}: it did not run ({r.status}: {r.detail})")

    def time(self, mode: str) -> float:
        """Median seconds per call of ``mode``."""
        self._ran_or_raise(mode, "time")
        rows = self._rows(mode, "time")
        if rows.empty or rows.status.iloc[0] != "ok":
            raise AssertionError(f"{self.name}: {mode} was not timed: {rows.detail.iloc[0] if len(rows) else ''}")
        return float(rows.value.iloc[0])

    def speedup(self, mode: str, over: str = "eager") -> float:
        """How many times faster ``mode`` runs than ``over`` (median over median, measured in the same run)."""
        if not self.correct(mode):
            raise AssertionError(f"{self.name}: {mode} gives a wrong answer, so it has no speedup: {self.why(mode)}")
        return self.time(over) / self.time(mode)

    def kernels(self, mode: str = "compiled") -> int:
        """Kernels per call of a compiled mode."""
        self._ran_or_raise(mode, "kernel count")
        rows = self._rows(mode, "kernels")
        if rows.empty:
            raise AssertionError(f"{self.name}: {mode} launches no kernels of its own (only compiled modes count "
                                 "kernels)")
        return int(rows.value.iloc[0])

    def ir_nodes(self, mode: str = "traced") -> int:
        """IR nodes of the graph a traced or compiled mode replays."""
        self._ran_or_raise(mode, "IR")
        rows = self._rows(mode, "ir_nodes")
        if rows.empty:
            raise AssertionError(f"{self.name}: {mode} has no IR (eager and the peers record no graph)")
        return int(rows.value.iloc[0])

    def correct(self, mode: str) -> bool:
        """Whether ``mode`` ran and every correctness check it had passed (against eager over several calls,
        and against the float64 reference when one was given)."""
        if not self.ran(mode):
            return False
        from compare.harness import CORRECTNESS_METRICS
        checks = self.df[(self.df["mode"] == mode) & self.df.metric.isin(CORRECTNESS_METRICS)]
        judged = checks[checks.status != "skip"]
        if judged.empty:  # eager is the baseline: without a reference it has nothing to be judged against
            return mode == "eager"
        return bool((judged.status == "pass").all())

    def why(self, mode: str) -> str:
        """The run and correctness details of ``mode``, one line each (for assertion messages)."""
        from compare.harness import CORRECTNESS_METRICS
        rows = self.df[(self.df["mode"] == mode) & self.df.metric.isin(("run", *CORRECTNESS_METRICS[::2]))]
        return "; ".join(f"{r.metric} {r.status}: {r.detail}".rstrip(": ") for _, r in rows.iterrows()) or "no rows"

    def table(self) -> str:
        """One line per mode: ran, correct, median time, speedup over eager, kernels."""
        lines = [f"{'mode':<16} {'run':<6} {'correct':<8} {'ms/call':>9} {'vs eager':>9} {'kernels':>7}"]
        for mode in self.modes:
            ok = self.ran(mode)
            t = self._value(mode, "time") if ok else math.nan
            s = self._value(mode, "speedup_vs_eager") if ok and self.correct(mode) else math.nan
            k = self._value(mode, "kernels") if ok else math.nan
            lines.append(f"{mode:<16} {self._rows(mode, 'run').status.iloc[0]:<6} {str(self.correct(mode)):<8} "
                         f"{_fmt(t * 1e3, '.3f'):>9} {_fmt(s, '.2f', 'x'):>9} {_fmt(k, '.0f'):>7}")
        for mode in self.modes:  # why a mode did not run, or is not correct
            if not self.ran(mode) or not self.correct(mode):
                lines.append(f"  {mode}: {self.why(mode)}")
        return "\n".join(lines)

    def _value(self, mode: str, metric: str) -> float:
        rows = self._rows(mode, metric)
        return float(rows.value.iloc[0]) if len(rows) else math.nan

    def __repr__(self) -> str:
        return f"<DuelResult {self.name}\n{self.table()}>"


def _fmt(v: float, spec: str, suffix: str = "") -> str:
    return "-" if v is None or math.isnan(v) else f"{v:{spec}}{suffix}"


# ------------------------------------------------------------------ a user's function as a workload
def user_workload(fn_or_module, inputs: Sequence, name: str, kind: str = "forward",
                  reference: Callable | None = None):
    """A :class:`Workload` running ``fn_or_module`` on ``inputs`` (tensors or arrays; other values are passed
    as they are). ``kind="forward"``: a function (``fn(*inputs)``, or ``fn(lib, *inputs)`` to also run on the
    torch peers) or an ``eager.nn.Module`` (each mode gets its own deep copy). ``kind="train"``: a factory
    ``make_step()`` (or ``make_step(lib)``) returning ``step`` or ``(step, module)``, called once per mode with
    the random seed reset, so each mode trains its own copy from the same start; with a module, its parameters
    after each step are compared too. ``reference(*float64 arrays)`` returns the float64 truth of the outputs."""
    from compare.workloads.registry import Program, Workload, as_lib_tensor
    if kind not in ("forward", "train"):
        raise ValueError(f"compare(): kind must be 'forward' or 'train', not {kind!r}")
    if not callable(fn_or_module):
        raise TypeError(f"compare(): the first argument must be a function, a Module or (kind='train') a step "
                        f"factory, not {type(fn_or_module).__name__}")
    arrays, slots = _arrays_of(inputs)
    takes_lib = _takes_lib(fn_or_module)

    def build(lib, arrays_now: dict) -> Program:
        args = tuple(as_lib_tensor(lib, arrays_now[key], requires_grad=grad) if key is not None else value
                     for key, grad, value in slots)
        if kind == "train":
            step, state = _make_step(fn_or_module, lib, takes_lib)
            return Program(step, args, state)
        return Program(_forward_callable(fn_or_module, lib, takes_lib), args)

    def make_inputs(size: str, rng) -> dict:
        return {k: v.copy() for k, v in arrays.items()}

    ref = _reference(reference, slots) if reference is not None else None
    return Workload(name, kind, build, make_inputs, (SIZE,), OUTPUT_NAMES, ref, source=_where(fn_or_module))


def _arrays_of(inputs: Sequence) -> tuple[dict, list[tuple[str | None, bool, Any]]]:
    """Input arrays by name, and per argument (array name or None, requires_grad, the value when not an array)."""
    arrays, slots = {}, []
    for i, x in enumerate(inputs):
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            key = f"arg{i}"
            grad = bool(getattr(x, "requires_grad", False))
            arrays[key] = _to_numpy(x)
            slots.append((key, grad, None))
        else:
            slots.append((None, False, x))
    return arrays, slots


def _to_numpy(x):
    import numpy as np
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    return np.array(x.numpy() if hasattr(x, "numpy") else x, copy=True)


def _is_module(obj) -> bool:
    from eager.nn import Module
    return isinstance(obj, Module)


def _takes_lib(fn) -> bool:
    if _is_module(fn):
        return False
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "lib"


def _is_torch(lib) -> bool:
    return getattr(lib, "__name__", "") == "torch"


def _forward_callable(fn, lib, takes_lib: bool) -> Callable:
    if _is_module(fn):
        if _is_torch(lib):
            from compare.modes import Skip
            raise Skip("an eager.nn.Module runs in graphduel's modes only; to compare with torch, pass a function "
                       "fn(lib, *inputs) that builds the model with lib.nn")
        return copy.deepcopy(fn)  # each mode its own copy: a mode never sees another's buffers
    if takes_lib:
        return lambda *args: fn(lib, *args)
    if _is_torch(lib):
        from compare.modes import Skip
        raise Skip("this function is written against eager; write it as fn(lib, *inputs) (lib is eager or torch) "
                   "to run it on the torch peers")
    return fn


def _make_step(factory, lib, takes_lib: bool):
    """A fresh (step, state) from the factory, with the random seed reset (the same start in every mode)."""
    import eager
    from compare.modes import Skip
    from compare.workloads.registry import param_state
    if _is_torch(lib):
        if not takes_lib:
            raise Skip("this step factory builds an eager model; write it as make_step(lib) to run it on torch")
        lib.manual_seed(0)
    eager.manual_seed(0)
    made = factory(lib) if takes_lib else factory()
    step, module = made if isinstance(made, tuple) else (made, None)
    if not callable(step):
        raise TypeError(f"compare(kind='train'): the factory must return step or (step, module), got "
                        f"{type(made).__name__}; pass a function that builds the model and optimizer and returns "
                        "the step, so each mode gets its own")
    return step, (param_state(module) if module is not None else None)


def _reference(reference: Callable, slots) -> Callable[..., dict]:
    import numpy as np

    def ref(**arrays64):
        args = [arrays64[key] if key is not None else value for key, _, value in slots]
        out = reference(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {name: np.asarray(v, dtype=np.float64) for name, v in zip(OUTPUT_NAMES, outs)}
    return ref


def _where(fn) -> str:
    target = type(fn) if _is_module(fn) else fn
    try:
        return f"{Path(inspect.getsourcefile(target)).name}:{inspect.getsourcelines(target)[1]}"
    except (OSError, TypeError):
        return getattr(target, "__qualname__", repr(target))


# ------------------------------------------------------------------ running
def compare(fn_or_module, *inputs, modes: Sequence[str] = DEFAULT_MODES, peers: Sequence[str] = (),
            repeats: int = 15, warmup: int = 2, target_s: float = 0.01, check_calls: int = 2, device: str = "cpu",
            kind: str = "forward", reference: Callable | None = None, name: str | None = None) -> DuelResult:
    """Run ``fn_or_module`` on ``inputs`` in ``modes`` and ``peers`` (see :func:`user_workload` for what may be
    passed); ``repeats`` interleaved timed repeats of about ``target_s`` seconds each."""
    from compare.harness import RunConfig
    from compare.modes import MODES
    chosen = list(dict.fromkeys([*modes, *peers]))
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        raise ValueError(f"compare(): unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    wl = user_workload(fn_or_module, inputs, name or getattr(fn_or_module, "__name__", type(fn_or_module).__name__),
                       kind, reference)
    cfg = RunConfig(workloads=[wl.name], modes=chosen, sizes=[SIZE], device=device, repeats=repeats, warmup=warmup,
                    target_s=target_s, check_calls=check_calls, command=f"compare({wl.name})")
    df = _measure(wl, cfg)
    return DuelResult(wl.name, df, cfg.selected_modes())


_META: dict[str, dict] = {}


def _meta(device: str) -> dict:
    from compare.machine import describe
    if device not in _META:  # once per device: describe() runs git
        _META[device] = describe("pytest (graphduel plugin)", device)
    return _META[device]


def _measure(wl, cfg):
    """The harness's rows of ``wl`` under ``cfg`` (one cell), with the machine columns and metadata."""
    from compare.harness import frame, run_cell
    from compare.machine import machine_kind
    meta = _meta(cfg.device)
    df = frame(run_cell(wl, SIZE, cfg), meta["host"], machine_kind(meta))
    df.attrs["meta"] = {**meta, "config": asdict(cfg)}
    df.attrs["workload"], df.attrs["config"] = wl, cfg
    return df


# ------------------------------------------------------------------ pytest: options, fixture, baseline, gate
def pytest_addoption(parser) -> None:
    group = parser.getgroup("graphduel", "graphduel: compare eager, traced and compiled (the graphduel fixture)")
    group.addoption("--graphduel-save", metavar="FILE",
                    help="write a baseline of every graphduel.compare() of this session to FILE (JSON)")
    group.addoption("--graphduel-baseline", metavar="FILE",
                    help="gate every graphduel.compare() against FILE: a test whose structure or time ratios "
                         "regressed fails with the gate's table")
    group.addoption("--graphduel-threshold", type=float, default=0.3, metavar="FRACTION",
                    help="allowed growth of a time ratio before the confidence test (default 0.3 = 30%%)")
    group.addoption("--graphduel-alpha", type=float, default=0.01, help="Mann-Whitney significance level")
    group.addoption("--graphduel-rounds", type=int, default=2,
                    help="re-measurements of a ratio that grew without significance (default 2)")


class Session:
    """What the plugin keeps over a session: every compare's rows, and the baseline being gated against."""

    def __init__(self, config):
        self.save = config.getoption("--graphduel-save")
        path = config.getoption("--graphduel-baseline")
        self.baseline_path = path
        self.threshold = config.getoption("--graphduel-threshold")
        self.alpha = config.getoption("--graphduel-alpha")
        self.rounds = config.getoption("--graphduel-rounds")
        try:
            self.baseline = _load_baseline(path) if path else None
        except (FileNotFoundError, ValueError) as e:
            raise pytest.UsageError(f"--graphduel-baseline: {e}") from e
        self.frames: list[pd.DataFrame] = []
        self.names: set[str] = set()
        self.not_in_baseline: list[str] = []
        self.gated: list[tuple[str, bool]] = []

    def add(self, df: pd.DataFrame, name: str) -> None:
        if name in self.names:
            raise ValueError(f"graphduel: two compares in this session are named {name!r}; give compare() a "
                             "distinct name=")
        self.names.add(name)
        self.frames.append(df)

    def gate(self, result: DuelResult) -> None:
        """Fail the running test when ``result`` regressed against its baseline entry."""
        from compare.gate import FAILING, evaluate, format_findings
        base = self.baseline[self.baseline.workload == result.name]
        if base.empty:
            self.not_in_baseline.append(result.name)
            return
        cur = result.df
        findings = evaluate(base, cur, self.threshold, self.alpha)
        for _ in range(self.rounds):
            if not any(f.status == "noisy" for f in findings):
                break
            cur = _remeasured(cur)
            findings = evaluate(base, cur, self.threshold, self.alpha)
        passed = not any(f.status in FAILING for f in findings)
        self.gated.append((result.name, passed))
        if not passed:
            pytest.fail(f"graphduel: {result.name} regressed against the baseline {self.baseline_path} "
                        f"(threshold {self.threshold:g}, alpha {self.alpha:g}):\n{format_findings(findings)}",
                        pytrace=False)

    def write(self) -> Path | None:
        if not self.save or not self.frames:
            return None
        import pandas as pd
        df = pd.concat(self.frames, ignore_index=True)
        meta = {**self.frames[0].attrs.get("meta", {}), "source": "graphduel pytest plugin",
                "compares": sorted(self.names)}
        meta.pop("config", None)  # each compare has its own; the gate re-runs them through the tests, not itself
        path = Path(self.save)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = json.loads(df.to_json(orient="records"))
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        return path


def _load_baseline(path: str):
    from compare.gate import load_any
    return load_any(path)


def _remeasured(cur: pd.DataFrame) -> pd.DataFrame:
    """``cur`` with the samples of one more run of the same cell added (the gate's repeat-until-confident)."""
    from compare.gate import _append_samples
    wl, cfg = cur.attrs["workload"], cur.attrs["config"]
    more = _measure(wl, cfg)
    out = _append_samples(cur, more)
    out.attrs = dict(cur.attrs)
    return out


SESSION_KEY = pytest.StashKey[Session]()


def pytest_configure(config) -> None:
    config.stash[SESSION_KEY] = Session(config)


class Duel:
    """The ``graphduel`` fixture: :meth:`compare` runs the harness and records the result for the session."""

    def __init__(self, session: Session, nodeid: str):
        self.session, self.nodeid, self.results = session, nodeid, []

    def compare(self, fn_or_module, *inputs, name: str | None = None, **options) -> DuelResult:
        """:func:`compare` inside a test: named after the test (``name=`` to choose), saved with
        ``--graphduel-save`` and gated with ``--graphduel-baseline``."""
        name = name or (self.nodeid if not self.results else f"{self.nodeid}#{len(self.results) + 1}")
        result = compare(fn_or_module, *inputs, name=name, **options)
        self.results.append(result)
        self.session.add(result.df, name)
        if self.session.baseline is not None:
            self.session.gate(result)
        return result


@pytest.fixture
def graphduel(request) -> Duel:
    """Compare your function, module or train step in eager, traced and compiled mode: ``graphduel.compare(fn,
    *inputs)`` returns a :class:`DuelResult` (``speedup``, ``kernels``, ``correct``, ``df``)."""
    return Duel(request.config.stash[SESSION_KEY], request.node.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    state = session.config.stash.get(SESSION_KEY, None)
    if state is not None:
        state.written = state.write()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is None or not state.names:
        return
    tr = terminalreporter
    tr.section("graphduel")
    tr.write_line(f"{len(state.names)} compare(s)")
    if getattr(state, "written", None):
        tr.write_line(f"baseline written to {state.written}")
    if state.baseline is not None:
        failed = [n for n, ok in state.gated if not ok]
        tr.write_line(f"gated {len(state.gated)} against {state.baseline_path}: "
                      + (f"{len(failed)} regressed ({', '.join(failed)})" if failed else "none regressed"))
    for name in state.not_in_baseline:
        tr.write_line(f"not in the baseline (not gated; save a new baseline to include it): {name}")
