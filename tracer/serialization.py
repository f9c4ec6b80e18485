"""Save and load traced graphs: a versioned, documented format that never executes code when loaded.

``traced.save(path)`` writes a directory:

- ``path/graph.json``: ``{"format": "graphduel.graph", "version": 2, ...}`` with one entry per node:
  ``{"id", "op", "shape", "dtype"}`` plus, for a placeholder, ``"name"`` and ``"role"`` (input, param,
  state); for a constant, ``"array"`` (a key in the .npz); for a call, ``"args"`` and ``"params"`` and
  ``"source"``. Then ``"outputs"`` (node ids), ``"updates"`` (pairs of node ids), ``"writes"`` (names of the
  locations extra outputs were written to, e.g. ``fc1.weight.grad``), ``"result"`` (the structure of the
  function's result), ``"conversions"`` and ``"guards"``: one ``{"output", "kind", "expected", "source"}``
  per value guard (``tracer.build.ValueGuard``): the index in ``"outputs"`` of the value that left the graph
  while tracing, how it left (``bool``, ``item``, ...), the outcome a call must reproduce
  (``tracer.assumptions.outcome``, an array's bytes as their SHA-1) and the user's line. A loaded graph
  compares each after every call, before writing anything back, and raises ``GuardError`` naming the line
  when one fails (it has no Python source to retrace). Version 1 files (no control flow, no guards) load too.
- ``path/arrays.npz``: the values of param/state placeholders (key ``placeholder_<id>``) and constants
  (key ``constant_<id>``), read with ``numpy.load(allow_pickle=False)``.

Values inside ``args``/``params``/``result`` are JSON numbers, strings, booleans and null, or one-key
objects: ``{"ref": id}`` (a node), ``{"float": "inf"}``, ``{"tuple": [...]}``, ``{"list": [...]}``,
``{"dict": [[key, value], ...]}``, ``{"slice": [start, stop, step]}``, ``{"ellipsis": null}``,
``{"index_slot": n}``, ``{"dtype": "float32"}``, ``{"device": "cpu"}``, ``{"scalar": value, "dtype": name}``
(a NumPy scalar). Nothing else is accepted: an unknown primitive, a newer version, a corrupt file, or any
attempt to name a Python object raises ``FormatError``; loading never imports or calls anything named in
the file.

    >>> import eager, tracer, tempfile, os
    >>> traced = tracer.trace(lambda x: (x * 2).exp(), eager.zeros(2))
    >>> path = os.path.join(tempfile.mkdtemp(), "double_exp")
    >>> traced.save(path)
    >>> load(path)(eager.zeros(2)).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from eager.backend import DTYPES, Device, canonical_device, to_device, to_numpy
from eager.control import Results
from eager.primitives import PRIMITIVES, Aval, IndexSlot
from eager.storage import assign
from eager.tensor import Tensor
from tracer.assumptions import GuardError, outcome
from tracer.conversions import CONVERSIONS, convert
from tracer.interpret import Rule, evaluate
from tracer.ir import CONSTANT, PLACEHOLDER, Graph, GraphError, Node, map_regions, region_param
from tracer.pytree import LEAF, unflatten
from tracer.regions import Region
from tracer.signature import SignatureError

FORMAT = "graphduel.graph"
VERSION = 2  # 2: control-flow nodes (cond, while_loop, scan) with their regions; version 1 files still load
_OBJECT_TAGS = {"py/object", "py/reduce", "py/type", "py/function", "py/repr", "__class__", "__reduce__",
                "__reduce_ex__", "__import__", "pickle", "object", "module", "callable", "function", "class",
                "eval", "exec", "import", "code", "lambda", "type"}


class FormatError(ValueError):
    """A saved graph cannot be read: corrupt, from a newer version, or asking for something not allowed."""


# ---------------------------------------------------------------- values


class _Tag(NamedTuple):
    """One tagged value encoding: which values use it, their JSON body, and how a body reads back."""

    applies: Callable[[Any], bool]
    body: Callable[[Any, str], Any]                         # (value, where) -> JSON body
    read: Callable[[Any, dict, str, dict | None], Any]      # (body, the whole object, where, nodes) -> value
    extra: Callable[[Any], dict] = lambda value: {}          # further keys beside the tag (a scalar's dtype)


def _read_ref(body, obj, where, nodes):
    if nodes is None or not isinstance(body, int) or body not in nodes:
        raise FormatError(f"{where}: reference to node %{body}, which is not defined before it")
    return nodes[body]


def _read_device(body, obj, where, nodes):
    if body not in ("cpu", "cuda"):
        raise FormatError(f"{where}: unknown device {body!r}")
    return canonical_device(body)


def _read_float(body, obj, where, nodes):
    if body not in ("inf", "-inf", "nan"):
        raise FormatError(f"{where}: {{\"float\": {body!r}}} must be 'inf', '-inf' or 'nan'")
    return float(body)


def _is_scalar(value) -> bool:
    # a NumPy float is a Python float, written as a number (as it always was); other NumPy scalars keep their dtype
    return isinstance(value, np.generic) and not isinstance(value, float) and value.dtype.name in DTYPES


def _read_scalar(body, obj, where, nodes):
    dt = _dtype(obj.get("dtype"), where)
    value = decode(body, where)
    if not isinstance(value, (bool, int, float)):
        raise FormatError(f"{where}: a scalar's value must be a number, got {body!r:.60}")
    return dt.type(value)


def _dtype_body(value: np.dtype, where: str) -> str:
    if value.name not in DTYPES:
        raise FormatError(f"{where}: dtype {value} cannot be saved (supported: {', '.join(DTYPES)})")
    return value.name


def _read_index_slot(body, obj, where, nodes):
    if type(body) is not int or body < 0:
        raise FormatError(f"{where}: index_slot must be a non-negative int, got {body!r}")
    return IndexSlot(body)


def _read_slice(body, obj, where, nodes):
    parts = _list(body, where)
    if len(parts) != 3 or not all(p is None or type(p) is int for p in parts):
        raise FormatError(f"{where}: a slice is [start, stop, step] of ints or nulls, got {body!r}")
    return slice(*parts)


def _items(values, where: str) -> list:
    return [encode(v, where) for v in values]


# every tagged encoding, in the order ``encode`` tries them (an IndexSlot is a tuple, a Device a string); values
# no tag applies to are plain JSON: None, booleans, strings, ints and finite floats
_TAGS: dict[str, _Tag] = {
    "ref": _Tag(lambda v: isinstance(v, Node), lambda v, where: v.id, _read_ref),
    "device": _Tag(lambda v: isinstance(v, Device), lambda v, where: str(v), _read_device),
    "float": _Tag(lambda v: isinstance(v, float) and not math.isfinite(v), lambda v, where: str(v), _read_float),
    "scalar": _Tag(_is_scalar, lambda v, where: encode(v.item(), where), _read_scalar,
                   extra=lambda v: {"dtype": v.dtype.name}),
    "dtype": _Tag(lambda v: isinstance(v, np.dtype), _dtype_body, lambda body, obj, where, nodes: _dtype(body, where)),
    "index_slot": _Tag(lambda v: isinstance(v, IndexSlot), lambda v, where: v.position, _read_index_slot),
    "slice": _Tag(lambda v: isinstance(v, slice), lambda v, where: _items((v.start, v.stop, v.step), where),
                  _read_slice),
    "ellipsis": _Tag(lambda v: v is Ellipsis, lambda v, where: None, lambda body, obj, where, nodes: Ellipsis),
    "tuple": _Tag(lambda v: type(v) is tuple or (isinstance(v, tuple) and hasattr(v, "_fields")), _items,
                  lambda body, obj, where, nodes: tuple(decode(v, where, nodes) for v in _list(body, where))),
    "list": _Tag(lambda v: type(v) is list, _items,
                 lambda body, obj, where, nodes: [decode(v, where, nodes) for v in _list(body, where)]),
    "dict": _Tag(lambda v: type(v) is dict,
                 lambda v, where: [[encode(k, where), encode(x, where)] for k, x in v.items()],
                 lambda body, obj, where, nodes: {decode(k, where, nodes): decode(v, where, nodes)
                                                  for k, v in _list(body, where)}),
}


def encode(value, where: str):
    """JSON for a static value (see module docstring); ``where`` names the node for errors."""
    for tag, t in _TAGS.items():
        if t.applies(value):
            return {tag: t.body(value, where), **t.extra(value)}
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return int(value)
    raise FormatError(f"{where}: a {type(value).__name__} ({value!r:.60}) cannot be saved; a saved graph holds "
                      "only numbers, strings, tuples, slices, dtypes and arrays.")


def decode(obj, where: str, nodes: dict[int, Node] | None = None):
    """The value for JSON written by ``encode``; anything else is a ``FormatError``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        raise FormatError(f"{where}: bare JSON list {obj!r:.60}; lists are written as {{\"list\": [...]}}")
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: unexpected JSON value {obj!r:.60}")
    keys = set(obj) - ({"dtype"} if "scalar" in obj else set())
    if len(keys) != 1:
        _refuse_objects(obj, where)
        raise FormatError(f"{where}: a value must be one tagged object, got keys {sorted(obj)}")
    (tag,) = keys
    if tag not in _TAGS:
        _refuse_objects(obj, where)
        raise FormatError(f"{where}: unknown value encoding {tag!r} (known: {', '.join(sorted(_TAGS))})")
    body = obj[tag]
    try:
        return _TAGS[tag].read(body, obj, where, nodes)
    except FormatError:
        raise
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: malformed {tag!r} value {body!r:.60}: {e}") from None


