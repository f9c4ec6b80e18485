"""Regression tests for bugs the differential fuzzer found (one test per bug, smallest program)."""

import numpy as np

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
