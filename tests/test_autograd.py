"""Autograd engine semantics, as PyTorch defines them (expected numbers are PyTorch 2.13's own answers)."""

from __future__ import annotations

import gc
import inspect
import threading
import time
import warnings
import weakref

import numpy as np
import pytest

import eager
from eager.autograd import AnomalyError, BackwardError


def leaf(values, dtype=eager.float64):
    return eager.tensor(values, dtype=dtype, requires_grad=True)


# ---------------------------------------------------------------- the seed programs


def test_seed_program_y_equals_x_plus_w_times_w_plus_1():
    x, w = leaf(2.0), leaf(1.0)
    a = x + w
    b = w + 1
    a.retain_grad()
    b.retain_grad()
    y = a * b
    y.backward()
    assert (w.grad.item(), x.grad.item(), a.grad.item(), b.grad.item()) == (5.0, 2.0, 2.0, 3.0)
    with pytest.warns(UserWarning, match="not a leaf"):
        assert y.grad is None
    assert (x.is_leaf, w.is_leaf, a.is_leaf, b.is_leaf, y.is_leaf) == (True, True, False, False, False)
    assert y.grad_fn.name() == "MulBackward" and a.grad_fn.name() == "AddBackward"


def test_seed_programs_square_and_mean():
    x = leaf(3.0)
    ((2 * x) ** 2).backward()
    assert x.grad.item() == 24.0  # d/dx (2x)^2 = 8x (one seed printed 8: wrong)
    a, b = leaf([1.0]), leaf([2.0])
    (2 * (a + b)).mean().backward()
    assert a.grad.tolist() == [2.0] and b.grad.tolist() == [2.0]


# ---------------------------------------------------------------- accumulation and broadcasting


def test_gradients_accumulate_until_zeroed():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    assert x.grad.tolist() == [4.0, 8.0]
    x.grad.zero_()
    y.backward(retain_graph=True)
    assert x.grad.tolist() == [2.0, 4.0]
    x.grad = None
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_gradients_are_summed_over_broadcast_dimensions():
    a, row, col, s = leaf(np.ones((2, 3))), leaf([1.0, 2.0, 3.0]), leaf([[1.0], [2.0]]), leaf(2.0)
    (a * row + col * s).sum().backward()
    assert row.grad.shape == (3,) and row.grad.tolist() == [2.0, 2.0, 2.0]
    assert col.grad.shape == (2, 1) and col.grad.tolist() == [[6.0], [6.0]]
    assert s.grad.shape == () and s.grad.item() == 9.0
    assert a.grad.tolist() == [[1.0, 2.0, 3.0]] * 2


def test_gradient_has_the_leaf_dtype_and_no_history():
    x = eager.tensor([1.0, 2.0], requires_grad=True)  # float32
    (x * 2.5).sum().backward()
    assert x.grad.dtype == eager.float32 and x.grad.grad_fn is None and not x.grad.requires_grad


def test_backward_on_a_leaf_gives_ones():
    x = leaf(4.0)
    x.backward()
    assert x.grad.item() == 1.0


def test_gradient_argument_seeds_a_non_scalar_backward():
    x = leaf([1.0, 2.0])
    (x * x).backward(gradient=eager.tensor([1.0, 10.0], dtype=eager.float64))
    assert x.grad.tolist() == [2.0, 40.0]


# ---------------------------------------------------------------- retain_grad and hooks


def test_retain_grad_keeps_the_gradient_of_a_non_leaf():
    x = leaf([1.0, 2.0])
    y = x * 2
    y.retain_grad()
    (y * y).sum().backward()
    assert y.grad.tolist() == [4.0, 8.0] and x.grad.tolist() == [8.0, 16.0]


def test_retain_grad_sees_the_gradient_after_hooks_whatever_the_order():
    # PyTorch runs retain_grad last, so .grad holds what the hooks returned
    for order in ("retain_first", "hook_first"):
        x = leaf([1.0, 2.0])
        y = x * 2
        if order == "retain_first":
            y.retain_grad()
            y.register_hook(lambda g: g * 10)
        else:
            y.register_hook(lambda g: g * 10)
            y.retain_grad()
        (y * y).sum().backward()
        assert y.grad.tolist() == [40.0, 80.0], order
        assert x.grad.tolist() == [80.0, 160.0], order