def _refuse_objects(obj: dict, where: str) -> None:
    bad = [k for k in obj if str(k).lower() in _OBJECT_TAGS or str(k).startswith(("py/", "__"))]
    if bad:
        raise FormatError(f"{where}: the file tries to reference a Python object ({bad[0]!r}: {obj[bad[0]]!r:.60}). "
                          "Refused: a saved graph holds only data, and loading never imports or calls anything. "
                          "Do not load files from untrusted sources expecting code to run.")


def _list(body, where):
    if not isinstance(body, list):
        raise FormatError(f"{where}: expected a JSON list, got {body!r:.60}")
    return body


def _dtype(name, where) -> np.dtype:
    if name not in DTYPES:
        raise FormatError(f"{where}: unsupported dtype {name!r} (supported: {', '.join(DTYPES)})")
    return DTYPES[name]


def _encode_spec(spec, conversions_iter, where="result"):
    if spec == LEAF:
        return "T"
    kind = spec[0]
    if kind == "const":
        return {"const": encode(spec[1], where)}
    if kind in ("tuple", "list", "namedtuple"):
        children = spec[2] if kind == "namedtuple" else spec[1]
        return {"tuple" if kind != "list" else "list": [_encode_spec(s, conversions_iter, where) for s in children]}
    if kind == "dict":
        return {"dict": [[encode(k, where), _encode_spec(s, conversions_iter, where)] for k, s in
                         zip(spec[1], spec[2])]}
    raise FormatError(f"{where}: cannot save result structure {kind!r}")


