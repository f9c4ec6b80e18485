"""The saved-graph format's value encodings and conversions: one table each, shared by save, load and calls."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eager
import tracer
from eager.backend import canonical_device, float32
from eager.primitives import Aval, IndexSlot
from tracer.conversions import CONVERSIONS, convert
from tracer.ir import Graph
from tracer.serialization import _TAGS, FormatError, decode, encode

_NODE_GRAPH = Graph()
_NODE = _NODE_GRAPH.placeholder("x", Aval((2,), float32))

# one value per tag of the format, and what it reads back as
SAMPLES = {
    "ref": (_NODE, _NODE),
    "device": (canonical_device("cpu"), canonical_device("cpu")),
    "float": (float("-inf"), float("-inf")),
    "scalar": (np.int64(7), np.int64(7)),
    "dtype": (np.dtype("float32"), np.dtype("float32")),
    "index_slot": (IndexSlot(2), IndexSlot(2)),
    "slice": (slice(1, None, 2), slice(1, None, 2)),
    "ellipsis": (Ellipsis, Ellipsis),
    "tuple": ((1, 2.5, None), (1, 2.5, None)),
    "list": ([1, "a"], [1, "a"]),
    "dict": ({"k": (1,)}, {"k": (1,)}),
}


def test_every_value_tag_writes_its_own_tag_and_reads_back_the_value():
    assert set(SAMPLES) == set(_TAGS), "a tag of the format has no sample here (or a sample names no tag)"
    for tag, (value, expected) in SAMPLES.items():
        obj = encode(value, "test")
        assert tag in obj, f"{value!r} was written as {obj!r}, not with tag {tag!r}"
        back = decode(json.loads(json.dumps(obj)), "test", {_NODE.id: _NODE})
        assert back == expected and type(back) is type(expected), (tag, back)


def test_plain_json_values_are_written_untagged():
    assert [encode(v, "test") for v in (None, True, "s", 3, 2.5)] == [None, True, "s", 3, 2.5]
    # a NumPy float64 is a Python float: written as a number; a float32 keeps its dtype
    assert encode(np.float64(1.5), "test") == 1.5
    assert encode(np.float32(1.5), "test") == {"scalar": 1.5, "dtype": "float32"}
    assert decode({"scalar": 1.5, "dtype": "float32"}, "test").dtype == np.float32


def test_a_value_no_tag_applies_to_names_its_type():
    with pytest.raises(FormatError, match=r"node %3: a set \(\{1\}\) cannot be saved"):
        encode({1}, "node %3")


def test_a_malformed_body_names_the_tag():
    with pytest.raises(FormatError, match=r"where: a slice is \[start, stop, step\]"):
        decode({"slice": [1, 2]}, "where")
    with pytest.raises(FormatError, match=r"unknown value encoding 'set' \(known: .*index_slot"):
        decode({"set": [1]}, "where")


def test_conversions_recompute_python_values_and_survive_save_and_load(tmp_path):
    def fn(x):
        return float(x.sum()), int(x.max()), x.tolist(), x.sum().item()

    with pytest.warns(tracer.TracerWarning):
        traced = tracer.trace(fn, eager.zeros(2))
    assert traced.entries[-1].plan.conversions == ["float", "int", "tolist", "float"]
    assert set(traced.entries[-1].plan.conversions) <= set(CONVERSIONS)
    x = eager.tensor([1.0, 2.0])
    assert traced(x) == (3.0, 2, [1.0, 2.0], 3.0)
    traced.save(tmp_path / "g")
    got = tracer.load(tmp_path / "g")(x)
    assert got == (3.0, 2, [1.0, 2.0], 3.0) and type(got[1]) is int and type(got[0]) is float


def test_loading_an_unknown_conversion_names_the_known_ones(tmp_path):
    traced = tracer.trace(lambda x: x * 2, eager.zeros(2))
    traced.save(tmp_path / "g")
    path = tmp_path / "g" / "graph.json"
    doc = json.loads(path.read_text())
    doc["conversions"] = ["complex"]
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"unknown conversion 'complex' \(known: item, float, int, bool, tolist\)"):
        tracer.load(tmp_path / "g")


def test_each_conversion_gives_its_python_type():
    a = np.array([[3.0]], np.float32)
    assert [type(convert(a, k)) for k in CONVERSIONS] == [float, float, int, bool, list]
    assert convert(np.array([0.0]), "bool") is False and convert(a, "tolist") == [[3.0]]