def test_hook_on_a_leaf_replaces_its_gradient():
    x = leaf([1.0, 2.0])
    seen = []
    x.register_hook(lambda g: seen.append(g.tolist()))
    x.register_hook(lambda g: g * 3)
    (x * 2).sum().backward()
    assert seen == [[2.0, 2.0]] and x.grad.tolist() == [6.0, 6.0]


def test_hook_on_a_non_leaf_changes_what_flows_upstream():
    x = leaf([1.0, 2.0])
    y = x * x
    handle = y.register_hook(lambda g: g * 0.5)
    y.sum().backward(retain_graph=True)
    assert x.grad.tolist() == [1.0, 2.0]
    handle.remove()
    x.grad = None
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 4.0]


def test_hooks_also_apply_in_autograd_grad():
    x = leaf([1.0, 2.0])
    x.register_hook(lambda g: g * 2)
    (g,) = eager.autograd.grad((x * 3).sum(), x)
    assert g.tolist() == [6.0, 6.0] and x.grad is None


def test_hook_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        eager.tensor([1.0]).register_hook(lambda g: g)


# ---------------------------------------------------------------- errors the engine must raise


def test_backward_twice_without_retain_graph_raises_and_retain_graph_allows_it():
    x = leaf([1.0, 2.0])
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([1.0, 2.0]))
    with pytest.raises(BackwardError, match=r"second time.*retain_graph=True"):
        y.backward()


def test_modifying_a_saved_input_in_place_makes_backward_name_the_op():
    x = leaf([1.0, 2.0])
    a = x * 2
    y = a * a  # MulBackward saved a
    a.add_(1)
    with pytest.raises(BackwardError, match=r"modified by an in-place operation: input 0 of MulBackward.*version 1"):
        y.sum().backward()


def test_modifying_a_saved_output_in_place_makes_backward_name_the_op():
    x = leaf([1.0, 2.0])
    y = x.exp()  # ExpBackward reads its output
    y.mul_(2)
    with pytest.raises(BackwardError, match="its output of ExpBackward"):
        y.sum().backward()


def test_updating_a_leaf_under_no_grad_invalidates_graphs_that_saved_it():
    x, w = leaf([1.0]), leaf([3.0])
    y = (x * w).sum()
    with eager.no_grad():
        w.mul_(2)
    with pytest.raises(BackwardError, match="MulBackward"):
        y.backward()


def test_in_place_on_a_leaf_that_requires_grad_raises():
    w = leaf([1.0])
    with pytest.raises(RuntimeError, match="leaf tensor.*in-place.*no_grad"):
        w.add_(1)


def test_non_scalar_backward_without_gradient_raises():
    x = leaf([1.0, 2.0])
    with pytest.raises(BackwardError, match=r"only for scalar outputs.*shape \[2\].*gradient="):
        (x * 2).backward()


def test_requires_grad_on_an_integer_tensor_raises():
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients.*i64"):
        eager.tensor([1, 2]).requires_grad_()
    with pytest.raises(TypeError, match="floating-point"):
        eager.tensor([1, 2], requires_grad=True)


def test_integer_and_bool_results_do_not_require_grad():
    x = leaf([1.5, -2.0])
    assert not x.long().requires_grad and not (x > 0).requires_grad and not x.argmax().requires_grad
    assert x.long().grad_fn is None and x.double().requires_grad


# ---------------------------------------------------------------- autograd.grad


def test_autograd_grad_returns_gradients_without_touching_dot_grad():
    x, y = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    gx, gy = eager.autograd.grad((x * y).sum(), [x, y])
    assert gx.tolist() == [3.0, 4.0] and gy.tolist() == [1.0, 2.0]
    assert x.grad is None and y.grad is None


def test_autograd_grad_of_an_unused_input():
    x, unused = leaf([1.0]), leaf([5.0])
    with pytest.raises(BackwardError, match="not used.*allow_unused=True"):
        eager.autograd.grad((x * 2).sum(), [x, unused])
    gx, gu = eager.autograd.grad((x * 2).sum(), [x, unused], allow_unused=True)
    assert gx.tolist() == [2.0] and gu is None


