"""The one IR loop (tracer.interpret.evaluate): every consumer of a Graph is this loop with a rule."""

import numpy as np
import pytest

import eager
import tracer
from eager.backend import float32
from eager.primitives import Aval
from tracer.executor import ExecutionError, GeneratedCodeError, Interpreter, StaticExecutor
from tracer.interpret import Rule, evaluate, free_schedule
from tracer.ir import Graph, GraphError


def _chain():
    g = Graph()
    x = g.placeholder("x", Aval((3,), float32))
    a = g.call("exp", (x,), {}, Aval((3,), float32))
    b = g.call("mul", (a, 2.0), {}, Aval((3,), float32))
    c = g.call("add", (b, a), {}, Aval((3,), float32))
    g.outputs.append(c)
    return g, (x, a, b, c)


class _Recording(Rule):
    def __init__(self):
        self.calls, self.freed = [], []

    def call(self, node, args):
        self.calls.append((node.op, list(args)))
        return f"{node.op}{node.id}"

    def free(self, nodes):
        self.freed.append([n.id for n in nodes])


def test_evaluate_feeds_placeholders_passes_scalars_and_returns_outputs_then_updates():
    g, (x, a, b, c) = _chain()
    g.updates.append((x, b))
    rule = _Recording()
    assert evaluate(g, ["X"], rule) == ["add3", "mul2"]
    assert rule.calls == [("exp", ["X"]), ("mul", ["exp1", 2.0]), ("add", ["mul2", "exp1"])]


def test_evaluate_frees_each_value_after_its_last_reader_and_keep_holds_them_all():
    g, (x, a, b, c) = _chain()
    rule = _Recording()
    evaluate(g, ["X"], rule)
    assert rule.freed == [[x.id], [a.id, b.id]]  # x dies at exp, a and b at add; the output never dies
    assert {k: [n.id for n in v] for k, v in free_schedule(g).items()} == {1: [x.id], 3: [a.id, b.id]}
    results, env = evaluate(g, ["X"], _Recording(), keep=True)
    assert set(env) == {x.id, a.id, b.id, c.id}


def test_evaluate_refuses_the_wrong_number_of_inputs_naming_the_placeholders():
    g, _ = _chain()
    with pytest.raises(GraphError, match=r"1 placeholder values \(x\), got 2"):
        evaluate(g, [1, 2], _Recording())


def test_a_rule_without_call_says_which_rule_and_op():
    g, _ = _chain()
    with pytest.raises(NotImplementedError, match="Rule has no rule for primitive calls \\(exp\\)"):
        evaluate(g, [1], Rule())


def test_interpreter_and_generated_source_agree_and_keep_returns_every_node():
    g, (x, a, b, c) = _chain()
    arr = np.array([0.0, 1.0, 2.0], np.float32)
    fast = StaticExecutor(g).run([arr])[0]
    slow, seen = Interpreter(g).run([arr], keep=True)
    np.testing.assert_array_equal(fast, slow[0])
    np.testing.assert_allclose(seen[a.id], np.exp(arr))
    np.testing.assert_allclose(fast, 3 * np.exp(arr), rtol=1e-6)


def test_a_failing_primitive_is_reported_by_the_interpreter_naming_the_node():
    t = tracer.trace(lambda x, y: x @ y, eager.ones(2, 3), eager.ones(3, 4))
    with pytest.raises(ExecutionError, match=r"while executing %\d+: f32\[2,4\] = matmul"):
        t.entry_for(eager.ones(2, 3), eager.ones(3, 4)).exe.run([np.ones((2, 3), np.float32),
                                                                 np.ones((5, 4), np.float32)])


@pytest.mark.parametrize("raised, expected, message", [
    # a failure the interpreter does not reproduce is our codegen's bug: said so, never hidden
    (KeyError("a planted codegen bug"), GeneratedCodeError, "planted codegen bug.*bug in tracer.codegen"),
    # out of memory is nobody's node: raised as it is, not blamed on codegen
    (MemoryError("out of memory allocating 12 bytes"), MemoryError, "out of memory"),
], ids=["codegen bug", "out of memory"])
def test_a_generated_source_failure_is_raised_never_hidden_by_the_interpreter(raised, expected, message):
    g, _ = _chain()
    exe = StaticExecutor(g)

    def failing(xp, constants, x):
        raise raised
    exe._forward = failing
    with pytest.raises(expected, match=message):
        exe.run([np.ones(3, np.float32)])
