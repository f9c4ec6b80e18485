"""ONNX export: the traced graph written as an ONNX model, for ONNX Runtime and every tool that reads ONNX.

``traced.export_onnx(path)`` (``export(traced)`` without the file) writes the program a call would run now, as
``save`` does, and returns an ``OnnxProgram``: its ``model`` (an ``onnx.ModelProto``), and calls that run it in
ONNX Runtime on the CPU. ``to_onnx(graph, values)`` converts a bare ``Graph``. In the model:

- ``input`` placeholders become graph inputs (static shapes, the traced signature's), named as in the IR;
- ``param`` and ``state`` placeholders become initializers holding their current values, named by their
  state_dict names; one the program updates (a buffer such as a call counter) is also a graph input, with its
  initializer as the default, and its new value is the output ``NAME.new``: feed it back as ``NAME`` on the
  next call to run like the traced step (``OnnxProgram`` does; the model's metadata ``graphduel.updates``
  lists the pairs);
- the function's outputs are ``out0``, ``out1``, ... (flattened as the tracer flattens them);
- every primitive maps to ONNX operators (one table: ``LOWERINGS``), and ``cond``, ``while_loop`` and ``scan``
  to ``If``, ``Loop`` and ``Scan`` with their regions as subgraphs (captures read from the outer scope); a
  primitive without a mapping (``UNSUPPORTED`` says why) stops the export with ``UnsupportedOpError`` naming
  it, its node and the user's source line.

The model is checked by ``onnx.checker`` (with strict shape inference) before it is returned. The exporter is
one more ``Rule`` of ``tracer.interpret.evaluate``: a node's value is the name of its ONNX value. Value guards
and Python state a trace froze cannot be checked by ONNX Runtime: the model runs the program traced for what
was seen, and the export says so with a ``TracerWarning`` naming the lines (as ``torch.onnx`` exports a
trace). Needs the ``onnx`` extra (``pip install graphduel[onnx]``: onnx and onnxruntime).

Which nodes of a graph would stop an export can be asked without onnx installed:

    >>> import eager, tracer
    >>> traced = tracer.trace(lambda x: (x + eager.rand(3)).exp(), eager.zeros(3))
    >>> unsupported(traced.graph)  # doctest: +ELLIPSIS
    ["%1 = uniform(...) at <doctest ...>:1: uniform draws from graphduel's generator; ..."]
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from eager.backend import int64, to_numpy
from eager.primitives import PRIMITIVES, Aval, IndexSlot, format_key
from tracer.interpret import Rule, evaluate
from tracer.ir import Graph, Node, regions_of

DEFAULT_OPSET = 21
MIN_OPSET = 18  # ReduceSum/ReduceMax take axes as an input, BitwiseAnd & co., ScatterElements reduction="add"
EXTRA = "pip install graphduel[onnx]"
_INT64_MIN = -(2 ** 63)


class UnsupportedOpError(NotImplementedError):
    """A node of the graph has no ONNX lowering; the message names the primitive, the node and its line."""


def _module(name: str):
    """onnx or onnxruntime, or an ImportError saying which extra installs it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise ImportError(f"ONNX export needs {name}, which is not installed; {EXTRA}") from None


# ---------------------------------------------------------------- building ONNX graphs


class _Names:
    """Value names, unique across the model and all its subgraphs (ONNX values are SSA across scopes)."""

    def __init__(self):
        self.used: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.used:
            k += 1
            name = f"{hint}_{k}"
        self.used.add(name)
        return name


def _contiguous(value) -> np.ndarray:
    """A C-contiguous array of the same shape (``np.ascontiguousarray`` would make a 0-d array 1-d)."""
    a = np.asarray(value)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _value_info(name: str, aval: Aval):
    from onnx import helper
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)),
                                         list(aval.shape))


class _Scope:
    """One ONNX graph being built: the model's, or the subgraph of an If, Loop or Scan. Constants of every scope
    are initializers of the model's graph (subgraphs read them from the outer scope), deduplicated."""

    def __init__(self, names: _Names, root: _Scope | None = None):
        self.names = names
        self.root = root or self
        self.nodes: list = []
        self.inputs: list = []
        self.initializers: list = []
        self._consts: dict[tuple, str] = {}
        self.source: str | None = None  # the user's line of the IR node being lowered (each ONNX node's doc)

    def child(self) -> _Scope:
        return _Scope(self.names, self.root)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, hint: str | None = None, **attrs):
        """Append one ONNX node; returns its output name (a list of names when ``n_out`` > 1)."""
        from onnx import helper
        outs = [self.names.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], doc_string=self.source,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, hint: str = "const") -> str:
        from onnx import numpy_helper
        a = _contiguous(value)
        key = (a.dtype.str, a.shape, hashlib.sha1(a.tobytes()).hexdigest())
        root = self.root
        if key not in root._consts:
            name = self.names.fresh(hint)
            root.initializers.append(numpy_helper.from_array(a, name))
            root._consts[key] = name
        return root._consts[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), "ints")

    def input(self, hint: str, aval: Aval) -> str:
        name = self.names.fresh(hint)
        self.inputs.append(_value_info(name, aval))
        return name

    def subgraph(self, label: str, outputs: list[str], avals) -> object:
        """This scope as the body of a control-flow node: each output through an Identity of its own (a body
        may return one of its inputs, an outer value, or one value twice; its outputs must be its own)."""
        from onnx import helper
        outs = [_value_info(self.op("Identity", [o], hint=f"{label}_out"), a) for o, a in zip(outputs, avals)]
        return helper.make_graph(self.nodes, label, self.inputs, outs)


