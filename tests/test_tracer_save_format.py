"""The saved-graph format's value encodings and conversions: one table each, shared by save, load and calls."""

from __future__ import annotations

import inspect
import json
import warnings

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


# ---------------------------------------------------------------- guards: saved, and checked by a loaded graph


def branchy(x):
    if x.sum() > 0:
        return x * 2
    return x - 1


def quiet_trace(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tracer.TracerWarning)
        return tracer.trace(fn, *args, **kwargs)


def _saved(traced, path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a guarded program saves without a warning: its guards go with it
        traced.save(path)
    return json.loads((path / "graph.json").read_text())


def test_guards_are_saved_with_their_output_kind_outcome_and_line(tmp_path):
    doc = _saved(quiet_trace(branchy, eager.ones(3)), tmp_path / "g")
    line = inspect.getsourcelines(branchy)[1] + 1
    assert doc["version"] == 2
    assert doc["guards"] == [{"output": 1, "kind": "bool", "expected": True,
                              "source": f"test_tracer_save_format.py:{line}"}]
    assert len(doc["outputs"]) == 2  # the result, then the guarded value
    frozen = quiet_trace(branchy, eager.ones(3), guards="off")
    assert _saved(frozen, tmp_path / "off")["guards"] == []


def test_a_loaded_graph_raises_a_guard_error_naming_the_line_and_both_values(tmp_path):
    _saved(quiet_trace(branchy, eager.ones(3)), tmp_path / "g")
    loaded = tracer.load(tmp_path / "g")
    assert loaded(eager.tensor([1.0, 2.0, 3.0])).tolist() == [2.0, 4.0, 6.0]
    line = inspect.getsourcelines(branchy)[1] + 1
    with pytest.raises(tracer.GuardError, match=rf"loaded graph branchy: guard failed at test_tracer_save_format.py:"
                                                rf"{line}: bool\(tensor\) \(node %2\) was True while tracing and is "
                                                r"False on this call\. A loaded graph cannot retrace"):
        loaded(-eager.ones(3))

    def normalise(x):
        top = x.max().item()
        return x / top
    _saved(quiet_trace(normalise, eager.tensor([1.0, 4.0])), tmp_path / "n")
    loaded = tracer.load(tmp_path / "n")
    assert loaded(eager.tensor([2.0, 4.0])).tolist() == [0.5, 1.0]
    with pytest.raises(tracer.GuardError, match=r"tensor\.item\(\) \(node %1\) was 4\.0 while tracing and is 8\.0"):
        loaded(eager.tensor([1.0, 8.0]))


def test_a_mask_guard_compares_the_selected_positions_after_loading(tmp_path):
    doc = _saved(quiet_trace(lambda x: x[x > 0] * 10, eager.tensor([1.0, -1.0, 2.0])), tmp_path / "m")
    (guard,) = doc["guards"]
    assert guard["kind"] == "nonzero" and guard["expected"]["tuple"][:1] == ["array"]
    loaded = tracer.load(tmp_path / "m")
    assert loaded(eager.tensor([3.0, -5.0, 1.0])).tolist() == [30.0, 10.0]
    with pytest.raises(tracer.GuardError, match="a boolean mask"):
        loaded(eager.tensor([-3.0, 5.0, 1.0]))


def test_a_loaded_program_that_updates_state_and_has_guards_reads_updates_after_the_guard_values(tmp_path):
    w = eager.ones(3)

    def step(x):
        if x.sum() > 0:
            w.add_(x)
        return x * w

    _saved(quiet_trace(step, eager.ones(3)), tmp_path / "s")
    loaded = tracer.load(tmp_path / "s")
    assert loaded(eager.tensor([1.0, 2.0, 3.0])).tolist() == [2.0, 6.0, 12.0]
    assert loaded.state["w"].tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(tracer.GuardError, match="was True while tracing and is False"):
        loaded(-eager.ones(3))
    assert loaded.state["w"].tolist() == [2.0, 3.0, 4.0]  # a failed guard writes nothing back
    assert w.tolist() == [1.0, 1.0, 1.0]


def test_a_version_1_file_has_no_guards_and_still_loads(tmp_path):
    quiet_trace(lambda x: (x * 2).exp(), eager.ones(2)).save(tmp_path / "g")
    path = tmp_path / "g" / "graph.json"
    doc = json.loads(path.read_text())
    doc["version"] = 1
    del doc["guards"]
    path.write_text(json.dumps(doc))
    loaded = tracer.load(tmp_path / "g")
    assert loaded.guards == [] and loaded(eager.zeros(2)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("edit, pattern", [
    (lambda g: g.update(output=0), r"guards\[0\]: output 0 is not a guard output of the graph \(outputs 1\.\.1"),
    (lambda g: g.update(kind="pickle"), r"guards\[0\]: unknown kind 'pickle' \(known: bool, item"),
    (lambda g: g.pop("source"), r"guards\[0\]: a guard is \{\"output\", \"kind\", \"expected\", \"source\"\}"),
], ids=["not_a_guard_output", "unknown_kind", "missing_source"])
def test_a_malformed_guard_entry_is_a_format_error(tmp_path, edit, pattern):
    doc = _saved(quiet_trace(branchy, eager.ones(3)), tmp_path / "g")
    edit(doc["guards"][0])
    (tmp_path / "g" / "graph.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=pattern):
        tracer.load(tmp_path / "g")
