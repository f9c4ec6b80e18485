"""tracer.script: Python control flow on tensors rewritten into cond / while_loop / scan nodes.

Every converted program must equal eager on inputs that take each path (the other branch, another trip count),
with zero retraces; Python conditions stay Python; lifted Python ints (DynamicNet's counter) are state the graph
updates; what cannot be converted is a ScriptError naming this file's line and the construct.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest

import compiler
import eager
import tracer
from compiler.api import lower_graph
from eager import nn
from tracer.script import Scripted, ScriptError, do_not_convert

HERE = "test_tracer_script.py"


def _line(fn, text: str) -> int:
    """The line of ``fn``'s source that contains ``text`` (so messages are checked against real lines)."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _close(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = w.detach().numpy() if isinstance(w, eager.Tensor) else np.asarray(w)
        g = g.detach().numpy() if isinstance(g, eager.Tensor) else np.asarray(g)
        np.testing.assert_allclose(g, w, rtol=1e-6)


# ---------------------------------------------------------------- if -> cond


def clamp_or_flip(x, w):
    if x.sum() > 0:
        y = (x * w).clamp(min=0)
        z = y + 1
    else:
        y = -x
        z = y * w
    return y, z


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["branch_traced", "other_branch"])
def test_an_if_on_a_tensor_becomes_one_cond_that_takes_either_branch_without_retracing(sign):
    x, w = eager.tensor([1.0, -2.0, 3.0]), eager.tensor([0.5, 2.0, -1.0])
    traced = tracer.script(clamp_or_flip, x, w)
    _close(traced(x * sign, w), clamp_or_flip(x * sign, w))
    assert traced.retrace_count == 0 and traced.guard_failures == 0
    assert traced.graph.op_counts()["cond"] == 1
    assert [str(c) for c in traced.conversions] == [f"{HERE}:{_line(clamp_or_flip, 'if x.sum()')} if -> cond"]


def test_the_ir_of_a_converted_if_names_the_users_lines_and_shows_both_regions():
    x, w = eager.ones(3), eager.ones(3)
    text = str(tracer.script(clamp_or_flip, x, w).graph)
    assert "branches=(true, false)" in text and "      true(" in text and "      false(" in text
    assert f"{HERE}:{_line(clamp_or_flip, 'if x.sum()')}" in text     # the cond and its test
    assert f"{HERE}:{_line(clamp_or_flip, 'y = -x')}" in text          # inside the false branch
    assert "script.py" not in text.replace(HERE, "")                    # never the converter's own lines


def keep_or_double(x, w):
    if x.sum() > 0:
        y = w * 2
    else:
        y = w
    return y


def test_a_branch_returning_an_outside_tensor_unchanged_reads_it_on_every_call():
    traced = tracer.script(keep_or_double, eager.ones(2), eager.ones(2))
    w = eager.tensor([3.0, -4.0])
    _close(traced(-eager.ones(2), w), w)  # not the w seen while tracing
    _close(traced(eager.ones(2), w), w * 2)


def pick_sign(x):
    if x.mean() > 0:
        s = 1.0
    else:
        s = -1.0
    return x * s


def test_python_numbers_assigned_in_tensor_branches_become_0d_tensors_of_the_cond():
    traced = tracer.script(pick_sign, eager.ones(2))
    for x in (eager.ones(2) * 3, -eager.ones(2)):
        _close(traced(x), pick_sign(x))
    assert traced.retrace_count == 0


def both_conditions(x):
    if (x.sum() > 0 and x.max() < 5) or not x.min() > -10:
        x = x * 2
    return x


@pytest.mark.parametrize("values", [[1.0, 2.0], [1.0, 7.0], [-20.0, 1.0], [-1.0, -2.0]])
def test_and_or_not_on_tensor_conditions_are_logical_ops_in_the_graph(values):
    traced = tracer.script(both_conditions, eager.ones(2))
    x = eager.tensor(values)
    _close(traced(x), both_conditions(x))
    assert traced.retrace_count == 0 and traced.assumptions == []


def ternary(x):
    return x * 2 if x.sum() > 0 else x - 1


def test_an_if_expression_on_a_tensor_becomes_a_cond():
    traced = tracer.script(ternary, eager.ones(2))
    for x in (eager.ones(2), -eager.ones(2)):
        _close(traced(x), ternary(x))
    assert [c.construct + " -> " + c.became for c in traced.conversions] == ["if expression -> cond"]


# ---------------------------------------------------------------- while -> while_loop, for -> scan


def double_until(x):
    steps = 0
    while x.sum() < 100:
        x = x * 2
        steps += 1
    return x, steps