class _OnnxRule(Rule):
    """A node's value is the name of its ONNX value (a tuple of names for a control-flow node); each call
    appends its ONNX nodes to the scope."""

    def __init__(self, scope: _Scope):
        self.scope = scope

    def constant(self, node: Node) -> str:
        return self.scope.const(to_numpy(node.value), f"const{node.id}")

    def call(self, node: Node, args: list):
        lower = LOWERINGS.get(node.op)
        if lower is None:
            raise UnsupportedOpError(f"ONNX export: {_describe_unsupported(node)}")
        self.scope.source = node.source
        return lower(self, node, _operands(self.scope, node, args))

    def region(self, region, feeds: list[str], scope: _Scope) -> list[str]:
        """A region's outputs lowered into ``scope``, its placeholders fed ``feeds`` (names in reach there)."""
        return evaluate(region.graph, list(feeds), _OnnxRule(scope))


def _describe_unsupported(node: Node) -> str:
    why = UNSUPPORTED.get(node.op, f"{node.op} has no ONNX lowering in tracer.onnx_export.LOWERINGS")
    at = f" at {node.source}" if node.source else ""
    return f"{node.ref} = {node.op}(...){at}: {why}"


def _operands(scope: _Scope, node: Node, args: list) -> list:
    """Python scalar operands (of elementwise ops, floor_divide, remainder) as constants of the dtype they take:
    weakly typed, the tensor operand's, as the shape rules say."""
    if all(isinstance(a, Node) for a in node.args):
        return args
    typed = [a for a in (node.args[1:] if node.op == "where" else node.args) if isinstance(a, Node)]
    dtype = typed[0].dtype if typed else node.dtype
    return [v if isinstance(a, Node) else scope.const(np.asarray(a, dtype=dtype), "scalar")
            for a, v in zip(node.args, args)]


def unsupported(graph: Graph) -> list[str]:
    """Every node (regions included) that stops an ONNX export, with its line and why; [] if it exports."""
    out = []
    for n in graph.calls:
        if n.op not in LOWERINGS:
            out.append(_describe_unsupported(n))
        for region in regions_of(n):
            out += unsupported(region.graph)
    return out


# ---------------------------------------------------------------- the lowerings, one per primitive

_SIMPLE = {"neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "tanh": "Tanh", "sin": "Sin", "cos": "Cos",
           "abs": "Abs", "relu": "Relu", "sign": "Sign", "sigmoid": "Sigmoid", "erf": "Erf",
           "stop_gradient": "Identity", "copy": "Identity", "to_device": "Identity",
           "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min",
           "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
           "where": "Where", "matmul": "MatMul", "concatenate": "Concat"}
# on bool tensors the logical operators, on integers the bitwise ones (as PyTorch's &, |, ^, ~)
_BITWISE = {"bitwise_and": ("And", "BitwiseAnd"), "bitwise_or": ("Or", "BitwiseOr"),
            "bitwise_xor": ("Xor", "BitwiseXor"), "bitwise_not": ("Not", "BitwiseNot")}


def _simple(rule: _OnnxRule, node: Node, args: list) -> str:
    attrs = {"axis": node.params["axis"]} if node.op == "concatenate" else {}
    return rule.scope.op(_SIMPLE[node.op], args, hint=f"{node.op}{node.id}", **attrs)


def _bitwise(rule, node, args):
    logical, bitwise = _BITWISE[node.op]
    return rule.scope.op(logical if node.dtype == np.bool_ else bitwise, args, hint=f"{node.op}{node.id}")


def _ne(rule, node, args):
    return rule.scope.op("Not", [rule.scope.op("Equal", args)], hint=f"ne{node.id}")


def _erfc(rule, node, args):
    s = rule.scope
    return s.op("Sub", [s.const(np.ones((), node.dtype)), s.op("Erf", args)], hint=f"erfc{node.id}")


def _cast(rule, node, args):
    from onnx import helper
    return rule.scope.op("Cast", args, hint=f"cast{node.id}", to=helper.np_dtype_to_tensor_dtype(node.dtype))


def _reduce(rule, node, args):
    s, (x,) = rule.scope, args
    source = node.args[0]
    if node.op == "sum" and source.dtype != node.dtype:  # bool/int sums are int64, as in NumPy and PyTorch
        x = s.op("Cast", [x], to=_onnx_type(node.dtype))
    ndim = len(source.shape)
    axes = [a % ndim for a in node.params["axes"]] if ndim else []
    # an empty axes list reduces nothing (our rule, a 0-d tensor's), not everything (ONNX's default)
    return s.op("ReduceSum" if node.op == "sum" else "ReduceMax", [x, s.ints(axes)], hint=f"{node.op}{node.id}",
                keepdims=int(node.params["keepdims"]), noop_with_empty_axes=1)


