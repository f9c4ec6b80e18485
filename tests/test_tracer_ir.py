"""The IR: validation names the first bad node; fingerprints identify programs; updates may target inputs."""

from __future__ import annotations

import pytest

import eager
import tracer
from eager.backend import float32
from eager.primitives import Aval
from tracer.ir import Graph, GraphError


def test_validate_names_the_first_ill_typed_node_and_its_source_line():
    g = Graph()
    a = g.placeholder("a", Aval((2, 3), float32))
    b = g.placeholder("b", Aval((4, 5), float32))
    g.outputs.append(g.call("matmul", (a, b), {}, Aval((2, 5), float32), source="model.py:7"))
    with pytest.raises(GraphError, match=r"node %2 is ill-typed \(matmul: shapes f32\[2,3\] and f32\[4,5\] do not "
                                         r"fit.*\): %2: f32\[2,5\] = matmul\(%0, %1\)    # model.py:7"):
        g.validate()


def test_validate_catches_a_recorded_type_that_the_rule_contradicts():
    g = Graph()
    a = g.placeholder("a", Aval((3,), float32))
    g.outputs.append(g.call("exp", (a,), {}, Aval((4,), float32)))
    with pytest.raises(GraphError, match=r"node %1 records f32\[4\] but exp gives f32\[3\]"):
        g.validate()


def test_fingerprint_identifies_the_program_not_the_source_lines():
    f = lambda x: (x * 2).exp()  # noqa: E731
    a = tracer.trace(f, eager.ones(3)).graph
    b = tracer.trace(lambda x: (x * 2).exp(), eager.ones(3)).graph
    c = tracer.trace(lambda x: (x * 3).exp(), eager.ones(3)).graph
    k1 = tracer.trace(lambda x: x + eager.tensor([1.0, 2.0, 3.0]), eager.ones(3)).graph
    k2 = tracer.trace(lambda x: x + eager.tensor([1.0, 2.0, 4.0]), eager.ones(3)).graph
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert k1.fingerprint() != k2.fingerprint()  # constants' values count


def test_updates_may_target_an_input_placeholder():
    g = Graph()
    x = g.placeholder("x", Aval((2,), float32))
    y = g.call("add", (x, 1.0), {}, Aval((2,), float32))
    g.updates.append((x, y))
    assert "update x <- %1" in str(g.validate())
