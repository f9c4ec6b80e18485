"""Guards: a plain trace is never silently wrong. Every value a trace froze that may have decided control flow
or been baked in is checked on each call; a call that sees another value runs the program traced for it (or
traces one, or past cache_size programs runs eagerly) and returns what eager would. Values only returned or
logged are not guards. guards="raise" raises GuardError naming the line; guards="off" replays the frozen
program."""

from __future__ import annotations

import inspect
import logging
import shutil
import types
import warnings

import numpy as np
import pytest

import compiler
import eager
import tracer
from eager import nn
from tracer.assumptions import escape_use, outcome


def quiet_trace(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tracer.TracerWarning)
        return tracer.trace(fn, *args, **kwargs)


def quiet_compile(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tracer.TracerWarning)
        return compiler.compile(fn, *args, **kwargs)


def line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def branchy(x):
    if x.sum() > 0:
        return x * 2
    return x - 1


POSITIVE, NEGATIVE = eager.tensor([1.0, 2.0, 3.0]), eager.tensor([-1.0, -2.0, -3.0])


# ---------------------------------------------------------------- values that left the graph


def test_a_branch_on_a_tensor_retraces_when_it_flips_and_returns_what_eager_returns(caplog):
    traced = quiet_trace(branchy, eager.ones(3))
    assert traced(POSITIVE).tolist() == [2.0, 4.0, 6.0] and traced.retrace_count == 0
    with caplog.at_level(logging.INFO, logger="graphduel.tracer"):
        assert traced(NEGATIVE).tolist() == branchy(NEGATIVE).tolist() == [-2.0, -3.0, -4.0]
    assert traced.retrace_count == 1 and traced.guard_failures == 1
    line = f"test_tracer_guards.py:{line_of(branchy, 'if x.sum()')}"
    assert any(f"retracing branchy (retrace #1): guard failed at {line}: bool(tensor)" in r.getMessage()
               for r in caplog.records)


def test_the_programs_of_both_outcomes_are_kept_side_by_side_and_reused_without_retracing():
    traced = quiet_trace(branchy, eager.ones(3))
    traced(NEGATIVE)
    for _ in range(3):  # the trace tree holds both branches now
        assert traced(POSITIVE).tolist() == [2.0, 4.0, 6.0]
        assert traced(NEGATIVE).tolist() == [-2.0, -3.0, -4.0]
    assert traced.retrace_count == 1 and len(traced.entries) == 2
    assert [g.op_counts().get("mul", 0) for g in traced.graphs] == [1, 0]


def test_the_guard_is_an_extra_graph_output_and_guards_off_keeps_the_frozen_program():
    guarded = quiet_trace(branchy, eager.ones(3))
    assert [n.op for n in guarded.graph.calls] == ["sum", "gt", "mul"]
    assert guarded.graph.outputs[-1].op == "gt" and guarded.entries[0].plan.guard_outputs == 1
    frozen = quiet_trace(branchy, eager.ones(3), guards="off")
    assert [n.op for n in frozen.graph.calls] == ["mul"] and len(frozen.graph.outputs) == 1
    assert frozen(NEGATIVE).tolist() == [-2.0, -4.0, -6.0]  # the recorded branch, silently: what "off" measures
    assert frozen.retrace_count == 0 and frozen.guard_failures == 0
    assert frozen.assumptions[0].use is None and "guarded" not in str(frozen.assumptions[0])
    assert "guarded: a call that sees another value retraces for it" in str(guarded.assumptions[0])


def test_a_value_baked_in_by_item_retraces_for_each_new_value_only():
    def normalise(x):
        top = x.max().item()
        return x / top

    traced = quiet_trace(normalise, eager.tensor([1.0, 4.0]))
    assert traced(eager.tensor([2.0, 4.0])).tolist() == [0.5, 1.0] and traced.retrace_count == 0
    assert traced(eager.tensor([1.0, 8.0])).tolist() == [0.125, 1.0] and traced.retrace_count == 1
    assert traced.assumptions[0].use == "guard"