def _onnx_type(dtype) -> int:
    from onnx import helper
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _argmax(rule, node, args):
    s, (x,) = rule.scope, args
    axis, keepdims = node.params["axis"], node.params["keepdims"]
    if axis is None:  # over the flattened tensor
        flat = s.op("ArgMax", [s.op("Reshape", [x, s.ints([-1])])], axis=0, keepdims=0)
        return s.op("Reshape", [flat, s.ints(node.shape)], hint=f"argmax{node.id}")
    return s.op("ArgMax", [x], hint=f"argmax{node.id}", axis=axis, keepdims=int(keepdims), select_last_index=0)


def _reshape(rule, node, args):
    s = rule.scope
    return s.op("Reshape", [args[0], s.ints(node.params["shape"])], hint=f"reshape{node.id}", allowzero=1)


def _broadcast_to(rule, node, args):
    return rule.scope.op("Expand", [args[0], rule.scope.ints(node.params["shape"])], hint=f"expand{node.id}")


def _permute(rule, node, args):
    return rule.scope.op("Transpose", args, hint=f"permute{node.id}", perm=list(node.params["axes"]))


def _getitem(rule, node, args):
    return _index(rule.scope, node, args[0], node.args[0].shape, args[1:], node.args[1:], node.params["key"])


def _index(s: _Scope, node: Node, x: str, shape: tuple, idx: list[str], idx_nodes, key: tuple) -> str:
    """``x[key]`` with NumPy's semantics: one Slice for the slices; then, without index tensors, Squeeze for the
    ints; with them (ints beside one count as 0-d index tensors, as in NumPy) the advanced part: a lone index
    tensor is one Gather on its dim, several are combined into one flat position into their dims (moved first
    and merged), one Gather, and the result dims moved where NumPy puts them (in place when the advanced
    indices are adjacent in the key, first otherwise); last, Unsqueeze for the Nones. Boolean index tensors are
    refused (a trace records a mask as integer index tensors already)."""
    bad = [k for k in key if isinstance(k, IndexSlot) and idx_nodes[k.position].dtype.kind not in "iu"]
    if bad:
        raise UnsupportedOpError(f"ONNX export: {node.ref} = {node.op}{format_key(key)} at {node.source}: index "
                                 f"tensor {bad[0].position} is {idx_nodes[bad[0].position].aval}, not an integer "
                                 "tensor; index with integer positions (mask.nonzero()).")
    items = _full_key(key, len(shape))  # (key item, the input dim it reads or None for a None)
    advanced = any(isinstance(k, IndexSlot) for k, _ in items)
    sliced = list(shape)
    starts, ends, steps, axes, squeeze = [], [], [], [], []
    for k, d in items:
        if isinstance(k, slice) and k != slice(None):
            start, stop, step = k.indices(shape[d])
            sliced[d] = len(range(start, stop, step))
            if step < 0 and stop < 0:  # to the beginning: ONNX reads a negative end from the back
                stop = _INT64_MIN
            starts, ends, steps, axes = starts + [start], ends + [stop], steps + [step], axes + [d]
        elif _is_int(k) and not advanced:
            i = int(k) % shape[d]
            starts, ends, steps, axes = starts + [i], ends + [i + 1], steps + [1], axes + [d]
            squeeze.append(d)
    if axes:
        x = s.op("Slice", [x, s.ints(starts), s.ints(ends), s.ints(axes), s.ints(steps)])
    if squeeze:
        x = s.op("Squeeze", [x, s.ints(squeeze)])
    x, layout = _advanced(s, x, shape, sliced, items, idx, idx_nodes) if advanced else \
        (x, [("dim", sliced[d]) if d is not None else ("new", 1) for k, d in items if not _is_int(k)])
    region = node.shape if node.op == "getitem" else node.args[1].shape  # index_put/index_add: the values'
    if tuple(n for _, n in layout) != tuple(region):
        raise UnsupportedOpError(f"ONNX export: {node.ref} = {node.op}{format_key(key)} at {node.source}: the "
                                 f"lowering gives shape {[n for _, n in layout]}, the graph records {list(region)}.")
    new = [i for i, (what, _) in enumerate(layout) if what == "new"]
    if new:
        x = s.op("Unsqueeze", [x, s.ints(new)])
    return x  # a key that selects everything lowers to no node: the value is its input's


def _full_key(key: tuple, ndim: int) -> list[tuple]:
    """The key with its Ellipsis (or the trailing dims) as full slices, each item paired with its input dim."""
    consumed = sum(1 for k in key if k is not None and k is not Ellipsis)
    full: list = []
    for k in key:
        full += [slice(None)] * (ndim - consumed) if k is Ellipsis else [k]
    full += [slice(None)] * (ndim - sum(1 for k in full if k is not None))
    items, d = [], 0
    for k in full:
        items.append((k, None if k is None else d))
        d += k is not None
    return items