def _decode_spec(obj, where="result"):
    if obj == "T":
        return LEAF
    if not isinstance(obj, dict) or len(obj) != 1:
        raise FormatError(f"{where}: malformed result structure {obj!r:.60}")
    (tag, body), = obj.items()
    if tag == "const":
        return ("const", decode(body, where))
    if tag in ("tuple", "list"):
        return (tag, tuple(_decode_spec(s, where) for s in _list(body, where)))
    if tag == "dict":
        pairs = _list(body, where)
        return ("dict", tuple(decode(k, where) for k, _ in pairs), tuple(_decode_spec(s, where) for _, s in pairs))
    _refuse_objects(obj, where)
    raise FormatError(f"{where}: unknown result structure tag {tag!r}")


# ---------------------------------------------------------------- save


def save(traced, path):
    """Write the program a call would run now (latest signature, current state layout), its state and its
    guards; returns the ``tracer.traced.Entry`` written."""
    entry = _current_entry(traced)
    graph, plan = entry.graph, entry.plan
    readers = dict(zip((n.id for n in graph.placeholders if n.role != "input"), plan.readers))
    rule = _SaveRule()
    evaluate(graph, [readers.get(n.id) for n in graph.placeholders], rule)
    doc = {
        "format": FORMAT, "version": VERSION, "name": traced.name, "signature": traced.signature,
        "nodes": rule.nodes,
        "outputs": [n.id for n in graph.outputs],
        "updates": [[p.id, v.id] for p, v in graph.updates],
        "writes": [s.name for s in plan.extra_slots],
        "result": _encode_spec(plan.out_spec, iter(plan.conversions)),
        "conversions": list(plan.conversions),
        "guards": [{"output": g.output, "kind": g.kind, "expected": encode(_comparable(g.expected), "guards"),
                    "source": g.source} for g in entry.value_guards],
    }
    for a in rule.arrays.values():
        if a.dtype.name not in DTYPES:
            raise FormatError(f"save: array of dtype {a.dtype} cannot be saved")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "graph.json"), "w") as f:
        f.write(_dumps(doc))
    np.savez(os.path.join(path, "arrays.npz"), **rule.arrays)
    return entry


