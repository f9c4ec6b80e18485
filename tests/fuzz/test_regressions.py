"""Regression tests for bugs the differential fuzzer found (one test per bug, smallest program)."""

import numpy as np
import pytest

import eager


def test_tensor_from_a_numpy_scalar_keeps_shape_zero_dims():
    # np.ascontiguousarray turns 0-d arrays into 1-d ones; tensor() must not
    assert eager.tensor(np.float64(0.5)).shape == ()
    assert eager.tensor(np.array(2.0, dtype=np.float32)).shape == ()


def test_gradient_through_a_diamond_reaches_the_shared_node_from_both_paths():
    # v4 = exp(x) + exp(exp(x)): the first exp feeds the sum directly and through the second exp; the
    # topological order once finished it before the second exp had sent its gradient
    x = eager.tensor(0.5, dtype=eager.float64, requires_grad=True)
    v1 = x.exp()
    v4 = v1 + v1.exp()
    v4.backward()
    e = np.exp(0.5)
    assert np.isclose(x.grad.item(), e + np.exp(e) * e, rtol=1e-12)


def test_gradient_of_abs_at_zero_is_zero_as_in_pytorch():
    x = eager.tensor([0.0, -2.0, 3.0], dtype=eager.float64, requires_grad=True)
    x.abs().sum().backward()
    assert x.grad.tolist() == [0.0, -1.0, 1.0]


# ---------------------------------------------------------------- found by the in-place fuzz programs


def test_an_in_place_write_into_an_empty_tensor_is_not_refused_as_an_expanded_view():
    # NumPy gives an empty array zero strides; the expanded-view check once read them as one shared element
    x = eager.zeros(0, 2) * 1
    x.add_(eager.zeros(0, 2))
    eager.zeros(2, 0).clone().unsqueeze(0).mul_(eager.ones(2, 0))
    assert x.shape == (0, 2)


def test_a_filled_non_leaf_has_no_gradient_from_its_old_values():
    x = eager.ones(2, 3, dtype=eager.float64, requires_grad=True)
    y = x * 1
    y.fill_(0.0)
    y.sum().backward()
    assert x.grad.tolist() == [[0.0] * 3] * 2


def test_a_view_zeroed_in_place_has_no_gradient_from_its_old_values():
    x = eager.ones(2, 3, dtype=eager.float64, requires_grad=True)
    y = x * 1
    row = y[0]
    row.zero_()
    (row * 1).sum().backward()
    assert x.grad.tolist() == [[0.0] * 3] * 2


def test_a_non_leaf_overwritten_through_a_reshape_view_still_takes_in_place_ops():
    x = eager.ones(2, 3, dtype=eager.float64, requires_grad=True)
    y = x * 1
    y.view(-1).zero_()
    y.add_(1.0)
    y.sum().backward()
    assert x.grad.tolist() == [[0.0] * 3] * 2


@pytest.mark.parametrize("mode", ["traced", "compiled"])
def test_a_traced_result_that_is_a_view_sees_writes_after_it_was_taken(mode):
    import compiler
    import tracer

    def zero_after_view(x):
        t = x.clone()
        head = t[0:2]
        t.zero_()
        return head
    x = eager.tensor([0.5, 2.0, 3.0])
    static = tracer.trace(zero_after_view, x) if mode == "traced" else compiler.compile(zero_after_view, x)
    assert zero_after_view(x).tolist() == [0.0, 0.0]
    assert static(x).tolist() == [0.0, 0.0]


def test_compiling_a_reshape_of_a_tensor_with_an_empty_dim():
    import compiler

    def double_reshaped(x):
        return x.reshape(1, 2, 0, 2) * 2
    x = eager.zeros(2, 0, 2)
    assert compiler.compile(double_reshaped, x)(x).shape == (1, 2, 0, 2)


def test_add_with_alpha_into_an_empty_tensor_outside_autograd():
    # the BLAS axpy behind add_(alpha=) once went through SciPy's saxpy, which refuses empty vectors ("offx")
    for dtype in (eager.float32, eager.float64):
        x = eager.zeros(0, 2, dtype=dtype) * 1
        x.add_(eager.ones(0, 2, dtype=dtype), alpha=2.0)
        assert x.shape == (0, 2)
    y = eager.ones(3) * 1
    y.add_(eager.ones(3), alpha=-0.5)
    assert y.tolist() == [0.5, 0.5, 0.5]