def test_a_boolean_mask_retraces_when_it_selects_other_positions():
    traced = quiet_trace(lambda x: x[x > 0] * 10, eager.tensor([1.0, -1.0, 2.0]))
    assert traced(eager.tensor([3.0, -5.0, 1.0])).tolist() == [30.0, 10.0] and traced.retrace_count == 0
    assert traced(eager.tensor([-3.0, 5.0, 1.0])).tolist() == [50.0, 10.0] and traced.retrace_count == 1
    assert traced(eager.tensor([-3.0, -5.0, -1.0])).tolist() == [] and traced.retrace_count == 2


def test_tolist_and_int_used_as_python_numbers_are_guarded():
    def fn(x, n):
        a, b = x.tolist()
        return x * a + b + x[: int(n)].sum()

    traced = quiet_trace(fn, eager.tensor([1.0, 2.0]), eager.tensor(1))
    for x, n in [([3.0, 4.0], 1), ([3.0, 4.0], 2), ([1.0, 2.0], 1)]:
        args = (eager.tensor(x), eager.tensor(n))
        assert traced(*args).tolist() == fn(*args).tolist()
    assert traced.retrace_count == 2


def test_a_value_that_differs_between_two_runs_on_the_same_inputs_runs_eagerly_and_matches_eager(caplog):
    def coin(x):
        if eager.rand(()) > 0.5:
            return x + 1
        return x - 1

    eager.manual_seed(0)
    traced = quiet_trace(coin, eager.zeros(2))
    with caplog.at_level(logging.WARNING, logger="graphduel.tracer"):
        for seed in range(8):
            eager.manual_seed(seed)
            got = traced(eager.zeros(2)).tolist()
            eager.manual_seed(seed)
            assert got == coin(eager.zeros(2)).tolist(), seed
    assert traced.guard_failures >= 1  # the two outcomes each have their program: seeds pick either
    assert traced.retrace_count <= 2


def test_a_failed_guard_restores_the_random_state_so_the_rerun_draws_what_eager_draws():
    def dropout_then_branch(x):
        y = nn.functional.dropout(x, 0.5, training=True)
        if y.sum() > 8:
            return y * 10
        return y

    eager.manual_seed(0)
    traced = quiet_trace(dropout_then_branch, eager.ones(8))
    for seed in range(6):
        eager.manual_seed(seed)
        got = traced(eager.ones(8)).tolist()
        eager.manual_seed(seed)
        assert got == dropout_then_branch(eager.ones(8)).tolist(), seed
    assert traced.guard_failures >= 1


# ---------------------------------------------------------------- Python state


