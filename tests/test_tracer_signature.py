"""Signatures: a traced function is specialised to shapes, dtypes, device and non-tensor arguments."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import eager
import tracer
from eager import nn


def model():
    eager.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 2))


def test_new_batch_size_retraces_once_and_the_log_names_the_argument(caplog):
    m = model()
    traced = tracer.trace(m, eager.randn(64, 10))
    with caplog.at_level(logging.INFO, logger="graphduel.tracer"):
        x = eager.randn(32, 10)
        np.testing.assert_allclose(traced(x).numpy(), m(x).detach().numpy(), rtol=1e-6)
        traced(eager.randn(32, 10))
        traced(eager.randn(64, 10))  # both signatures are cached now
    assert traced.retrace_count == 1
    (record,) = [r for r in caplog.records if "retracing" in r.getMessage()]
    assert "argument input: f32[64,10] -> f32[32,10] (shape changed)" in record.getMessage()
    assert [g.placeholders[0].shape for g in traced.graphs] == [(64, 10), (32, 10)]


def test_dtype_and_python_argument_changes_retrace_with_the_reason(caplog):
    traced = tracer.trace(lambda x, scale: x * scale, eager.ones(3), 2.0)
    with caplog.at_level(logging.INFO, logger="graphduel.tracer"):
        assert traced(eager.ones(3, dtype=eager.float64), 2.0).dtype == eager.float64
        assert traced(eager.ones(3), 3.0).tolist() == [3.0, 3.0, 3.0]
    messages = [r.getMessage() for r in caplog.records]
    assert any("argument x: f32[3] -> f64[3] (dtype changed)" in m for m in messages)
    assert any("argument scale: 2.0 -> 3.0" in m for m in messages)
    assert traced.retrace_count == 2


def test_strict_mode_raises_naming_the_argument_and_both_signatures():
    traced = tracer.trace(model(), eager.randn(64, 10), strict=True)
    with pytest.raises(tracer.SignatureError) as info:
        traced(eager.randn(32, 10))
    message = str(info.value)
    assert "traced for (input: f32[64,10])" in message and "called with (input: f32[32,10])" in message
    assert "argument input: f32[64,10] -> f32[32,10] (shape changed)" in message
    assert "strict=False" in message
    assert traced.retrace_count == 0


def test_wrong_number_of_arguments_is_a_clear_error():
    traced = tracer.trace(lambda x, y: x + y, eager.ones(2), eager.ones(2))
    with pytest.raises(TypeError, match=r"traced <lambda>\(x, y\): called with 1 positional argument.*missing a "
                                        r"required argument: 'y'"):
        traced(eager.ones(2))
    with pytest.raises(TypeError, match="called with 3 positional argument"):
        traced(eager.ones(2), eager.ones(2), eager.ones(2))


def test_cache_is_a_bounded_lru():
    traced = tracer.trace(lambda x: x + 1, eager.ones(1), cache_size=2)
    for n in (2, 3, 1):
        traced(eager.ones(n))
    shapes = [g.placeholders[0].shape for g in traced.graphs]
    assert shapes == [(3,), (1,)] and traced.retrace_count == 3


def test_aliased_arguments_are_part_of_the_signature():
    traced = tracer.trace(lambda a, b: a * b, eager.full((2,), 3.0), eager.full((2,), 4.0))
    x = eager.full((2,), 5.0)
    assert traced(x, x).tolist() == [25.0, 25.0]
    assert traced(x, eager.ones(2)).tolist() == [5.0, 5.0]


def test_nested_arguments_are_flattened_and_named():
    def fn(batch, cfg):
        return batch["x"] * cfg[0] + batch["y"][1]

    traced = tracer.trace(fn, {"x": eager.ones(2), "y": (eager.ones(2), eager.ones(2))}, (2.0,))
    assert [n.name for n in traced.graph.placeholders] == ["batch['x']", "batch['y'][0]", "batch['y'][1]"]
    out = traced({"x": eager.full((2,), 3.0), "y": (eager.ones(2), eager.full((2,), 5.0))}, (2.0,))
    assert out.tolist() == [11.0, 11.0]