def _comparable(expected):
    """An outcome as saved and compared on load: a small array's bytes (``outcome`` keeps them) as their SHA-1,
    as a larger one's are, so that every outcome is JSON."""
    if type(expected) is tuple and expected[:1] == ("array",) and isinstance(expected[3], bytes):
        return expected[:3] + (hashlib.sha1(expected[3]).hexdigest(),)
    return expected


class _SaveRule(Rule):
    """A node's value is its JSON reference (``{"ref": id}``); each node appends its entry to ``nodes``, and
    the arrays of param/state placeholders (fed their reader slots) and of constants go into ``arrays``."""

    def __init__(self, arrays: dict | None = None, prefix: str = ""):
        self.nodes: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {} if arrays is None else arrays
        self.prefix = prefix  # a region's constants are keyed by the path to it: constant_n4.branches.1/3

    def placeholder(self, n: Node, slot) -> dict:
        if n.role != "input":
            t = slot.get()
            if not isinstance(t, Tensor):
                raise FormatError(f"save: {n.name} holds no tensor now ({t!r:.40}); call the traced function "
                                  "once before saving.")
            self.arrays[f"placeholder_{n.id}"] = to_numpy(t._data)
        return self._entry(n, name=n.name, role=n.role)

    def constant(self, n: Node) -> dict:
        key = f"constant_{self.prefix}{n.id}"
        self.arrays[key] = to_numpy(n.value)
        return self._entry(n, array=key)

    def call(self, n: Node, args: list) -> dict:
        where = _where(n)
        return self._entry(n, args=[v if isinstance(a, Node) else encode(a, where) for a, v in zip(n.args, args)],
                           params={k: self._param(n, k, v) for k, v in n.params.items()})

    def _param(self, n: Node, key: str, value):
        if not region_param(value):
            return encode(value, f"{_where(n)} param {key!r}")
        entries = map_regions(value, lambda region, i: self._region(
            region, f"{self.prefix}n{n.id}.{key}{'' if i is None else f'.{i}'}/"))
        return {"tuple": list(entries)} if isinstance(entries, tuple) else entries

    def _region(self, region: Region, prefix: str) -> dict:
        """A region as a nested graph entry (its constants in the same arrays.npz, keyed by ``prefix``)."""
        rule = _SaveRule(self.arrays, prefix)
        evaluate(region.graph, [None] * len(region.graph.placeholders), rule)
        return {"region": {"label": region.label, "nodes": rule.nodes, "outputs": [o.id for o in region.graph.outputs]}}

    def _entry(self, n: Node, **fields) -> dict:
        if isinstance(n.aval, Results):  # a control-flow node: one (shape, dtype) per result
            types: dict[str, Any] = {"results": [[list(a.shape), encode(a.dtype, _where(n))["dtype"]] for a in n.aval]}
        else:
            types = {"shape": list(n.shape), "dtype": encode(n.dtype, _where(n))["dtype"]}
        item: dict[str, Any] = {"id": n.id, "op": n.op, **types, **fields}
        if n.source:
            item["source"] = n.source
        self.nodes.append(item)
        return encode(n, _where(n))


def _where(n: Node) -> str:
    return f"node {n.ref} ({n.op})"


