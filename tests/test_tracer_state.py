"""State: tracing has no side effects; traced calls update parameters, optimizer state and .grad like eager."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import eager
import eager.nn.functional as F
import tracer
from eager import nn, optim


def snapshot(model, opt):
    params = {k: p.detach().numpy().copy() for k, p in model.named_parameters()}
    grads = {k: None if p.grad is None else p.grad.numpy().copy() for k, p in model.named_parameters()}
    return params, grads, len(opt.state)


def make(opt_cls=optim.Adam, **kw):
    eager.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = opt_cls(model.parameters(), **kw)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, opt, step


def data(seed):
    rng = np.random.default_rng(seed)
    return eager.tensor(rng.standard_normal((6, 4)), dtype=eager.float32), eager.tensor(rng.standard_normal((6, 1)),
                                                                                         dtype=eager.float32)


def test_tracing_has_no_side_effects():
    model, opt, step = make(lr=0.1)
    x, y = data(0)
    before = snapshot(model, opt)
    eager.manual_seed(5)
    tracer.trace(step, x, y)  # draws dropout masks twice (first and steady-state run)
    after = snapshot(model, opt)
    drawn = eager.rand(3).tolist()
    eager.manual_seed(5)
    assert eager.rand(3).tolist() == drawn  # the random stream did not move
    np.testing.assert_equal(before, after)
    assert all(p.grad is None for p in model.parameters()) and not opt.state


def test_a_step_that_creates_optimizer_state_records_the_first_and_the_steady_program():
    model, opt, step = make(lr=0.1)
    traced = tracer.trace(step, *data(0))
    first, steady = traced.graphs
    assert not [n for n in first.placeholders if "exp_avg" in n.name]
    assert [n.name for n in steady.placeholders if n.name.endswith(".exp_avg")] == [
        f"opt.state[{k}].exp_avg" for k in ("0.weight", "0.bias", "3.weight", "3.bias")]
    assert traced.graph is steady
    traced(*data(1))
    assert set(opt.state[model[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.state[model[0].weight]["step"].item() == 1.0
    traced(*data(2))
    assert opt.state[model[0].weight]["step"].item() == 2.0 and traced.retrace_count == 0


def test_steady_calls_update_parameters_and_optimizer_state_in_place_like_eager():
    model, opt, step = make(lr=0.1)
    traced = tracer.trace(step, *data(0))
    traced(*data(1))  # the first program creates the optimizer state; the steady one reads and updates it
    weight, state = model[0].weight, opt.state[model[0].weight]
    exp_avg, version = state["exp_avg"], state["exp_avg"]._version
    before = [weight.detach().numpy().copy(), exp_avg.numpy().copy()]
    traced(*data(2))
    assert opt.state[model[0].weight]["exp_avg"] is exp_avg and model[0].weight is weight
    assert exp_avg._version == version + 1
    assert not np.array_equal(exp_avg.numpy(), before[1]) and not np.array_equal(weight.detach().numpy(), before[0])
    # eager code replacing a state tensor between calls is seen by the next call (paths, not identities)
    state["exp_avg"] = eager.zeros_like(exp_avg)
    replaced = state["exp_avg"]
    traced(*data(3))
    assert opt.state[model[0].weight]["exp_avg"] is replaced and replaced._version == 1
    assert np.abs(replaced.numpy()).sum() > 0


def test_traced_steps_with_dropout_match_eager_draw_for_draw():
    eager_model, _, eager_step = make(optim.SGD, lr=0.1, momentum=0.5)
    traced_model, _, traced_step = make(optim.SGD, lr=0.1, momentum=0.5)
    traced = tracer.trace(traced_step, *data(0))
    eager.manual_seed(42)
    a = [eager_step(*data(i)).item() for i in range(6)]
    eager.manual_seed(42)
    b = [traced(*data(i)).item() for i in range(6)]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert len(set(np.round(b, 5))) == 6  # fresh dropout masks every call: nothing was baked
    for p, q in zip(eager_model.parameters(), traced_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_without_zeroing_reads_and_updates_grad():
    def run(traced: bool):
        eager.manual_seed(0)
        model = nn.Linear(3, 1)

        def accumulate(x):
            model(x).sum().backward()  # no zero_grad: .grad accumulates across calls

        f = tracer.trace(accumulate, eager.ones(2, 3)) if traced else accumulate
        for i in range(4):
            f(eager.full((2, 3), float(i)))
        return model.weight.grad.numpy(), model.bias.grad.numpy()

    (wt, bt), (we, be) = run(True), run(False)
    np.testing.assert_allclose(wt, we)
    np.testing.assert_allclose(bt, be)
    assert we.tolist() == [[12.0, 12.0, 12.0]]


class RunningMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", eager.zeros(3))
        self.calls = 0

    def forward(self, x):
        with eager.no_grad():
            self.mean.mul_(0.9).add_(x.mean(0) * 0.1)
        return x - self.mean


def test_buffers_updated_in_place_are_written_back():
    eager_m, traced_m = RunningMean(), RunningMean()
    traced = tracer.trace(traced_m, eager.zeros(2, 3))
    assert [p.name for p, _ in traced.graph.updates] == ["mean"]
    for i in range(5):
        x = eager.full((2, 3), float(i))
        np.testing.assert_allclose(traced(x).numpy(), eager_m(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(traced_m.mean.numpy(), eager_m.mean.numpy(), rtol=1e-6)


def test_free_trainable_tensor_with_manual_sgd_and_data_assignment():
    w_eager = eager.tensor([1.0, -2.0, 3.0], requires_grad=True)
    w_traced = eager.tensor([1.0, -2.0, 3.0], requires_grad=True)

    def make_step(w):
        def step(x):
            loss = ((w * x).sum() - 1.0) ** 2
            loss.backward()
            w.data = w.data - 0.1 * w.grad  # rebinding without an in-place op: seen at the end of the run
            w.grad = None
            return loss
        return step

    eager_step, traced = make_step(w_eager), tracer.trace(make_step(w_traced), eager.ones(3))
    (p,) = traced.graph.inputs_with_role("state")
    assert p.name == "w" and [u.name for u, _ in traced.graph.updates] == ["w"]
    for i in range(5):
        x = eager.full((3,), 0.1 * i)
        assert abs(traced(x).item() - eager_step(x).item()) < 1e-6
    np.testing.assert_allclose(w_traced.detach().numpy(), w_eager.detach().numpy(), rtol=1e-6)
    assert w_traced.grad is None


def test_input_modified_in_place_is_written_back_to_the_callers_tensor():
    def fn(x):
        x.add_(1.0)
        return x * 2

    example = eager.zeros(2)
    traced = tracer.trace(fn, example)
    assert example.tolist() == [0.0, 0.0]  # the tracing run left the example alone
    x = eager.ones(2)
    assert traced(x).tolist() == [4.0, 4.0] and x.tolist() == [2.0, 2.0]


def test_module_attribute_replaced_during_the_run_is_assigned_after_each_call():
    class Memory(nn.Module):
        def __init__(self):
            super().__init__()
            self.last = eager.zeros(2)

        def forward(self, x):
            out = x + self.last
            self.last = x.detach() * 2
            return out

    m = Memory()
    traced = tracer.trace(m, eager.ones(2))
    assert m.last.tolist() == [0.0, 0.0]
    assert traced(eager.ones(2)).tolist() == [1.0, 1.0] and m.last.tolist() == [2.0, 2.0]
    assert traced(eager.ones(2)).tolist() == [3.0, 3.0]


def test_changing_parameter_dtype_between_calls_retraces():
    eager.manual_seed(0)
    model = nn.Linear(3, 2)
    traced = tracer.trace(model, eager.ones(1, 3))
    model.to(eager.float64)
    out = traced(eager.ones(1, 3, dtype=eager.float64))
    assert out.dtype == eager.float64 and traced.retrace_count == 1


def test_python_int_step_counter_in_an_optimizer_is_reported_as_frozen():
    class CountingSGD(optim.SGD):
        def step(self, closure=None):
            self.steps = getattr(self, "steps", 0) + 1  # a Python int: baked into the trace
            lr = self.param_groups[0]["lr"] / self.steps
            with eager.no_grad():
                for p in self.param_groups[0]["params"]:
                    p.sub_(p.grad * lr)

    eager.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = CountingSGD(model.parameters(), lr=0.1)
    opt.steps = 0

    def step(x):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = tracer.trace(step, eager.ones(1, 2), guards="off")  # the frozen behaviour guards prevent
    (a,) = [a for a in traced.assumptions if a.kind == "python_state"]
    assert a.name == "opt.steps" and (a.before, a.after) == (0, 1)
    assert any("opt.steps changed 0 -> 1" in str(w.message) for w in caught)
    # the step creates .grad, so the trace also recorded the steady state (from step 1's state): steps 1 and 2
    # run the programs eager would; step 3 divides lr by 3 where the steady program bakes lr / 2
    assert [n.args[1] for g in traced.graphs for n in g.calls if n.op == "mul" and n.source.endswith(
        str(CountingSGD.step.__code__.co_firstlineno + 5))] == [0.1, 0.1, 0.05, 0.05]
    assert traced.check(eager.ones(1, 2)).ok
    assert traced.check(eager.ones(1, 2)).ok
    report = traced.check(eager.ones(1, 2))
    assert not report.ok and report.divergences[0].kind == "baked value"
    assert report.divergences[0].assumption.name == "opt.steps"


def test_a_traced_function_called_inside_another_trace_is_inlined():
    inner = tracer.trace(lambda x: x.exp(), eager.ones(2))
    outer = tracer.trace(lambda x: inner(x) * 3, eager.ones(2))
    assert [n.op for n in outer.graph.calls] == ["exp", "mul"]
    np.testing.assert_allclose(outer(eager.zeros(2)).numpy(), [3.0, 3.0])


def test_check_on_a_training_step_compares_and_applies_the_step_once():
    eager_model, _, eager_step = make(optim.Adam, lr=0.1)
    traced_model, _, traced_step = make(optim.Adam, lr=0.1)
    traced = tracer.trace(traced_step, *data(0))
    for i in range(3):
        eager.manual_seed(i)
        eager_step(*data(i))
        eager.manual_seed(i)
        report = traced.check(*data(i))
        assert report.ok, str(report)
    for p, q in zip(eager_model.parameters(), traced_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_two_threads_trace_at_once_without_mixing_their_recordings():
    import threading

    results = {}

    def work(k):
        fn = (lambda x: x * 2 + 1) if k == 0 else (lambda x: (x - 3).exp())
        traced = tracer.trace(fn, eager.ones(3))
        results[k] = ([n.op for n in traced.graph.calls], traced(eager.zeros(3)).tolist())

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == (["mul", "add"], [1.0, 1.0, 1.0])
    assert results[1][0] == ["sub", "exp"]


def test_state_locations_with_the_same_name_each_get_their_own_update():
    def make_counter(step):
        count = eager.zeros(1)

        def tick(x):
            count.add_(step)
            return x + count
        return tick, lambda: count

    tick_a, count_a = make_counter(1.0)
    tick_b, count_b = make_counter(10.0)  # a second closure variable also named ``count``
    traced = tracer.trace(lambda x: tick_a(tick_b(x)), eager.zeros(1))
    results = [traced(eager.zeros(1)).tolist() for _ in range(3)]
    assert results == [[11.0], [22.0], [33.0]]
    assert count_a().tolist() == [3.0] and count_b().tolist() == [30.0]


def test_resolving_a_missing_location_never_creates_it():
    """Slots resolve on every call of a traced step; a defaultdict (torch optimizers keep their state in one)
    must not grow the key that was only looked up, and assigning creates the missing levels."""
    from collections import defaultdict

    from tracer.slots import MISSING, Slot

    state = defaultdict(dict)
    slot = Slot("opt.state[w].exp_avg", state, (("item", "w"), ("item", "exp_avg")))
    assert slot.get() is MISSING and dict(state) == {}
    slot.assign(3)
    assert slot.get() == 3 and dict(state) == {"w": {"exp_avg": 3}}
    assert Slot("xs[5]", [1, 2], (("item", 5),)).get() is MISSING


def test_keys_of_one_state_dict_resolve_together_without_creating_any():
    """A traced call reads an optimizer's state for one parameter (step, exp_avg, exp_avg_sq) in one lookup of
    its dict; a defaultdict is only read, and a missing key is a missing location."""
    from collections import defaultdict

    from tracer.slots import FETCH_ERRORS, Slot
    from tracer.traced import _reader_segments

    w = eager.ones(2)
    for state in ({w: {"step": 1, "m": 2}}, defaultdict(dict, {w: {"step": 1, "m": 2}})):
        root = type("Opt", (), {})()
        root.state = state
        slots = [Slot(f"opt.state[w].{k}", root, (("attr", "state"), ("item", w), ("item", k))) for k in ("step", "m")]
        (segment,) = _reader_segments(slots)
        assert segment.root is root and segment.many and segment.get(root) == (1, 2)
        missing = [Slot("opt.state[v].step", root, (("attr", "state"), ("item", eager.ones(1)), ("item", "step")))]
        missing.append(Slot("opt.state[v].m", root, missing[0].steps[:-1] + (("item", "m"),)))
        with pytest.raises(FETCH_ERRORS):
            _reader_segments(missing)[0].get(root)
        assert len(state) == 1


def test_closure_walking_finds_modules_optimizers_and_tensors_with_their_locations():
    from tracer.roots import function_roots

    model = nn.Linear(2, 1)
    opt = optim.SGD(model.parameters(), lr=0.1)
    scale = eager.ones(1)
    extras = {"shift": eager.zeros(1), "note": "not state"}

    def step(x):
        return model(x) * scale + extras["shift"], opt

    found = {r.name: r for r in function_roots(step)}
    assert set(found) == {"model", "opt", "scale", "extras['shift']"}
    assert found["scale"].slot.get() is scale and found["extras['shift']"].slot.get() is extras["shift"]
    assert found["model"].obj is model and found["opt"].obj is opt


def test_a_snapshot_puts_back_tensors_grads_and_containers_and_may_keep_python_scalars():
    from tracer.snapshot import Snapshot
    from tracer.world import World

    model = nn.Linear(2, 1)
    model.counter = 1
    weight = model.weight.tolist()
    for keep_python in (False, True):
        snap = Snapshot.of(World.discover(model, ()))
        model.weight.data = eager.zeros(1, 2)
        model.weight.grad = eager.ones(1, 2)
        model.counter = 2
        model.extra = eager.ones(1)
        snap.restore(python=not keep_python)
        assert model.weight.tolist() == weight and model.weight.grad is None and not hasattr(model, "extra")
        assert model.counter == (2 if keep_python else 1)
        model.counter = 1


def test_a_plan_names_the_locations_it_updates_writes_and_guards():
    model, opt, step = make(optim.SGD, lr=0.1, momentum=0.9)
    x, y = data(0)
    traced = tracer.trace(step, x, y)
    first, steady = traced.entries
    assert {g.slot.name for g in first.plan.guard} >= {"0.weight.grad", "opt.state[0.weight].momentum_buffer"}
    assert [g.layout for g in first.plan.guard if g.slot.name == "0.weight.grad"] == [None]
    assert {s.name for s in first.plan.extra_slots} >= {"0.weight.grad", "opt.state[0.weight].momentum_buffer"}
    assert {t.name for t in steady.plan.update_targets} >= {"0.weight", "opt.state[0.weight].momentum_buffer"}
    assert [n.role for n in steady.graph.placeholders[:4]] == ["input", "input", "param", "param"]