def _advanced(s: _Scope, x: str, shape, sliced: list, items: list, idx: list[str], idx_nodes) -> tuple[str, list]:
    """The advanced part of ``_index`` on the sliced ``x``; returns it and the layout of the result's dims
    (``("dim", size)``, or ``("new", 1)`` where a None goes)."""
    adv = [i for i, (k, _) in enumerate(items) if isinstance(k, IndexSlot) or _is_int(k)]
    batch = np.broadcast_shapes(*[idx_nodes[k.position].shape if isinstance(k, IndexSlot) else ()
                                  for k, _ in (items[i] for i in adv)])
    adjacent = adv == list(range(adv[0], adv[-1] + 1))
    if len(adv) == 1:  # a lone index tensor: Gather on its dim puts the index's dims in place, as NumPy does
        k, d = items[adv[0]]
        x = s.op("Gather", [x, idx[k.position]], axis=d)
    else:
        dims = [items[i][1] for i in adv]
        rest = [d for d in range(len(shape)) if d not in dims]
        if dims + rest != list(range(len(shape))):
            x = s.op("Transpose", [x], perm=dims + rest)
        x = s.op("Reshape", [x, s.ints([math.prod(shape[d] for d in dims)] + [sliced[d] for d in rest])])
        x = s.op("Gather", [x, _flat_position(s, [items[i] for i in adv], shape, idx, idx_nodes)], axis=0)
        before = sum(1 for k, d in items[:adv[0]] if d is not None)  # the sliced dims NumPy keeps in front
        if adjacent and before:
            nb, nr = len(batch), len(rest)
            x = s.op("Transpose", [x], perm=list(range(nb, nb + before)) + list(range(nb)) +
                     list(range(nb + before, nb + nr)))
    layout: list = [] if adjacent else [("dim", n) for n in batch]
    for i, (k, d) in enumerate(items):
        if i == adv[0] and adjacent:
            layout += [("dim", n) for n in batch]
        elif k is None:
            layout.append(("new", 1))
        elif i not in adv:
            layout.append(("dim", sliced[d]))
    return x, layout


def _flat_position(s: _Scope, adv: list, shape, idx: list[str], idx_nodes) -> str:
    """Sum over the advanced indices of (index mod its dim's size) times the stride of that dim among them:
    the position into their dims merged into one (row-major), broadcast as NumPy broadcasts the indices."""
    total, stride = None, 1
    for k, d in reversed(adv):
        n = shape[d]
        if _is_int(k):
            term = s.const(np.asarray(int(k) % n * stride, np.int64), "position")
        else:
            i = idx[k.position]
            if idx_nodes[k.position].dtype != np.int64:
                i = s.op("Cast", [i], to=_onnx_type(np.int64))
            term = s.op("Mod", [i, s.const(np.asarray(n, np.int64), "size")])  # Python's mod: -1 -> n - 1
            if stride != 1:
                term = s.op("Mul", [term, s.const(np.asarray(stride, np.int64), "stride")])
        total = term if total is None else s.op("Add", [term, total])
        stride *= n
    return total


def _is_int(k) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, bool)


def _iota(s: _Scope, shape: tuple) -> str:
    """A constant holding each element's flat position in a C-contiguous tensor of ``shape``."""
    return s.const(np.arange(math.prod(shape), dtype=np.int64).reshape(shape), "positions")


def _index_write(rule, node, args):
    """``index_put`` / ``index_add``: the region's flat positions are the same indexing applied to the positions
    of the base (``_index`` on a constant), then one ScatterElements into the flattened base."""
    s = rule.scope
    base, values, idx = args[0], args[1], args[2:]
    shape = node.args[0].shape
    pos = _index(s, node, _iota(s, shape), shape, idx, node.args[2:], node.params["key"])
    flat = [s.op("Reshape", [v, s.ints([-1])]) for v in (base, pos, values)]
    out = s.op("ScatterElements", flat, axis=0, reduction="add" if node.op == "index_add" else "none")
    return s.op("Reshape", [out, s.ints(shape)], hint=f"{node.op}{node.id}")


def _strided_view(rule, node, args):
    """``diagonal`` / ``unfold``: a fixed selection of the input's elements: their positions are the table's own
    impl run on the positions of the input (so the lowering cannot disagree with it), one Gather."""
    s = rule.scope
    shape = node.args[0].shape
    positions = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    picked = _contiguous(PRIMITIVES[node.op].impl(np, positions, **node.params))
    flat = s.op("Reshape", [args[0], s.ints([-1])])
    return s.op("Gather", [flat, s.const(picked, "positions")], hint=f"{node.op}{node.id}", axis=0)


def _gather(rule, node, args):
    return rule.scope.op("GatherElements", args, hint=f"gather{node.id}", axis=node.params["axis"])


def _scatter(rule, node, args):
    s = rule.scope
    a, index, src = args
    index_shape, src_shape = node.args[1].shape, node.args[2].shape
    if tuple(src_shape) != tuple(index_shape):  # only src's leading corner is written, as in PyTorch
        n = len(index_shape)
        src = s.op("Slice", [src, s.ints([0] * n), s.ints(index_shape), s.ints(range(n))])
    return s.op("ScatterElements", [a, index, src], hint=f"{node.op}{node.id}", axis=node.params["axis"],
                reduction="add" if node.op == "scatter_add" else "none")