def test_autograd_grad_wrt_a_non_leaf():
    x = leaf([1.0, 2.0])
    h = x * 3
    (gh,) = eager.autograd.grad((h * h).sum(), h)
    assert gh.tolist() == [6.0, 12.0]


def test_create_graph_gives_higher_order_derivatives_of_x_cubed():
    x = leaf([1.0, 2.0])
    (d1,) = eager.autograd.grad((x ** 3).sum(), x, create_graph=True)
    assert d1.tolist() == [3.0, 12.0] and d1.requires_grad and d1.grad_fn is not None
    (d2,) = eager.autograd.grad(d1.sum(), x, create_graph=True)
    assert d2.tolist() == [6.0, 12.0]  # 6x
    (d3,) = eager.autograd.grad(d2.sum(), x)
    assert d3.tolist() == [6.0, 6.0]


def test_backward_with_create_graph_makes_dot_grad_differentiable():
    x = leaf([2.0])
    (x ** 3).sum().backward(create_graph=True)
    g = x.grad
    assert g.tolist() == [12.0] and g.requires_grad
    x.grad = None
    g.sum().backward()
    assert x.grad.tolist() == [12.0]  # d/dx 3x^2 = 6x at 2


# ---------------------------------------------------------------- grad modes, detach


def test_no_grad_records_nothing_and_enable_grad_reenables():
    x = leaf([1.0])
    with eager.no_grad():
        y = x * 2
        assert not eager.is_grad_enabled()
        with eager.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.grad_fn is None and y.is_leaf
    assert z.requires_grad and z.grad_fn.name() == "MulBackward"
    assert eager.is_grad_enabled()


def test_no_grad_as_decorator():
    @eager.no_grad()
    def f(t):
        return t * 2
    assert not f(leaf([1.0])).requires_grad and eager.is_grad_enabled()


def test_set_grad_enabled_as_context_and_as_function():
    x = leaf([1.0])
    with eager.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad
    eager.set_grad_enabled(False)  # a plain call switches the mode, as in PyTorch
    try:
        assert not eager.is_grad_enabled() and not (x * 2).requires_grad
    finally:
        eager.set_grad_enabled(True)
    assert eager.is_grad_enabled()


def test_set_grad_enabled_as_decorator_switches_only_inside_the_function():
    @eager.set_grad_enabled(False)
    def f(t):
        return t * 2
    assert eager.is_grad_enabled()
    assert not f(leaf([1.0])).requires_grad and eager.is_grad_enabled()


def test_detach_shares_values_but_not_history():
    x = leaf([1.0, 2.0])
    y = x * 2
    d = y.detach()
    assert d.tolist() == [2.0, 4.0] and not d.requires_grad and d.grad_fn is None and d.is_leaf
    (y * d).sum().backward()
    assert x.grad.tolist() == [4.0, 8.0]  # d is a constant: d/dx (2x * d) = 2d


def test_gan_style_step_with_detach_leaves_the_generator_alone():
    g_w, d_w = leaf([0.5]), leaf([2.0])
    fake = g_w * 3
    d_loss = (d_w * fake.detach()).sum()
    d_loss.backward()
    assert d_w.grad.tolist() == [1.5] and g_w.grad is None


# ---------------------------------------------------------------- custom Function


