"""eager.viz: make_dot draws the autograd graph (op nodes, leaves with shapes, edges input -> consumer) as
well-formed DOT; render drives Graphviz's `dot` and fails clearly without it."""

from __future__ import annotations

import os
import re
import shutil
import stat

import pytest

import eager
from eager import nn, viz

NODE = re.compile(r"^  (\w+) \[label=\"((?:[^\"\\]|\\.)*)\"")
EDGE = re.compile(r"^  (\w+) -> (\w+)$")


def _parse(dot: str):
    """Labels by node id and the edge list; asserts the text is one digraph and every edge end is declared."""
    lines = dot.strip().split("\n")
    assert lines[0] == "digraph autograd {" and lines[-1] == "}"
    labels, edges = {}, []
    for line in lines[1:-1]:
        if m := NODE.match(line):
            labels[m.group(1)] = m.group(2).replace("\\n", "\n")
        elif m := EDGE.match(line):
            edges.append(m.groups())
    for a, b in edges:
        assert a in labels and b in labels, f"edge {a} -> {b} names an undeclared node"
    return labels, edges


def _by_label(labels, text):
    return [nid for nid, label in labels.items() if label.split("\n")[0] == text]


def test_make_dot_of_the_seed_graph_has_ops_leaves_and_edges():
    w = eager.tensor([1.0], requires_grad=True)
    x = eager.tensor([2.0], requires_grad=True)
    y = (x + w) * (w + 1)
    dot = viz.make_dot(y, params={"w": w, "x": x})
    assert isinstance(dot, str) and dot.source == str(dot)
    labels, edges = _parse(dot)
    (mul,) = _by_label(labels, "MulBackward")
    adds = _by_label(labels, "AddBackward")
    (w_id,), (x_id,) = _by_label(labels, "w"), _by_label(labels, "x")
    assert len(adds) == 2 and labels[w_id] == "w\nf32[1]"
    assert {(a, mul) for a in adds} <= set(edges)
    assert (w_id, adds[0]) in edges and (w_id, adds[1]) in edges  # w feeds both additions
    assert sum(1 for a, _ in edges if a == x_id) == 1
    (out,) = _by_label(labels, "output")
    assert (mul, out) in edges and len(edges) == 6


def test_make_dot_leaves_out_constants_and_tensors_without_grad():
    w = eager.tensor([[1.0, 2.0]], requires_grad=True)
    c = eager.tensor([[3.0, 4.0]])
    labels, edges = _parse(viz.make_dot((w * c).sum()))
    assert sorted(labels.values()) == sorted(["output\nf32[]", "SumBackward", "MulBackward", "f32[1,2]"])
    assert len(edges) == 3


def test_make_dot_names_model_parameters_and_handles_several_outputs():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    out = model(eager.randn(4, 3))
    labels, _ = _parse(viz.make_dot([out, out.sum()], params=dict(model.named_parameters())))
    assert "0.weight\nf32[2,3]" in labels.values() and "0.bias\nf32[2]" in labels.values()
    assert len(_by_label(labels, "output")) == 2


def test_custom_function_is_one_node():
    class Double(eager.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2 + 0

        @staticmethod
        def backward(ctx, g):
            return g * 2

    x = eager.tensor([1.0], requires_grad=True)
    labels, edges = _parse(viz.make_dot(Double.apply(x)))
    assert sorted(labels.values()) == ["DoubleBackward", "f32[1]", "output\nf32[1]"]


def test_make_dot_after_backward_marks_the_freed_graph():
    w = eager.tensor([1.0], requires_grad=True)
    y = (w * 3).sum()
    y.backward()
    labels, _ = _parse(viz.make_dot(y))
    assert "SumBackward\n(freed by backward)" in labels.values()


def test_labels_with_quotes_are_escaped():
    w = eager.tensor([1.0], requires_grad=True)
    labels, _ = _parse(viz.make_dot(w * 2, params={'say "hi"': w}))
    assert 'say \\"hi\\"\nf32[1]' in labels.values()


def test_render_without_graphviz_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz `dot` program was not found.*apt-get install graphviz"):
        viz.render("digraph {}", str(tmp_path / "g.svg"))
    with pytest.raises(ValueError, match="format must be one of"):
        viz.render("digraph {}", str(tmp_path / "g.gif"), format="gif")


@pytest.fixture
def fake_dot(tmp_path, monkeypatch):
    """A stand-in `dot` on PATH that records its arguments and writes its stdin to the -o file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dot"
    script.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\nwhile [ "$1" != "-o" ]; do shift; done\n'
                      'cat > "$2"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_render_pipes_dot_text_to_graphviz(fake_dot, tmp_path):
    dot = viz.make_dot((eager.tensor([1.0], requires_grad=True) * 2).sum())
    path = viz.render(dot, str(tmp_path / "out" / "graph.png"), format="png")
    assert open(path).read() == dot
    assert (fake_dot / "args").read_text().split()[0] == "-Tpng"


def test_dot_source_render_writes_source_and_picture_like_torchviz(fake_dot, tmp_path):
    dot = viz.make_dot((eager.tensor([1.0], requires_grad=True) * 2).sum())
    picture = dot.render(str(tmp_path / "computation_graph"))
    assert picture.endswith("computation_graph.svg") and os.path.exists(picture)
    assert (tmp_path / "computation_graph").read_text() == dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_render_with_real_graphviz_produces_svg(tmp_path):
    w = eager.tensor([1.0], requires_grad=True)
    path = viz.render(viz.make_dot((w + 1) * w), str(tmp_path / "g.svg"))
    assert "<svg" in open(path).read()