def _conv_attrs(params) -> dict:
    pads = [lo for lo, _ in params["padding"]] + [hi for _, hi in params["padding"]]
    return {"strides": list(params["stride"]), "pads": pads, "dilations": list(params["dilation"]),
            "group": params["groups"]}


def _conv(rule, node, args):
    return rule.scope.op("Conv", args, hint=f"conv{node.id}", **_conv_attrs(node.params))


def _conv_transpose(rule, node, args):
    p = node.params
    g, w = node.args[0].shape[2:], node.args[1].shape[2:]
    # the output size ConvTranspose gives without output_padding, and the extra elements PyTorch's adds
    natural = [(gi - 1) * s + (k - 1) * d + 1 - lo - hi
               for gi, k, s, d, (lo, hi) in zip(g, w, p["stride"], p["dilation"], p["padding"])]
    return rule.scope.op("ConvTranspose", args, hint=f"conv_transpose{node.id}", **_conv_attrs(p),
                         output_padding=[size - n for size, n in zip(p["size"], natural)])


def _linear(rule, node, args):
    return rule.scope.op("Gemm", args, hint=f"linear{node.id}", transB=1)


def _cross_entropy(rule, node, args):
    p = node.params
    return rule.scope.op("SoftmaxCrossEntropyLoss", args, hint=f"cross_entropy{node.id}",
                         reduction=p["reduction"], ignore_index=int(p["ignore_index"]))


def _floor_divide(rule, node, args):
    """Python's ``//``. Integers: (a - a mod b) / b, exact. Floats as NumPy computes them: the truncated
    remainder moved to the divisor's sign, then the quotient floored and rounded to the nearest integer."""
    s, (a, b) = rule.scope, args
    if node.dtype.kind in "iu":
        return s.op("Div", [s.op("Sub", [a, s.op("Mod", [a, b])]), b], hint=f"floor_divide{node.id}")
    fmod, off = _truncated_remainder(s, node, a, b)
    q = s.op("Sub", [s.op("Div", [s.op("Sub", [a, fmod]), b]), s.op("Cast", [off], to=_onnx_type(node.dtype))])
    floor = s.op("Floor", [q])
    half = s.op("Greater", [s.op("Sub", [q, floor]), s.const(np.asarray(0.5, node.dtype), "half")])
    return s.op("Add", [floor, s.op("Cast", [half], to=_onnx_type(node.dtype))], hint=f"floor_divide{node.id}")


def _remainder(rule, node, args):
    """Python's ``%`` (the divisor's sign): ONNX's Mod for integers; for floats (where ONNX allows only the
    truncated ``fmod``) the truncated remainder plus the divisor where their signs differ."""
    s, (a, b) = rule.scope, args
    if node.dtype.kind in "iu":
        return s.op("Mod", [a, b], hint=f"remainder{node.id}")
    fmod, off = _truncated_remainder(s, node, a, b)
    return s.op("Where", [off, s.op("Add", [fmod, b]), fmod], hint=f"remainder{node.id}")


def _truncated_remainder(s: _Scope, node: Node, a: str, b: str) -> tuple[str, str]:
    """C's fmod(a, b), and where it is non-zero with a sign other than b's (Python's result moves by b there)."""
    fmod = s.op("Mod", [a, b], fmod=1)
    zero = s.const(np.zeros((), node.dtype), "zero")
    signs = s.op("Xor", [s.op("Less", [fmod, zero]), s.op("Less", [b, zero])])
    return fmod, s.op("And", [s.op("Not", [s.op("Equal", [fmod, zero])]), signs])


def _rounding(rule, node, args):
    """floor, ceil, round (half to even, as ONNX's Round) and trunc (toward zero: ceil below 0, floor above);
    integer tensors pass through."""
    s, (x,) = rule.scope, args
    if node.dtype.kind != "f":
        return s.op("Identity", [x], hint=f"{node.op}{node.id}")
    if node.op != "trunc":
        return s.op(node.op.capitalize(), [x], hint=f"{node.op}{node.id}")
    below = s.op("Less", [x, s.const(np.zeros((), node.dtype), "zero")])
    return s.op("Where", [below, s.op("Ceil", [x]), s.op("Floor", [x])], hint=f"trunc{node.id}")


def _cumsum(rule, node, args):
    s, (x,) = rule.scope, args
    if node.args[0].dtype != node.dtype:  # bools and integers accumulate in int64
        x = s.op("Cast", [x], to=_onnx_type(node.dtype))
    if not node.shape:
        return s.op("Identity", [x], hint=f"cumsum{node.id}")
    axis = s.const(np.asarray(node.params["axis"] % len(node.shape), np.int64), "axis")
    return s.op("CumSum", [x, axis], hint=f"cumsum{node.id}")