class MySigmoid(eager.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = 1 / (1 + (-x).exp())
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out * (1 - out)


def test_custom_function_is_one_node_with_the_right_gradient():
    x = leaf([-1.0, 0.0, 2.0])
    y = MySigmoid.apply(x)
    assert y.grad_fn.name() == "MySigmoidBackward"
    assert y.grad_fn.next_functions == ((None, 0),)  # straight to the leaf: the ops inside were not recorded
    y.sum().backward()
    s = 1 / (1 + np.exp(-np.array([-1.0, 0.0, 2.0])))
    np.testing.assert_allclose(y.detach().numpy(), s)
    np.testing.assert_allclose(x.grad.numpy(), s * (1 - s))
    assert eager.autograd.gradcheck(MySigmoid.apply, (leaf([0.3, -0.2]),))


def test_custom_function_saved_tensor_modified_in_place_raises():
    x = leaf([0.0, 1.0])
    y = MySigmoid.apply(x)
    y.mul_(2)
    with pytest.raises(BackwardError, match=r"MySigmoidBackward: saved tensor 0.*modified in place"):
        y.sum().backward()


# ---------------------------------------------------------------- anomaly detection


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_detect_anomaly_names_the_forward_op_and_the_user_line():
    x = leaf([0.0, 1.0])
    with eager.autograd.detect_anomaly():
        line = inspect.currentframe().f_lineno + 1
        y = x.sqrt()  # d/dx sqrt(x) at 0 is inf
        loss = (y * 2).sum()
        with pytest.raises(AnomalyError) as err:
            loss.backward()
    message = str(err.value)
    assert "SqrtBackward" in message and "'sqrt'" in message and "inf" in message
    assert f"test_autograd.py:{line}" in message


class BadLog(eager.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.log()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (g * 0) / (x * 0)  # a buggy backward: 0/0


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_detect_anomaly_names_a_custom_function_and_its_user_line():
    x = leaf([1.0, 2.0])
    with eager.autograd.detect_anomaly():
        line = inspect.currentframe().f_lineno + 1
        y = BadLog.apply(x)
        with pytest.raises(AnomalyError, match=rf"BadLogBackward.*nan.*'bad_log'.*test_autograd.py:{line}"):
            (y * 2).sum().backward()


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_without_detect_anomaly_nan_gradients_pass_silently():
    x = leaf([0.0])
    (x.sqrt() * 0).sum().backward()
    assert np.isnan(x.grad.item())


# ---------------------------------------------------------------- memory


def _freed_after_backward(build):
    """Build a graph, backward, drop it; report which weakly-held objects survived (with gc disabled)."""
    gc.collect()
    gc.disable()
    try:
        x = leaf(np.ones(4))
        out, watched = build(x)
        refs = [weakref.ref(o) for o in watched]
        out.backward()
        del out, watched
        return [r() for r in refs if r() is not None]
    finally:
        gc.enable()


def test_graph_and_arrays_are_freed_by_refcounting_after_backward():
    def build(x):
        h = x.exp()
        y = (h * x).tanh()
        return y.sum(), [h, h._data, h.grad_fn, y, y._data, y.grad_fn]
    assert _freed_after_backward(build) == []


def test_custom_function_saving_its_output_leaves_no_cycle():
    def build(x):
        y = MySigmoid.apply(x)
        return (y * 2).sum(), [y, y._data, y.grad_fn]
    assert _freed_after_backward(build) == []


def test_graph_is_freed_when_dropped_without_backward():
    gc.collect()
    gc.disable()
    try:
        x = leaf(np.ones(3))
        y = MySigmoid.apply(x.exp())
        refs = [weakref.ref(y), weakref.ref(y.grad_fn), weakref.ref(y._data)]
        del y
        assert [r() for r in refs] == [None, None, None]
    finally:
        gc.enable()


# ---------------------------------------------------------------- threads


def test_no_grad_is_per_thread():
    inside, other_ready = threading.Event(), threading.Event()
    seen = {}

    def worker_in_no_grad():
        with eager.no_grad():
            inside.set()
            other_ready.wait(5)
            seen["worker"] = (eager.is_grad_enabled(), (leaf([1.0]) * 2).requires_grad)

    def worker_with_grad():
        inside.wait(5)
        seen["other"] = (eager.is_grad_enabled(), (leaf([1.0]) * 2).requires_grad)
        other_ready.set()

    threads = [threading.Thread(target=worker_in_no_grad), threading.Thread(target=worker_with_grad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"worker": (False, False), "other": (True, True)}


def test_one_no_grad_object_is_safe_in_two_threads_at_once():
    # a decorated function (or a shared no_grad() object) entered by two threads that leave in the
    # opposite order: each thread must restore its own state
    barrier = threading.Barrier(2)
    errors, shared = [], eager.no_grad()

    @eager.no_grad()
    def step(delay):
        barrier.wait(5)  # both threads are inside the same decorated function now
        time.sleep(delay)
        return (leaf([1.0]) * 2).requires_grad

    def run(delay):
        try:
            assert step(delay) is False
            with shared:
                barrier.wait(5)
                time.sleep(delay)
            assert eager.is_grad_enabled()
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(delay,)) for delay in (0.0, 0.05)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []


def test_warning_free_leaf_grad_read():
    x = leaf([1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert x.grad is None