def test_a_while_on_a_tensor_becomes_a_while_loop_whose_trip_count_the_data_sets():
    traced = tracer.script(double_until, eager.ones(3))
    for scale in (1.0, 5.0, 40.0):
        got, want = traced(eager.ones(3) * scale), double_until(eager.ones(3) * scale)
        _close(got[0], want[0])
        assert got[1].item() == want[1]  # a Python int counter carried by the loop: a 0-d int64 tensor
    assert traced.retrace_count == 0 and traced.graph.op_counts()["while_loop"] == 1


def running_sum(xs):
    total = eager.zeros(xs.shape[1])
    for row in xs:
        total = total + row * row
    return total, row


def test_a_for_over_a_tensor_becomes_a_scan_and_leaves_the_loop_variable_at_the_last_row():
    traced = tracer.script(running_sum, eager.ones(4, 3))
    xs = eager.randn(4, 3)
    _close(traced(xs), running_sum(xs))
    assert traced.retrace_count == 0 and traced.graph.op_counts()["scan"] == 1


class Elman(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(5, 3)

    def forward(self, xs, h):
        for x in xs:
            h = self.cell(eager.cat([h, x])).tanh()
        return h


def test_an_rnn_loop_over_a_sequence_is_one_scan_reading_the_cells_parameters():
    eager.manual_seed(0)
    model = Elman()
    xs, h0 = eager.randn(6, 2), eager.zeros(3)
    traced = tracer.script(model, xs, h0)
    other = eager.randn(6, 2)
    _close(traced(other, h0), model(other, h0))
    assert traced.graph.op_counts()["scan"] == 1
    with eager.no_grad():  # the parameters are state the scan reads, not constants baked into its body
        model.cell.weight.mul_(0.5)
    _close(traced(other, h0), model(other, h0))


def test_compiled_conversions_of_if_while_and_for_equal_eager():
    x, w = eager.tensor([1.0, -2.0, 3.0]), eager.ones(3)
    for fn, example, calls in [(clamp_or_flip, (x, w), [(-x, w), (x, w)]),
                               (double_until, (eager.ones(3),), [(eager.ones(3) * 7,)]),
                               (running_sum, (eager.ones(4, 3),), [(eager.randn(4, 3),)])]:
        compiled = compiler.compile(tracer.script(fn, *example), *example)
        for args in calls:
            _close(compiled(*args), fn(*args))
        assert compiled.retrace_count == 0, fn.__name__
        assert {"cond", "while_loop", "scan"} & set(compiled.traced.graph.op_counts()), fn.__name__


# ---------------------------------------------------------------- Python conditions stay Python


def maybe_shift(x, shift: bool):
    if shift:
        x = x + 1
    for k in range(2):
        x = x * (k + 1)
    return x


def test_python_bool_conditions_and_python_loops_run_as_python():
    traced = tracer.script(maybe_shift, eager.ones(2), True)
    _close(traced(eager.ones(2), True), maybe_shift(eager.ones(2), True))
    assert {c.became for c in traced.conversions} == {"python"}
    assert "cond" not in traced.graph.op_counts() and "scan" not in traced.graph.op_counts()


def only_one_branch_python(x, flag: bool):
    if flag:
        y = x * 2
    return y


def test_a_python_branch_keeps_pythons_semantics_for_a_variable_it_did_not_define():
    traced = tracer.script(only_one_branch_python, eager.ones(2), True)
    _close(traced(eager.ones(2), True), eager.ones(2) * 2)
    with pytest.raises(NameError, match="'y'"):  # the untaken Python branch left y undefined, as in Python
        tracer.script(only_one_branch_python, eager.ones(2), False)


# ---------------------------------------------------------------- lifted state: DynamicNet


class DynamicNet(nn.Module):
    """Seed 000, as written: a Python counter picks the branch."""

    def __init__(self, d_in=4, h=8, d_out=2):
        super().__init__()
        self.linear1 = nn.Linear(d_in, h)
        self.linear2 = nn.Linear(h, d_out)
        self.counter = 0

    def forward(self, x):
        self.counter += 1
        if self.counter % 2 == 0:
            h_relu = self.linear1(x).clamp(min=0)
        else:
            h_relu = self.linear1(x * 2).clamp(min=0)
        return self.linear2(h_relu)


def _twins():
    eager.manual_seed(0)
    model, twin = DynamicNet(), DynamicNet()
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_scripted_dynamic_net_agrees_with_eager_on_every_call_with_zero_retraces(mode):
    model, twin = _twins()
    x = eager.randn(3, 4)
    traced = tracer.script(model, x)
    if mode == "compiled":  # what compiler.compile(tracer.script(model, x), x) needs to keep the lifted state
        traced = traced.retrace_with(x, lower=lower_graph)
        assert isinstance(traced.executable, compiler.api.Lowered)
    for call in range(6):
        _close(traced(x), twin(x))
        assert type(model.counter) is int and model.counter == twin.counter == call + 1
    assert traced.retrace_count == 0 and traced.guard_failures == 0 and traced.eager_fallbacks == 0
    assert traced.lifted == ["self.counter"]
    assert [str(c) for c in traced.conversions] == [f"{HERE}:{_line(DynamicNet.forward, 'if self.counter')} if -> cond"]
    assert traced.graph.op_counts()["cond"] == 1
    assert "update counter" in str(traced.graph)


def test_a_plain_trace_of_dynamic_net_retraces_where_the_script_does_not():
    model, _ = _twins()
    x = eager.randn(3, 4)
    with pytest.warns(tracer.TracerWarning):
        plain = tracer.trace(model, x)
    for _ in range(4):
        plain(x)
    assert plain.retrace_count > 0


def test_the_lifted_counter_follows_eager_code_that_changes_it_between_calls():
    model, twin = _twins()
    x = eager.randn(3, 4)
    traced = tracer.script(model, x)
    traced(x), twin(x)
    model.counter = twin.counter = 7  # eager code resets the counter: the next call reads the int
    for _ in range(3):
        _close(traced(x), twin(x))
    assert model.counter == twin.counter == 10 and traced.retrace_count == 0
    _close(model(x), twin(x))  # the module itself still runs eagerly on its int


def test_dynamic_net_workload_runs_through_tracer_script_with_zero_retraces():
    from compare import workloads
    wl = workloads.get("dynamic_net_script")
    arrays = wl.make_inputs("small")
    prog, ref = wl.build(eager, arrays), wl.build(eager, arrays)
    traced = tracer.script(prog.fn, *prog.args)
    for _ in range(6):
        _close(traced(*prog.args), ref.fn(*ref.args))
    assert traced.retrace_count == 0 and prog.fn.counter == 6


STEP = 0


def global_step(x):
    global STEP
    STEP += 1
    if STEP % 3 == 0:
        x = x * 10
    return x


def test_a_global_step_count_is_lifted_into_state_and_written_back_as_an_int():
    global STEP
    STEP = 0
    traced = tracer.script(global_step, eager.ones(1))
    got = [traced(eager.ones(1)).item() for _ in range(6)]
    assert got == [1.0, 1.0, 10.0, 1.0, 1.0, 10.0]
    assert type(STEP) is int and STEP == 6 and traced.retrace_count == 0


class Stepper:
    """Python state on a plain object (not a Module): its step count is lifted too."""

    def __init__(self):
        self.step = 0

    def __call__(self, x):
        self.step += 1
        if self.step > 2:
            x = x - self.step
        return x


def test_a_step_count_on_a_plain_object_is_lifted_into_state():
    stepper, twin = Stepper(), Stepper()
    traced = tracer.script(stepper, eager.zeros(1))
    assert [traced(eager.zeros(1)).item() for _ in range(5)] == [twin(eager.zeros(1)).item() for _ in range(5)]
    assert stepper.step == 5 and type(stepper.step) is int and traced.retrace_count == 0


def rectified_sum(xs):
    total = eager.zeros(xs.shape[1])
    for row in xs:
        if row.sum() > 0:
            total = total + row
        else:
            total = total - row
    return total


def test_an_if_inside_a_for_over_a_tensor_is_a_cond_inside_the_scan_body():
    traced = tracer.script(rectified_sum, eager.ones(3, 2))
    xs = eager.randn(5, 2)
    _close(traced(xs), rectified_sum(xs))
    assert traced.graph.op_counts().get("cond") is None and "cond(" in str(traced.graph)
    assert [c.became for c in traced.conversions] == ["scan", "cond"]


# ---------------------------------------------------------------- methods, callees, closures


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.__scale = 2.0  # a mangled name: the rewritten method must read the same attribute

    def forward(self, x):
        if x.sum() > 0:
            y = self.fc(x)
        else:
            y = x
        return y * self.__scale


class TwoGates(Gate):
    def forward(self, x):
        h = super().forward(x)
        if h.mean() > 0:
            h = super().forward(h)
        return h


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = TwoGates()

    def forward(self, x):
        return helper_branch(self.inner(x))


def helper_branch(v):
    if v.max() > 1:
        v = v / v.max()
    return v


def test_module_methods_super_and_user_callees_are_converted_too():
    eager.manual_seed(1)
    model = Outer()
    x = eager.randn(2, 3)
    traced = tracer.script(model, x)
    for scale in (1.0, -1.0, 3.0, -0.1):
        _close(traced(x * scale), model(x * scale))
    lines = {c.source for c in traced.conversions}
    assert {f"{HERE}:{_line(Gate.forward, 'if x.sum()')}", f"{HERE}:{_line(TwoGates.forward, 'if h.mean()')}",
            f"{HERE}:{_line(helper_branch, 'if v.max()')}"} <= lines
    assert traced.retrace_count == 0 and traced.assumptions == []


def make_step(weight, threshold):
    def step(x):
        if (x * weight).sum() > threshold:
            out = x * weight
        else:
            out = x
        return out

    def set_threshold(value):
        nonlocal threshold
        threshold = value
    return step, set_threshold


def test_a_closure_keeps_its_cells_so_rebinding_an_enclosing_variable_reaches_the_converted_function():
    step, set_threshold = make_step(eager.tensor([2.0, 3.0]), 1.0)
    traced = tracer.script(step, eager.ones(2))
    _close(traced(eager.ones(2)), eager.tensor([2.0, 3.0]))
    _close(traced(-eager.ones(2)), -eager.ones(2))
    assert traced.retrace_count == 0
    set_threshold(100.0)  # the original's cell: the converted function must read the same one
    _close(traced(eager.ones(2)), step(eager.ones(2)))
    _close(traced(eager.ones(2)), eager.ones(2))
    assert traced.retrace_count == 1  # a Python scalar the trace read changed: guarded, as by tracer.trace


def test_do_not_convert_leaves_a_callee_as_it_is():
    @do_not_convert
    def frozen(v):
        return v * 2 if bool(v.sum() > 0) else v

    def outer(x):
        return frozen(x)
    with pytest.warns(tracer.TracerWarning):
        traced = tracer.script(outer, eager.ones(2))
    assert traced.conversions == []
    _close(traced(-eager.ones(2)), -eager.ones(2))  # the trace's guard retraces for the other outcome
    assert traced.retrace_count == 1


# ---------------------------------------------------------------- % and // on tensors (eager's rows, converted code)


def mod_and_floordiv(x):
    return x % 3, x // 3, x % 4, x // -2, x % -3


def test_mod_and_floordiv_on_integer_tensors_follow_pythons_signs():
    a = np.array([-5, 7, 0, 2, -8, 13, -1])
    traced = tracer.script(mod_and_floordiv, eager.tensor(a))
    got = [t.tolist() for t in traced(eager.tensor(a))]
    assert got == [(a % 3).tolist(), (a // 3).tolist(), (a % 4).tolist(), (a // -2).tolist(), (a % -3).tolist()]


def float_mod(x):
    return x % 1.5, x // 0.5


def test_mod_and_floordiv_on_float_tensors_equal_numpy():
    f = np.array([-5.25, 7.0, 0.0, 2.25], np.float32)
    got = tracer.script(float_mod, eager.tensor(f))(eager.tensor(f))
    np.testing.assert_allclose(got[0].numpy(), f % 1.5, rtol=1e-6)
    np.testing.assert_array_equal(got[1].numpy(), f // 0.5)


# ---------------------------------------------------------------- what cannot be converted: errors naming the line


def early_return(x):
    if x.sum() > 0:
        return x * 2
    return x


def loop_break(x):
    while x.sum() < 100:
        x = x * 2
        if x.max() > 50:
            break
    return x


def loop_continue(xs):
    total = eager.zeros(2)
    for row in xs:
        if False:
            continue
        total = total + row
    return total


def one_branch(x):
    if x.sum() > 0:
        y = x * 2
    return y


def changes_structure(x):
    y = None
    if x.sum() > 0:
        y = x * 2
    return x if y is None else y


def changes_shape(x):
    while x.sum() < 100:
        x = eager.cat([x, x])
    return x


def appends(xs):
    outs = []
    for row in xs:
        outs.append(row * 2)
    return eager.stack(outs)


HITS = 0


def counts_in_branch(x):
    global HITS
    if x.sum() > 0:
        HITS += 1
    return x


def uses_a_generator(x):
    yield x


def undefined_before_loop(xs):
    for row in xs:
        last = row * 2
    return last


@pytest.mark.parametrize("fn, args, line_text, pattern", [
    (early_return, (eager.ones(2),), "if x.sum()", r"`if x.sum\(\) > 0:` into eager.cond.*a `return` \(line"),
    (loop_break, (eager.ones(2),), "while x.sum()", r"`while x.sum\(\) < 100:` into eager.while_loop.*a `break`"),
    (loop_continue, (eager.ones(3, 2),), "for row in xs", r"`for row in xs:` into eager.scan.*a `continue`"),
    (one_branch, (eager.ones(2),), "if x.sum()", r"`y` is assigned in only one branch.*the false branch"),
    (changes_structure, (eager.ones(2),), "if x.sum()", r"`y` is f32\[2\] in the true branch but None in the false"),
    (changes_shape, (eager.ones(2),), "while x.sum()", r"`x` is f32\[2\] entering .* but f32\[4\] after a trip"),
    (appends, (eager.ones(3, 2),), "for row in xs", r"writes to a Python object from outside \(`outs.append"),
    (undefined_before_loop, (eager.ones(3, 2),), "for row in xs", r"`last` is carried .* not defined before it"),
    (counts_in_branch, (eager.ones(2),), "if x.sum()", r"branches write to a Python object .*`HITS = \.\.\.`"),
], ids=["return_in_if", "break_in_while", "continue_in_for", "one_branch_defines", "structure_changes",
        "carry_shape_changes", "outer_list_append", "carry_undefined", "state_written_in_a_branch"])
def test_what_cannot_be_converted_is_a_script_error_naming_the_file_line_and_construct(fn, args, line_text, pattern):
    with pytest.raises(ScriptError, match=pattern) as info:
        tracer.script(fn, *args)
    assert f"{HERE}:{_line(fn, line_text)}" in str(info.value)


def test_a_generator_is_refused_when_converting():
    with pytest.raises(ScriptError, match=r"uses_a_generator .* generator \(it has `yield`\)"):
        tracer.script(uses_a_generator, eager.ones(2))


def _exec_helper():
    namespace = {}
    exec("def no_source(v):\n    return v * 2\n", namespace)
    return namespace["no_source"]


NO_SOURCE = _exec_helper()


def calls_no_source(x):
    return NO_SOURCE(x)


def test_a_call_into_code_whose_source_cannot_be_got_names_it_and_the_call_site():
    with pytest.raises(ScriptError, match=rf"no_source \(<string>:1\), called at {HERE}:"
                                          rf"{_line(calls_no_source, 'NO_SOURCE(x)')},"):
        tracer.script(calls_no_source, eager.ones(2))
    with pytest.raises(ScriptError, match="cannot get the source of no_source"):
        tracer.script(NO_SOURCE, eager.ones(2))


def test_compile_of_a_scripted_dynamic_net_equals_eager_on_every_call_with_no_retrace():
    # compiler.compile keeps the script's lifted state (Scripted.retrace_with): the counter is a cond on a tensor
    model, twin = _twins()
    x = eager.randn(3, 4)
    compiled = compiler.compile(tracer.script(model, x), x)
    for _ in range(4):
        _close(compiled(x), twin(x))
    assert compiled.retrace_count == 0


def test_a_non_scalar_condition_is_refused_as_python_refuses_its_truth_value():
    def vector_if(x):
        if x > 0:
            x = x * 2
        return x
    with pytest.raises(ScriptError, match=r"condition of `if x > 0:` is a tensor of shape \[2\].*\.any\(\)"):
        tracer.script(vector_if, eager.ones(2))


def test_a_scripted_function_is_a_traced_that_check_compares_with_eager():
    model, _ = _twins()
    x = eager.randn(3, 4)
    traced = tracer.script(model, x)
    assert isinstance(traced, (tracer.Traced, Scripted))
    report = traced.check(x)
    assert report.ok, str(report)
    assert type(model.counter) is int


def test_a_lambda_converts_and_a_partial_is_refused_with_a_clear_error():
    traced = tracer.script(lambda v: v * 2 if v.sum() > 0 else -v, eager.ones(2))
    _close(traced(-eager.ones(2)), eager.ones(2))
    with pytest.raises(TypeError, match="expected a Python function"):
        tracer.script(functools.partial(clamp_or_flip, w=eager.ones(2)), eager.ones(2))


@pytest.mark.gpu
def test_scripted_dynamic_net_on_the_gpu_agrees_with_eager_traced_and_compiled():
    model, twin = _twins()
    model.to("cuda"), twin.to("cuda")
    x = eager.randn(3, 4).to("cuda")
    traced = tracer.script(model, x)
    compiled = traced.retrace_with(x, lower=functools.partial(lower_graph, device="cuda"))
    for run in (traced, compiled):
        for _ in range(3):
            np.testing.assert_allclose(run(x).cpu().numpy(), twin(x).detach().cpu().numpy(), rtol=1e-5, atol=1e-6)
        assert run.retrace_count == 0
    assert model.counter == twin.counter == 6 and type(model.counter) is int