def _cumprod(rule, node, args):
    """ONNX has no cumulative product in the opsets ONNX Runtime runs: a Scan along the axis carrying the running
    product (one multiply per step, in NumPy's order, so the rounding is the same)."""
    s, (x,) = rule.scope, args
    if node.args[0].dtype != node.dtype:
        x = s.op("Cast", [x], to=_onnx_type(node.dtype))
    if not node.shape:
        return s.op("Identity", [x], hint=f"cumprod{node.id}")
    axis = node.params["axis"] % len(node.shape)
    step = Aval(node.shape[:axis] + node.shape[axis + 1:], node.dtype)
    sub = s.child()
    carry, item = sub.input(f"cumprod{node.id}_carry", step), sub.input(f"cumprod{node.id}_x", step)
    product = sub.op("Mul", [carry, item])
    body = sub.subgraph(f"cumprod{node.id}_body", [product, product], [step, step])
    ones = s.const(np.ones(step.shape, node.dtype), "ones")
    return s.op("Scan", [ones, x], n_out=2, hint=f"cumprod{node.id}", body=body, num_scan_inputs=1,
                scan_input_axes=[axis], scan_output_axes=[axis])[1]


def _argsort(rule, node, args):
    """TopK over the whole axis: ONNX breaks ties by the lower index, which is the stable order both ways."""
    s, (x,) = rule.scope, args
    axis = node.params["axis"] % len(node.shape)
    k = s.ints([node.shape[axis]])
    return s.op("TopK", [x, k], n_out=2, hint=f"argsort{node.id}", axis=axis,
                largest=int(node.params["descending"]), sorted=1)[1]


def _einsum(rule, node, args):
    return rule.scope.op("Einsum", args, hint=f"einsum{node.id}", equation=node.params["equation"])


def _full(rule, node, args):
    from onnx import numpy_helper
    s, p = rule.scope, node.params
    value = numpy_helper.from_array(np.full((1,), p["fill_value"], dtype=p["dtype"]))
    return s.op("ConstantOfShape", [s.ints(p["shape"])], hint=f"full{node.id}", value=value)


# ---------------------------------------------------------------- control flow: If, Loop, Scan


def _cond(rule, node, args):
    """``If``: each branch a subgraph reading the operands and captures from the outer scope by name."""
    pred, operands = args[0], args[1:]
    bodies = {}
    for attr, region in zip(("then_branch", "else_branch"), node.params["branches"]):
        sub = rule.scope.child()
        outs = rule.region(region, operands, sub)
        bodies[attr] = sub.subgraph(f"cond{node.id}_{region.label}", outs, region.out_avals)
    return _as_tuple(rule.scope.op("If", [pred], n_out=len(node.aval), hint=f"cond{node.id}", **bodies))


def _while_loop(rule, node, args):
    """``Loop`` with no trip limit: the condition on the initial carry in the outer scope, and a body that runs
    ``body_region`` and then ``cond_region`` on the new carry (the condition of the next trip)."""
    p = node.params
    n = p["n_carry"]
    carry, consts = args[:n], args[n:]
    first = rule.region(p["cond_region"], carry + consts, rule.scope)[0]
    sub = rule.scope.child()
    sub.input(f"while{node.id}_trip", Aval((), int64))
    sub.input(f"while{node.id}_cond_in", Aval((), np.dtype(bool)))
    carry_in = [sub.input(f"while{node.id}_carry{i}", a.aval) for i, a in enumerate(node.args[:n])]
    new = rule.region(p["body_region"], carry_in + consts, sub)
    again = rule.region(p["cond_region"], new + consts, sub)[0]
    body = sub.subgraph(f"while{node.id}_body", [again] + new,
                        [Aval((), np.dtype(bool))] + list(p["body_region"].out_avals))
    return _as_tuple(rule.scope.op("Loop", ["", first] + carry, n_out=n, hint=f"while_loop{node.id}", body=body))


def _scan(rule, node, args):
    """``Scan``: carries are its state, xs its scan inputs along ``dim`` (backwards when ``reverse``), ys its
    scan outputs stacked along ``dim`` in the order of the xs they came from (prepended when ``reverse``)."""
    p = node.params
    n_carry, n_xs, dim, reverse = p["n_carry"], p["n_xs"], p["dim"], p["reverse"]
    if n_xs == 0 or p["length"] == 0:
        raise UnsupportedOpError(f"ONNX export: {node.ref} = scan at {node.source}: ONNX Scan takes its length from "
                                 "its inputs and needs at least one non-empty xs tensor.")
    carry, xs, consts = args[:n_carry], args[n_carry:n_carry + n_xs], args[n_carry + n_xs:]
    body = p["body"]
    sub = rule.scope.child()
    step_in = [sub.input(f"scan{node.id}_in{i}", ph.aval)
               for i, ph in enumerate(body.graph.placeholders[:n_carry + n_xs])]
    outs = rule.region(body, step_in + consts, sub)
    graph = sub.subgraph(f"scan{node.id}_body", outs, body.out_avals)
    ys = body.out_avals[n_carry:]
    in_axes = [dim % len(x.shape) for x in node.args[n_carry:n_carry + n_xs]]
    out_axes = [dim if dim >= 0 else dim + len(y.shape) + 1 for y in ys]
    return _as_tuple(rule.scope.op(
        "Scan", carry + xs, n_out=len(outs), hint=f"scan{node.id}", body=graph, num_scan_inputs=n_xs,
        scan_input_axes=in_axes, scan_input_directions=[int(reverse)] * n_xs, scan_output_axes=out_axes,
        scan_output_directions=[int(reverse)] * len(ys)))


