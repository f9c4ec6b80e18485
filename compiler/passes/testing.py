"""Tiny hand-built graphs used by the passes' docstrings and unit tests."""

from __future__ import annotations

import numpy as np

from eager.primitives import Aval
from tracer.ir import Graph

F32 = np.dtype("float32")


def _graph(shape=(4,)):
    g = Graph()
    return g, g.placeholder("x", Aval(shape, F32)), Aval(shape, F32)


def tiny_graph() -> Graph:
    g, x, a = _graph()
    g.call("sin", (x,), {}, a)
    g.outputs.append(g.call("exp", (x,), {}, a))
    return g.validate()


def dup_graph() -> Graph:
    g, x, a = _graph()
    e1, e2 = g.call("exp", (x,), {}, a), g.call("exp", (x,), {}, a)
    g.outputs.append(g.call("add", (e1, e2), {}, a))
    return g.validate()


def const_graph() -> Graph:
    g, x, a = _graph()
    two, three = g.constant(np.float32(2)), g.constant(np.float32(3))
    five = g.call("add", (two, three), {}, Aval((), F32))
    g.outputs.append(g.call("mul", (x, five), {}, a))
    return g.validate()


def identity_graph() -> Graph:
    g, x, a = _graph()
    y = g.call("mul", (x, 1), {}, a)
    g.outputs.append(g.call("neg", (g.call("neg", (y,), {}, a),), {}, a))
    return g.validate()
