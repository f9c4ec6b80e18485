"""Bad inputs to the tracer: each raises a specific error whose message names the problem and what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eager
import tracer
from eager import nn
from tracer.serialization import FormatError


@pytest.fixture
def saved(tmp_path):
    eager.manual_seed(0)
    traced = tracer.trace(nn.Linear(3, 2), eager.ones(4, 3))
    path = tmp_path / "linear"
    traced.save(path)
    return path


def edit(path, change):
    doc = json.loads((path / "graph.json").read_text())
    change(doc)
    (path / "graph.json").write_text(json.dumps(doc))


def test_strict_signature_names_argument_and_both_signatures():
    traced = tracer.trace(lambda x: x * 2, eager.ones(4, 3), strict=True)
    with pytest.raises(tracer.SignatureError, match=r"traced for \(x: f32\[4,3\]\).*called with \(x: f64\[4,3\]\)"
                                                     r".*dtype changed.*strict=False"):
        traced(eager.ones(4, 3, dtype=eager.float64))


def test_wrong_number_of_arguments_names_the_missing_one():
    traced = tracer.trace(nn.Linear(3, 2), eager.ones(4, 3))
    with pytest.raises(TypeError, match=r"traced Linear\(input\): called with 0 positional argument.*'input'"):
        traced()


def test_corrupt_graph_file(saved):
    (saved / "graph.json").write_text('{"format": "graphduel.graph", "version": 1, "nodes": [')
    with pytest.raises(FormatError, match=r"graph.json is corrupt \(not valid JSON"):
        tracer.load(saved)


def test_corrupt_array_file(saved):
    (saved / "arrays.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FormatError, match=r"arrays.npz is corrupt"):
        tracer.load(saved)


def test_missing_array_and_mismatched_shape(saved):
    np.savez(saved / "arrays.npz", placeholder_1=np.zeros((5, 5), np.float32))
    with pytest.raises(FormatError, match=r"array 'placeholder_1' is float32\[5, 5\], the graph says f32\[2,3\]"):
        tracer.load(saved)


def test_newer_format_version_says_upgrade(saved):
    edit(saved, lambda d: d.update(version=99))
    with pytest.raises(FormatError, match=r"written by a newer graphduel \(format version 99\); this version reads "
                                          r"format versions up to 2\. Upgrade graphduel"):
        tracer.load(saved)


def test_not_a_graph_file(saved):
    edit(saved, lambda d: d.update(format="something.else"))
    with pytest.raises(FormatError, match="is not a graphduel graph"):
        tracer.load(saved)


def test_python_object_reference_is_refused_never_executed(saved, tmp_path):
    marker = tmp_path / "pwned"

    def inject(d):
        d["nodes"][-1]["params"] = {"shape": {"py/reduce": ["os.system", [f"touch {marker}"]]}}
    edit(saved, inject)
    with pytest.raises(FormatError, match=r"tries to reference a Python object \('py/reduce'.*Refused: a saved graph "
                                          r"holds only data"):
        tracer.load(saved)
    assert not marker.exists()


def test_pickled_arrays_are_refused(saved):
    np.savez(saved / "arrays.npz", placeholder_1=np.array([object()], dtype=object))
    with pytest.raises(FormatError, match="corrupt or holds objects"):
        tracer.load(saved)


def test_unknown_primitive_is_named(saved):
    edit(saved, lambda d: d["nodes"][-1].update(op="os.system"))
    with pytest.raises(FormatError, match=r"unknown primitive 'os.system'.*known primitives: abs, add"):
        tracer.load(saved)


def test_inconsistent_graph_names_the_node(saved):
    edit(saved, lambda d: d["nodes"][-1].update(shape=[9, 9]))
    with pytest.raises(FormatError, match=r"inconsistent graph: node %\d+ records f32\[9,9\]"):
        tracer.load(saved)


def test_loaded_graph_refuses_another_signature(saved):
    loaded = tracer.load(saved)
    with pytest.raises(tracer.SignatureError, match=r"input input must be f32\[4,3\], got float32\[5, 3\].*cannot "
                                                    "retrace"):
        loaded(eager.ones(5, 3))
    with pytest.raises(TypeError, match=r"takes 1 input tensor\(s\) \(input\), got 2"):
        loaded(eager.ones(4, 3), eager.ones(4, 3))


def test_unsavable_parameter_value_names_the_node(tmp_path):
    traced = tracer.trace(lambda x: x * 2, eager.ones(2))
    traced.graph.calls[0].params["weird"] = object()
    with pytest.raises(FormatError, match=r"node %1 \(mul\) param 'weird': a object .* cannot be saved"):
        traced.save(tmp_path / "g")