def _as_tuple(names) -> tuple:
    return tuple(names) if isinstance(names, list) else (names,)


def _result(rule, node, args):
    return args[0][node.params["index"]]


LOWERINGS: dict[str, Callable] = {
    **{name: _simple for name in _SIMPLE}, **{name: _bitwise for name in _BITWISE},
    "ne": _ne, "erfc": _erfc, "cast": _cast, "sum": _reduce, "max": _reduce, "argmax": _argmax,
    "reshape": _reshape, "broadcast_to": _broadcast_to, "permute": _permute, "getitem": _getitem,
    "index_put": _index_write, "index_add": _index_write, "diagonal": _strided_view, "unfold": _strided_view,
    "gather": _gather, "scatter": _scatter, "scatter_add": _scatter, "conv": _conv,
    "conv_transpose": _conv_transpose, "linear": _linear, "cross_entropy": _cross_entropy, "full": _full,
    "floor_divide": _floor_divide, "remainder": _remainder, "cumsum": _cumsum, "cumprod": _cumprod,
    "argsort": _argsort, "einsum": _einsum, "floor": _rounding, "ceil": _rounding, "round": _rounding,
    "trunc": _rounding,
    "cond": _cond, "while_loop": _while_loop, "scan": _scan, "result": _result,
}
"""primitive name -> ``lower(rule, node, operands) -> ONNX value name`` (a tuple for control flow)."""

_RANDOM = ("draws from graphduel's generator; ONNX's Random* operators would draw other numbers, so the model "
           "could not agree with eager: draw it outside the traced function and pass it in as an input")
UNSUPPORTED: dict[str, str] = {
    **{name: f"{name} {_RANDOM}" for name, prim in PRIMITIVES.items() if prim.random},
    "conv_weight_grad": "conv_weight_grad (a convolution's weight gradient, found in backward graphs) has no ONNX "
                        "lowering: export a forward pass",
}
"""primitive name -> why it does not map (what ``UnsupportedOpError`` says)."""


# ---------------------------------------------------------------- the model


class Interface(NamedTuple):
    """How to call an exported model: its inputs, outputs, and the state a caller feeds back."""

    input_names: list[str]      # one graph input per ``input`` placeholder, in order
    output_names: list[str]     # the exported outputs, then one ``NAME.new`` per update
    updates: dict[str, str]     # graph input -> the output holding its new value
    state: dict[str, np.ndarray]  # the updated params/state: their values at export (the inputs' defaults)


def to_onnx(graph: Graph, values: dict[int, np.ndarray] | None = None, *, opset: int = DEFAULT_OPSET,
            name: str = "graph", output_names: list[str] | None = None, doc: str = "") -> tuple[object, Interface]:
    """``graph`` as a checked ONNX model (``onnx.ModelProto``) and its ``Interface``.

    ``values`` holds each param/state placeholder's array (by node id): they become initializers.
    ``output_names`` names the graph outputs to export, in order (default ``out0``, ``out1``, ... for all of
    them; a shorter list leaves the rest out, as ``export`` leaves out guard values)."""
    onnx = _module("onnx")
    from onnx import helper, numpy_helper
    top = onnx.defs.onnx_opset_version()
    if type(opset) is not int or not MIN_OPSET <= opset <= top:
        raise ValueError(f"export_onnx: opset must be an int from {MIN_OPSET} to {top} (this onnx's newest), got "
                         f"{opset!r}")
    values = values or {}
    names = _Names()
    root = _Scope(names)
    updated = {p.id for p, _ in graph.updates}
    feeds, input_names, state = [], [], {}
    for n in graph.placeholders:
        if n.role == "input":
            input_names.append(root.input(n.name, n.aval))
            feeds.append(input_names[-1])
            continue
        if n.id not in values:
            raise ValueError(f"export_onnx: no value given for the {n.role} placeholder {n.name!r} ({n.ref}, "
                             f"{n.aval}); pass values={{{n.id}: array}}")
        feeds.append(names.fresh(n.name))
        value = _contiguous(values[n.id])
        root.initializers.append(numpy_helper.from_array(value, feeds[-1]))
        if n.id in updated:  # an input too, defaulting to the initializer: the caller feeds the new value back
            root.inputs.append(_value_info(feeds[-1], n.aval))
            state[feeds[-1]] = value
    results = evaluate(graph, feeds, _OnnxRule(root))
    root.source = None
    out_names = [f"out{i}" for i in range(len(graph.outputs))] if output_names is None else list(output_names)
    by_id = dict(zip((n.id for n in graph.placeholders), feeds))
    named = [(hint, results[i], graph.outputs[i].aval) for i, hint in enumerate(out_names)]
    named += [(f"{by_id[p.id]}.new", v, p.aval) for (p, _), v in zip(graph.updates, results[len(graph.outputs):])]
    outputs = [(root.op("Identity", [value], hint=hint), aval) for hint, value, aval in named]
    updates = {by_id[p.id]: out for (p, _), (out, _) in zip(graph.updates, outputs[len(out_names):])}
    g = helper.make_graph(root.nodes, name, root.inputs, [_value_info(n, a) for n, a in outputs],
                          initializer=root.initializers, doc_string=doc)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="graphduel", producer_version=_version())
    helper.set_model_props(model, {"graphduel.updates": json.dumps(updates), "graphduel.source": name})
    onnx.checker.check_model(model, full_check=True)
    return model, Interface(input_names, [n for n, _ in outputs], updates, state)