class Counter(nn.Module):
    """The seeds' DynamicNet in small: a Python call counter picks the branch."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.counter = 0

    def forward(self, x):
        self.counter += 1
        if self.counter % 2 == 0:
            return self.linear(x)
        return self.linear(x * 2)


def _pair():
    eager.manual_seed(0)
    a, b = Counter(), Counter()
    b.load_state_dict(a.state_dict())
    return a, b


def test_python_state_is_checked_on_entry_and_written_back_so_every_call_matches_eager():
    model, twin = _pair()
    x = eager.randn(2, 4)
    traced = quiet_trace(model, x)
    assert model.counter == 0  # tracing has no side effects
    for i in range(6):
        np.testing.assert_array_equal(traced(x).numpy(), twin(x).detach().numpy(), err_msg=f"call {i + 1}")
        assert model.counter == twin.counter == i + 1
    assert traced.retrace_count == 5 and traced.guard_failures == 5 and traced.eager_fallbacks == 0
    (a,) = traced.assumptions
    assert a.use == "guard" and "checked on entry, 1 written back after the call" in str(a)


def test_past_cache_size_programs_a_failing_guard_runs_eagerly_with_a_logged_warning(caplog):
    model, twin = _pair()
    x = eager.randn(2, 4)
    traced = quiet_trace(model, x, cache_size=3)
    with caplog.at_level(logging.WARNING, logger="graphduel.tracer"):
        for i in range(7):
            out = traced(x)
            np.testing.assert_array_equal(out.numpy(), twin(x).detach().numpy(), err_msg=f"call {i + 1}")
            assert not out.requires_grad and out.grad_fn is None  # as a traced call's result
    assert len(traced.entries) == 3 and traced.retrace_count == 2  # the bound: cache_size programs
    assert traced.eager_fallbacks == 4 and model.counter == 7
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1  # once per signature
    message = warnings_logged[0].getMessage()
    assert "running eagerly from now on" in message and "model.counter" in message and "cache_size" in message
    assert traced.retrace_reasons[-1].startswith("eager fallback:")


def test_python_state_guards_off_keeps_replaying_the_traced_branch_without_writing_state():
    model, _ = _pair()
    x = eager.randn(2, 4)
    traced = quiet_trace(model, x, guards="off")
    first = traced(x).numpy()
    np.testing.assert_array_equal(traced(x).numpy(), first)
    assert model.counter == 0 and traced.retrace_count == 0


# ---------------------------------------------------------------- what is not a guard


def test_a_train_step_that_returns_and_prints_loss_item_never_retraces(capsys):
    def make():
        eager.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = eager.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            print("loss", loss.item())
            print(f"loss {loss.item():.4f}")
            logging.getLogger("graphduel.test").info("loss %s", loss.item())
            value = float(loss)
            print(value)
            return loss.item()
        return model, step

    model, step = make()
    twin, eager_step = make()
    rng = np.random.default_rng(0)
    batches = [(eager.tensor(rng.standard_normal((4, 3)).astype(np.float32)),
                eager.tensor(rng.standard_normal((4, 1)).astype(np.float32))) for _ in range(5)]
    traced = quiet_trace(step, *batches[0])
    losses = [traced(*b) for b in batches]
    capsys.readouterr()
    assert losses == pytest.approx([eager_step(*b) for b in batches], rel=1e-6)
    assert len(set(losses)) == 5  # the loss changes every step ...
    assert traced.retrace_count == 0 and traced.guard_failures == 0  # ... and nothing retraces
    np.testing.assert_allclose(model.weight.detach().numpy(), twin.weight.detach().numpy(), rtol=1e-6)
    assert {a.use for a in traced.assumptions} == {"logged", "returned"}
    assert all(e.plan.guard_outputs == 0 for e in traced.entries)


def _escape(fn, text: str, kind: str = "item", returned: bool = False):
    line = line_of(fn, text)
    return types.SimpleNamespace(filename=__file__, lineno=line, kind=kind, returned=returned)


def _uses():
    loss = eager.ones(())
    log = logging.getLogger("graphduel.test")
    print(loss.item())                                   # logged
    log.info("loss %.3f", loss.item())                   # logged
    value = loss.item()                                  # assigned, then only logged
    print(f"{value:.3f}")
    scale = loss.item()                                  # assigned, then used: a guard
    y = loss * scale
    if (v := loss.item()) > 0:                           # a walrus: a guard
        y = y * v
    return loss.item()                                   # returned


def test_escape_use_reads_the_source_statement():
    assert escape_use(_escape(_uses, "print(loss.item())")) == "logged"
    assert escape_use(_escape(_uses, 'log.info("loss')) == "logged"
    assert escape_use(_escape(_uses, "value = loss.item()")) == "logged"
    assert escape_use(_escape(_uses, "scale = loss.item()")) == "guard"
    assert escape_use(_escape(_uses, "(v := loss.item())")) == "guard"
    assert escape_use(_escape(_uses, "return loss.item()", returned=True)) == "returned"
    assert escape_use(_escape(_uses, "return loss.item()", returned=False)) == "guard"  # baked into the result
    assert escape_use(_escape(_uses, "return loss.item()", kind="bool", returned=True)) == "guard"
    unreadable = types.SimpleNamespace(filename="<no such source>", lineno=3, kind="item", returned=True)
    assert escape_use(unreadable) == "guard"  # what cannot be read is guarded


def test_outcomes_compare_values_as_python_saw_them():
    assert outcome("bool", np.array(3.0)) is True and outcome("bool", np.array([0.0])) is False
    assert outcome("item", np.array([[2.5]], np.float32)) == 2.5
    assert outcome("float", np.array(np.nan)) == outcome("float", np.array([np.nan]))
    mask = np.array([True, False, True])
    assert outcome("nonzero", mask) == outcome("nonzero", mask.copy()) != outcome("nonzero", ~mask)


# ---------------------------------------------------------------- guards="raise", bad input


def test_guards_raise_raises_a_guard_error_naming_the_line():
    traced = quiet_trace(branchy, eager.ones(3), guards="raise")
    assert traced(POSITIVE).tolist() == [2.0, 4.0, 6.0]
    line = line_of(branchy, "if x.sum()")
    with pytest.raises(tracer.GuardError, match=rf"guard failed at test_tracer_guards.py:{line}: bool\(tensor\) "
                                                r"\(node %2\) was True while tracing and is False on this call"):
        traced(NEGATIVE)
    assert issubclass(tracer.GuardError, RuntimeError) and traced.retrace_count == 0
    report = traced.check(NEGATIVE)
    assert not report.ok and report.divergences[0].kind == "guard"


def test_guards_raise_on_python_state_names_the_attribute_and_the_line_that_changes_it():
    model, _ = _pair()
    x = eager.randn(2, 4)
    traced = quiet_trace(model, x, guards="raise")
    traced(x)
    line = line_of(Counter, "self.counter += 1")
    with pytest.raises(tracer.GuardError, match=rf"Python state model.counter \(changed at "
                                                rf"test_tracer_guards.py:{line}\): it was 0 when traced and is 1 now"):
        traced(x)


def test_an_unknown_guards_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"guards must be one of 'retrace', 'raise', 'off', got 'sometimes'"):
        tracer.trace(branchy, eager.ones(3), guards="sometimes")


# ---------------------------------------------------------------- check


def test_check_reports_a_broken_assumption_even_when_the_outputs_coincide():
    def same_either_way(x):
        if x.sum() > 0:
            return x * 1
        return x + 0

    frozen = quiet_trace(same_either_way, eager.ones(3), guards="off")
    report = frozen.check(NEGATIVE)
    assert not report.ok and report.traced.tolist() == report.eager.tolist()
    (d,) = report.divergences
    assert d.kind == "assumption" and "the outputs agree" in d.error and "the eager run saw False" in d.error
    assert d.source == f"test_tracer_guards.py:{line_of(same_either_way, 'if x.sum()')}"
    guarded = quiet_trace(same_either_way, eager.ones(3))
    report = guarded.check(NEGATIVE)
    assert report.ok and "guard failed" in report.notes[0]  # the call itself retraced


# ---------------------------------------------------------------- compiled, saved


def test_compiled_dynamic_net_retraces_like_the_trace_and_shares_one_lowering_per_program():
    model, twin = _pair()
    x = eager.randn(2, 4)
    compiled = quiet_compile(model, x)
    for i in range(6):
        np.testing.assert_allclose(compiled(x).numpy(), twin(x).detach().numpy(), rtol=1e-6, err_msg=f"call {i + 1}")
    assert compiled.retrace_count == 5 and model.counter == 6
    assert len(compiled.lowerings) == 2  # odd and even calls trace the same two programs


def test_compiled_guard_outputs_come_from_the_kernels():
    compiled = quiet_compile(branchy, eager.ones(3))
    assert compiled(NEGATIVE).tolist() == [-2.0, -3.0, -4.0] and compiled.retrace_count == 1
    assert compiled(POSITIVE).tolist() == [2.0, 4.0, 6.0] and compiled.retrace_count == 1
    assert compiled.lowered.graph.outputs[-1].dtype == np.bool_


def test_a_failed_guard_leaves_state_a_cuda_graph_replay_donated_untouched():
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the SIMT emulator cannot build")

    def make():
        eager.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = eager.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            if loss > 1.0:
                loss = loss * 0.5
            loss.backward()
            opt.step()
            return loss
        return model, step
    model, step = make()
    twin, eager_step = make()
    rng = np.random.default_rng(0)
    batches = [(eager.tensor((rng.standard_normal((4, 3)) * k).astype(np.float32)),
                eager.tensor(rng.standard_normal((4, 1)).astype(np.float32))) for k in (0.1, 3, 0.1, 3)]
    compiled = quiet_compile(step, *batches[0], backend="simt", cuda_graph=True)
    for x, y in batches:
        assert compiled(x, y).item() == pytest.approx(eager_step(x, y).item(), rel=1e-5)
        np.testing.assert_allclose(model.weight.detach().numpy(), twin.weight.detach().numpy(), rtol=1e-5)
    assert compiled.guard_failures >= 1


def test_a_guarded_program_saves_with_its_guards_and_the_loaded_graph_checks_them(tmp_path):
    traced = quiet_trace(branchy, eager.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traced.save(tmp_path / "g")
    loaded = tracer.load(tmp_path / "g")
    assert loaded(POSITIVE).tolist() == [2.0, 4.0, 6.0]
    with pytest.raises(tracer.GuardError, match=rf"test_tracer_guards.py:{line_of(branchy, 'if x.sum()')}: "
                                                r"bool\(tensor\) \(node %2\) was True while tracing and is False"):
        loaded(NEGATIVE)


def test_saving_a_program_that_changes_python_state_warns_that_the_loaded_graph_has_none(tmp_path):
    model, _ = _pair()
    traced = quiet_trace(model, eager.randn(2, 4))
    with pytest.warns(tracer.TracerWarning, match=rf"changes Python state \(at test_tracer_guards.py:"
                                                  rf"{line_of(Counter, 'self.counter += 1')}\)"):
        traced.save(tmp_path / "g")


def test_compile_passes_guards_to_the_trace():
    raising = quiet_compile(branchy, eager.ones(3), guards="raise")
    assert raising(POSITIVE).tolist() == [2.0, 4.0, 6.0]
    with pytest.raises(tracer.GuardError, match=rf"guard failed at test_tracer_guards.py:"
                                                rf"{line_of(branchy, 'if x.sum()')}: bool\(tensor\)"):
        raising(NEGATIVE)
    assert raising.retrace_count == 0
    frozen = quiet_compile(branchy, eager.ones(3), guards="off")
    assert frozen(NEGATIVE).tolist() == [-2.0, -4.0, -6.0] and frozen.graph.outputs[-1].op != "gt"
    with pytest.raises(ValueError, match="guards must be one of"):
        compiler.compile(branchy, eager.ones(3), guards="never")


# ---------------------------------------------------------------- Python scalars the function names itself

FLAG = True
STEPS = 0


def flagged(x):
    if FLAG:
        return x * 2
    return x - 1


def test_a_global_flag_is_guarded_and_a_changed_global_retraces(caplog, monkeypatch):
    traced = quiet_trace(flagged, eager.ones(3))
    assert traced(POSITIVE).tolist() == [2.0, 4.0, 6.0]
    monkeypatch.setitem(globals(), "FLAG", False)
    with caplog.at_level(logging.INFO, logger="graphduel.tracer"):
        assert traced(POSITIVE).tolist() == [0.0, 1.0, 2.0]
    assert traced.retrace_count == 1
    assert any("Python state FLAG: True -> False" in r.getMessage() for r in caplog.records)
    monkeypatch.setitem(globals(), "FLAG", True)
    assert traced(POSITIVE).tolist() == [2.0, 4.0, 6.0] and traced.retrace_count == 1  # both programs kept


def test_a_closure_cell_and_a_plain_objects_attribute_are_guarded():
    def make(scale):
        def fn(x):
            return x * scale if scale > 1 else x
        return fn

    fn = make(2.0)
    traced = quiet_trace(fn, eager.ones(3))
    fn.__closure__[0].cell_contents = 0.5
    assert traced(POSITIVE).tolist() == [1.0, 2.0, 3.0] and traced.retrace_count == 1

    class Scaler:
        def __init__(self):
            self.double = True

        def run(self, x):
            return x * 2 if self.double else x

    scaler = Scaler()
    traced = quiet_trace(scaler.run, eager.ones(3))
    scaler.double = False
    assert traced(POSITIVE).tolist() == [1.0, 2.0, 3.0] and traced.retrace_count == 1


def test_a_nonlocal_counter_the_run_changes_is_restored_after_tracing_and_written_back_by_each_call():
    def make():
        calls = 0

        def fn(x):
            nonlocal calls
            calls += 1
            return x * 2 if calls % 2 else x * 3
        return fn

    fn, twin_fn = make(), make()
    traced = quiet_trace(fn, eager.ones(3))
    assert fn.__closure__[0].cell_contents == 0  # tracing has no side effects
    for i in range(4):
        assert traced(POSITIVE).tolist() == twin_fn(POSITIVE).tolist(), f"call {i + 1}"
    assert fn.__closure__[0].cell_contents == 4


def test_a_global_the_run_changes_is_put_back_after_tracing(monkeypatch):
    monkeypatch.setitem(globals(), "STEPS", 0)

    def count(x):
        global STEPS
        STEPS += 1
        return x + STEPS

    traced = quiet_trace(count, eager.ones(1))
    assert STEPS == 0
    assert [traced(eager.zeros(1)).item() for _ in range(3)] == [1.0, 2.0, 3.0] and STEPS == 3


# ---------------------------------------------------------------- a baked value kept in the graph instead


def test_a_scalar_whose_one_use_is_arithmetic_stays_in_the_graph_as_a_0d_tensor_and_never_retraces():
    def normalise(x):
        return x / x.max().item() + float(x.sum())

    traced = quiet_trace(normalise, eager.tensor([1.0, 4.0]))
    div = next(n for n in traced.graph.calls if n.op == "div")
    assert div.args[1].op == "max" and div.args[1].shape == ()  # the tensor, not the baked 4.0
    for x in ([1.0, 8.0], [3.0, 2.0], [-1.0, 0.5]):
        assert traced(eager.tensor(x)).tolist() == pytest.approx(normalise(eager.tensor(x)).tolist())
    assert traced.retrace_count == 0 and traced.entries[0].plan.guard_outputs == 0
    assert traced.assumptions[0].use == "in graph" and "not guarded" in str(traced.assumptions[0])
    compiled = quiet_compile(normalise, eager.tensor([1.0, 4.0]))
    assert compiled(eager.tensor([1.0, 8.0])).tolist() == [9.125, 10.0] and compiled.retrace_count == 0
    frozen = quiet_trace(normalise, eager.tensor([1.0, 4.0]), guards="off")
    assert [n.args[1] for n in frozen.graph.calls] == [4.0, 5.0]  # off: the constants of today's trace


def test_a_scalar_that_is_not_the_tensors_value_stays_guarded():
    def truncated(x):
        return x * int(x.sum())         # int() of a float: the op reads 2, not 2.7

    def named(x):
        s = x.sum().item()              # a name: its other uses cannot be followed
        return x * s

    def one_size_reshaped(x):
        return x * x.sum(0, keepdim=True).item()   # a 1-element tensor: read back as 0-d

    t = quiet_trace(truncated, eager.tensor([1.0, 1.7]))
    assert t(eager.tensor([1.0, 2.5])).tolist() == [3.0, 7.5] and t.retrace_count == 1
    n = quiet_trace(named, eager.tensor([1.0, 1.0]))
    assert n(eager.tensor([1.0, 2.0])).tolist() == [3.0, 6.0] and n.retrace_count == 1
    r = quiet_trace(one_size_reshaped, eager.tensor([1.0, 1.0]))
    assert [c.op for c in r.graph.calls] == ["sum", "reshape", "mul"]
    assert r(eager.tensor([1.0, 2.0])).tolist() == [3.0, 6.0] and r.retrace_count == 0


@pytest.mark.gpu
def test_guards_on_the_gpu_retrace_and_a_cuda_graph_replay_keeps_its_state_on_a_failed_guard():
    def make():
        eager.manual_seed(0)
        model = nn.Linear(3, 1).cuda()
        opt = eager.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            if loss > 1.0:   # read on the host after the call: one device-to-host copy per call
                loss = loss * 0.5
            loss.backward()
            opt.step()
            return loss
        return model, step
    rng = np.random.default_rng(0)
    batches = [(eager.tensor((rng.standard_normal((4, 3)) * k).astype(np.float32), device="cuda"),
                eager.tensor(rng.standard_normal((4, 1)).astype(np.float32), device="cuda")) for k in (0.1, 3, 0.1, 3)]
    for make_program in (lambda f, b: quiet_trace(f, *b), lambda f, b: quiet_compile(f, *b, device="cuda"),
                         lambda f, b: quiet_compile(f, *b, device="cuda", cuda_graph=True)):
        model, step = make()
        twin, eager_step = make()
        program = make_program(step, batches[0])
        for x, y in batches:
            assert program(x, y).item() == pytest.approx(eager_step(x, y).item(), rel=1e-5)
            np.testing.assert_allclose(model.weight.detach().cpu().numpy(), twin.weight.detach().cpu().numpy(),
                                       rtol=1e-5)
        assert program.guard_failures >= 1 and program.retrace_count == 1