def _dumps(doc: dict) -> str:
    """Readable JSON: one node per line."""
    head = {k: v for k, v in doc.items() if k != "nodes"}
    nodes = ",\n  ".join(json.dumps(n, allow_nan=False) for n in doc["nodes"])
    body = ",\n ".join(f"{json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in head.items())
    return "{\n " + body + ",\n \"nodes\": [\n  " + nodes + "\n ]\n}\n"


def _current_entry(traced):
    latest = traced._latest
    for e in traced._cache.get(latest.key, ()):
        if e.guard_ok() and all(isinstance(slot.get(), Tensor) for slot in e.plan.readers):
            return e
    return latest


# ---------------------------------------------------------------- load


def load(path, device=None, lower=None) -> LoadedGraph:
    """Read a graph written by ``save``; the result runs without the original Python source."""
    graph_file = os.path.join(path, "graph.json")
    array_file = os.path.join(path, "arrays.npz")
    if not os.path.isfile(graph_file):
        raise FormatError(f"load: {path!r} holds no graph.json; pass the directory written by traced.save(path)")
    try:
        with open(graph_file, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"load: {graph_file} is corrupt (not valid JSON: {e}); save the traced function again "
                          "with traced.save(path)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FormatError(f"load: {graph_file} is not a graphduel graph (format {_get(doc, 'format')!r}, expected "
                          f"{FORMAT!r})")
    version = doc.get("version")
    if type(version) is not int:
        raise FormatError(f"load: {graph_file} has no valid format version ({version!r})")
    if version > VERSION:
        raise FormatError(f"load: {graph_file} was written by a newer graphduel (format version {version}); this "
                          f"version reads format versions up to {VERSION}. Upgrade graphduel to load it.")
    try:
        with np.load(array_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FormatError(f"load: {array_file} is missing; a saved graph is graph.json plus arrays.npz") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise FormatError(f"load: {array_file} is corrupt or holds objects ({e}); save the traced function again "
                          "with traced.save(path)") from None
    graph, values = _read_graph(doc, arrays, graph_file)
    return LoadedGraph(graph, values, doc, device=device, lower=lower)


def _get(doc, key):
    return doc.get(key) if isinstance(doc, dict) else None


def _read_graph(doc: dict, arrays: dict, graph_file: str) -> tuple[Graph, dict[int, np.ndarray]]:
    g, values, by_id = _read_nodes(doc, arrays, graph_file)
    try:
        g.updates.extend((by_id[p], by_id[v]) for p, v in _list(doc.get("updates", []), "updates"))
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"load: {graph_file} is corrupt: updates name unknown nodes ({e})") from None
    try:
        g.validate()
    except GraphError as e:
        raise FormatError(f"load: {graph_file} holds an inconsistent graph: {e}") from None
    return g, values


def _read_nodes(doc: dict, arrays: dict, graph_file: str) -> tuple[Graph, dict[int, np.ndarray], dict[int, Node]]:
    """The nodes and outputs of a graph entry (the top level or a region's)."""
    g = Graph()
    by_id: dict[int, Node] = {}
    values: dict[int, np.ndarray] = {}
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise FormatError(f"load: {graph_file} is corrupt: 'nodes' must be a list")
    for item in nodes:
        if not isinstance(item, dict):
            raise FormatError(f"load: {graph_file} is corrupt: node entry {item!r:.60} is not an object")
        node = _read_node(item, by_id, arrays, values)
        by_id[node.id] = node
        g._add(node)
    try:
        g.outputs.extend(by_id[i] for i in _list(doc.get("outputs"), "outputs"))
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"load: {graph_file} is corrupt: outputs name unknown nodes ({e})") from None
    return g, values, by_id


def _read_node(item: dict, by_id: dict[int, Node], arrays: dict, values: dict[int, np.ndarray]) -> Node:
    """One node entry; a param/state placeholder's array goes into ``values``."""
    _refuse_objects(item, "node")
    nid, op = item.get("id"), item.get("op")
    where = f"node %{nid} ({op})"
    if type(nid) is not int or nid in by_id:
        raise FormatError(f"load: {where}: missing, non-integer or duplicate id")
    if not isinstance(op, str):
        raise FormatError(f"load: {where}: missing op name")
    if "results" in item:  # a control-flow node
        aval = Results(_aval(shape, dtype, where) for shape, dtype in _list(item["results"], f"load: {where} results"))
    else:
        aval = _aval(item.get("shape"), item.get("dtype"), where)
    source = item.get("source")
    source = source if isinstance(source, str) else None
    if op == PLACEHOLDER:
        role = item.get("role")
        if role not in ("input", "param", "state") or not isinstance(item.get("name"), str):
            raise FormatError(f"load: {where}: a placeholder needs a name and a role (input/param/state)")
        if role != "input":
            values[nid] = _array(arrays, f"placeholder_{nid}", aval, where)
        return Node(nid, PLACEHOLDER, aval=aval, name=item["name"], role=role)
    if op == CONSTANT:
        return Node(nid, CONSTANT, aval=aval, source=source, value=_array(arrays, item.get("array"), aval, where))
    if op not in PRIMITIVES:
        raise FormatError(f"load: {where}: unknown primitive {op!r}. The file was written by a graphduel with "
                          f"other primitives, or is corrupt; known primitives: {', '.join(sorted(PRIMITIVES))}.")
    args, params = item.get("args", []), item.get("params", {})
    if not isinstance(args, list) or not isinstance(params, dict):
        raise FormatError(f"load: {where}: args must be a list and params an object")
    return Node(nid, op, tuple(decode(a, f"load: {where} arg {i}", by_id) for i, a in enumerate(args)),
                {str(k): _read_param(v, f"load: {where} param {k!r}", arrays) for k, v in params.items()}, aval, source)


def _aval(shape, dtype, where: str) -> Aval:
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(f"load: {where}: shape must be a list of non-negative ints, got {shape!r:.60}")
    return Aval(tuple(shape), _dtype(dtype, f"load: {where}"))


def _read_param(obj, where: str, arrays: dict):
    """A param; a region (or a tuple of regions) is a nested graph entry, read and validated like the top level."""
    if isinstance(obj, dict) and set(obj) == {"tuple"} and isinstance(obj["tuple"], list) and obj["tuple"] and \
            all(isinstance(v, dict) and set(v) == {"region"} for v in obj["tuple"]):
        return tuple(_read_param(v, f"{where}[{i}]", arrays) for i, v in enumerate(obj["tuple"]))
    if isinstance(obj, dict) and set(obj) == {"region"}:
        body = obj["region"]
        if not isinstance(body, dict) or not isinstance(body.get("label"), str):
            raise FormatError(f"{where}: a region needs a label, nodes and outputs")
        graph, _, _ = _read_nodes(body, arrays, where)
        try:
            graph.validate()
        except GraphError as e:
            raise FormatError(f"{where}: the region holds an inconsistent graph: {e}") from None
        return Region(graph, body["label"])
    return decode(obj, where)


def _array(arrays: dict, key, aval: Aval, where: str) -> np.ndarray:
    if not isinstance(key, str) or key not in arrays:
        raise FormatError(f"load: {where}: array {key!r} is missing from arrays.npz")
    a = arrays[key]
    if tuple(a.shape) != aval.shape or a.dtype != aval.dtype:
        raise FormatError(f"load: {where}: array {key!r} is {a.dtype}{list(a.shape)}, the graph says {aval}")
    return a


class SavedGuard(NamedTuple):
    """A value guard of a loaded graph: result ``output`` must give ``expected`` (``_comparable(outcome(...))``)."""

    output: int
    kind: str
    expected: Any
    source: str


def _guards(body, graph: Graph, first: int) -> list[SavedGuard]:
    """The ``"guards"`` entries, checked: each names a guard output (past the user outputs and writes, ``first``)."""
    from tracer.traced import ESCAPE_WHAT
    out = []
    for i, item in enumerate(_list(body, "load: guards")):
        where = f"load: guards[{i}]"
        if not isinstance(item, dict) or set(item) != {"output", "kind", "expected", "source"}:
            raise FormatError(f"{where}: a guard is {{\"output\", \"kind\", \"expected\", \"source\"}}, got "
                              f"{item!r:.80}")
        output, kind, source = item["output"], item["kind"], item["source"]
        if type(output) is not int or not first <= output < len(graph.outputs):
            raise FormatError(f"{where}: output {output!r} is not a guard output of the graph (outputs {first}.."
                              f"{len(graph.outputs) - 1} follow the result and the writes)")
        if kind not in ESCAPE_WHAT or not isinstance(source, str):
            raise FormatError(f"{where}: unknown kind {kind!r} (known: {', '.join(ESCAPE_WHAT)}) or a source that "
                              f"is not a string ({source!r:.40})")
        out.append(SavedGuard(output, kind, decode(item["expected"], f"{where} expected"), source))
    return out


def _conversions(body) -> list[str | None]:
    """Per user output: None (a tensor) or one of ``tracer.conversions.CONVERSIONS``."""
    out = _list(body, "conversions")
    for c in out:
        if c is not None and c not in CONVERSIONS:
            raise FormatError(f"load: conversions: unknown conversion {c!r} (known: {', '.join(CONVERSIONS)})")
    return out


class LoadedGraph:
    """A graph read from disk, with its own parameters and state; call it with the input tensors (flattened).

    Updates are applied to ``state`` (so a loaded training step keeps training its own copy); values written
    to outside locations when traced (e.g. ``fc1.weight.grad``) land in ``written``. The saved program's value
    guards are checked after each call, before anything is written: a call on which a value the trace froze
    differs raises ``GuardError`` (a loaded graph cannot retrace).
    """

    def __init__(self, graph: Graph, values: dict[int, np.ndarray], doc: dict, device=None, lower=None):
        from tracer.executor import default_lower
        self.graph = graph
        self.name = doc.get("name") if isinstance(doc.get("name"), str) else "loaded"
        self.signature = doc.get("signature")
        self.device = canonical_device(device)
        self._inputs = graph.inputs_with_role("input")
        self._others = [n for n in graph.placeholders if n.role != "input"]
        self.state: dict[str, Tensor] = {n.name: Tensor(to_device(values[n.id], self.device)) for n in self._others}
        for n in graph.nodes:
            if n.op == CONSTANT:
                n.value = to_device(n.value, self.device)
        self.written: dict[str, Tensor] = {}
        writes = doc.get("writes", [])
        self._writes = [str(w) for w in writes] if isinstance(writes, list) else []
        self._conversions = _conversions(doc.get("conversions", []))
        self._spec = _decode_spec(doc.get("result", "T"))
        self.guards = _guards(doc.get("guards", []), graph, len(self._conversions) + len(self._writes))
        self.exe = (lower or default_lower)(graph)

    @property
    def params(self) -> dict[str, Tensor]:
        return {n.name: self.state[n.name] for n in self._others if n.role == "param"}

    @property
    def code(self) -> str:
        from tracer.codegen import python_source
        return python_source(self.graph)

    def __call__(self, *inputs: Tensor):
        if len(inputs) != len(self._inputs):
            raise TypeError(f"loaded graph {self.name} takes {len(self._inputs)} input tensor(s) "
                            f"({', '.join(n.name for n in self._inputs)}), got {len(inputs)}")
        for node, t in zip(self._inputs, inputs):
            if not isinstance(t, Tensor) or (tuple(t.shape), t.dtype) != (node.shape, node.dtype):
                got = f"{t.dtype}{list(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise SignatureError(f"loaded graph {self.name}: input {node.name} must be {node.aval}, got {got}; a "
                                     "loaded graph cannot retrace (it has no Python source).")
        arrays = [t._data for t in inputs] + [self.state[n.name]._data for n in self._others]
        results = self.exe.run(arrays)
        self._check_guards(results)
        n_user = len(self._conversions)
        k = n_user + len(self._writes)
        for name, arr in zip(self._writes, results[n_user:k]):
            self.written[name] = Tensor(arr)
        # results: the user outputs, the writes and the guard values (graph.outputs), then the updates' new values
        for (p, _), arr in zip(self.graph.updates, results[len(self.graph.outputs):]):
            if p.role == "input":
                t = inputs[self._inputs.index(p)]
                assign(t, arr)
            else:
                assign(self.state[p.name], arr)
        outs = [Tensor(a) if c is None else convert(a, c) for a, c in zip(results[:n_user], self._conversions)]
        return unflatten(self._spec, outs)

    def _check_guards(self, results: list) -> None:
        from tracer.traced import guard_failure_message
        for g in self.guards:
            seen = _comparable(outcome(g.kind, results[g.output]))
            if seen != g.expected:
                message = guard_failure_message(g.source, g.kind, self.graph.outputs[g.output].ref, g.expected, seen)
                raise GuardError(f"loaded graph {self.name}: {message}. A loaded graph cannot retrace (it has no "
                                 "Python source): trace the function again and call that for these inputs, or keep "
                                 "the decision in the graph (eager.cond, or tensor ops instead of Python control "
                                 "flow) before saving.")

    def __repr__(self) -> str:
        return f"<LoadedGraph {self.name} {self.signature}: {len(self.graph.calls)} calls>"