def export(traced, opset: int = DEFAULT_OPSET) -> OnnxProgram:
    """The program ``traced`` would run now (latest signature, current state) as a checked ONNX model, wrapped
    in an ``OnnxProgram``: params and state with their current values, guard values left out (with a warning)."""
    from tracer.serialization import _current_entry  # the entry a call (and save) would run now
    entry = _current_entry(traced)
    graph, plan = entry.graph, entry.plan
    _warn_frozen(traced.name, entry)
    state = [n for n in graph.placeholders if n.role != "input"]
    values = {n.id: _current_value(n, slot) for n, slot in zip(state, plan.readers)}
    names = [f"out{i}" for i in range(plan.n_user_outputs)] + [slot.name for slot in plan.extra_slots]
    model, interface = to_onnx(graph, values, opset=opset, name=traced.name, output_names=names,
                               doc=f"{traced.name}{traced.signature}")
    return OnnxProgram(model, traced, entry, interface)


def _current_value(node: Node, slot) -> np.ndarray:
    """What a param/state location holds now: a tensor's array, or a Python number (an int ``tracer.script``
    lifted into state) as an array of the placeholder's dtype."""
    from eager.tensor import Tensor
    value = slot.get()
    if isinstance(value, Tensor):
        return to_numpy(value._data)
    if isinstance(value, (bool, int, float, np.generic)):
        return np.asarray(value, dtype=node.dtype)
    raise ValueError(f"export_onnx: {node.name} ({node.role}, {node.aval}) holds no tensor now ({value!r:.40}); "
                     "call the traced function once before exporting.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("graphduel")
    except PackageNotFoundError:
        return "0"


def _warn_frozen(name: str, entry) -> None:
    """What the model cannot check: value guards and Python state the program changes (a traced call checks
    both on every call). Python values it only read (``module.training``) are baked in, as in ``torch.onnx``."""
    from tracer.assumptions import TracerWarning
    lines = sorted({g.source for g in entry.value_guards} | {c.source for c in entry.state_changes})
    if lines:
        warnings.warn(f"export_onnx: {name}'s program was traced for values the model cannot check (at "
                      f"{', '.join(lines)}): ONNX "
                      "Runtime runs the traced branch on every call, where a traced call would retrace. Write the "
                      "decision with eager.cond / eager.where to keep it in the model.", TracerWarning, stacklevel=3)


class OnnxProgram:
    """An exported program: ``model`` (an ``onnx.ModelProto``), ``save(path)``, and calls run by ONNX Runtime.

    A call takes the traced function's arguments (eager tensors, the traced signature) and returns NumPy arrays
    structured like its result. State the program updates is carried from call to call inside this object (it
    starts from the values at export; the module it came from is not touched), and an argument the function
    writes in place is written, as a traced call does.
    """

    def __init__(self, model, traced, entry, interface: Interface):
        from tracer.signature import argument_names
        self.model = model
        self.name = traced.name
        self.input_names = interface.input_names
        self.output_names = interface.output_names
        self.updates = interface.updates  # graph input -> the output holding its new value
        self.state = dict(interface.state)  # current values of the updated params/state, fed on every call
        self._key = entry.key
        self._arg_names = argument_names(traced.fn, len(entry.key))
        self._n_user = entry.plan.n_user_outputs
        self._out_spec = entry.plan.out_spec
        self._session = None

    def save(self, path) -> None:
        _module("onnx").save_model(self.model, str(path))

    @property
    def session(self):
        """The ONNX Runtime session (CPU), created on first use."""
        if self._session is None:
            ort = _module("onnxruntime")
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: an initializer that is also an input is on purpose
            self._session = ort.InferenceSession(self.model.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def __call__(self, *args, **kwargs):
        from eager.storage import assign
        from tracer.pytree import unflatten
        from tracer.signature import SignatureError, explain_change, signature_of
        leaves, key = signature_of(args, kwargs)
        if key != self._key:
            why = "; ".join(explain_change(self._key, key, self._arg_names)) or "the arguments differ"
            raise SignatureError(f"{self.name} (ONNX): the model was exported for other arguments ({why}); trace and "
                                 "export again with these.")
        feeds = {n: _contiguous(to_numpy(t._data)) for n, t in zip(self.input_names, leaves)}
        feeds.update(self.state)
        out = self.session.run(None, feeds)
        by_name = dict(zip(self.output_names, out))
        for i, name in enumerate(self.input_names):
            if name in self.updates:
                assign(leaves[i], by_name[self.updates[name]])
        for name in self.state:
            self.state[name] = by_name[self.updates[name]]
        return unflatten(self._out_spec, out[:self._n_user])

    def __repr__(self) -> str:
        g = self.model.graph
        return (f"<OnnxProgram {self.name}: opset {self.model.opset_import[0].version}, {len(g.node)} nodes, "
                f"{len(g.initializer)} initializers>")
