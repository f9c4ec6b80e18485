"""Regions: how a trace records ``eager.cond``, ``while_loop`` and ``scan`` as ONE node with sub-graphs.

Each branch (or loop body) is run once on the current values under a recorder of its own, and its tape becomes a
closed sub-graph, a ``Region``: placeholders for the operands, then for every tensor the branch read from outside
(captures: parameters, earlier values of the trace), then its calls. The outer trace records one control node
whose arguments are the operands and the captures of all its regions, and one ``result`` node per value it
returns. Nothing that ran in a region escapes into the outer graph, so the traced program decides on every call.

A region must be pure: reading a tensor's value in Python (``bool(t)``, ``.item()``), writing a tensor from
outside in place, or drawing random numbers inside it is refused with an error naming the line, because a
trace would freeze it.

    >>> import eager, tracer
    >>> f = tracer.trace(lambda x: eager.cond(x.sum() > 0, lambda v: v * 2, lambda v: -v, (x,)), eager.ones(2))
    >>> f(-eager.ones(2)).tolist()     # the branch not taken while tracing
    [1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eager.autograd.engine import Node as AutogradNode
from eager.autograd.mode import MODE
from eager.control import COND, RESULT, SCAN, WHILE_LOOP, ControlFlowError, avals, check_same, flat_tensors, pack
from eager.primitives import PRIMITIVES, Aval
from eager.tensor import Tensor
from tracer.ir import Graph, Node

LABELS = {"cond": ("true", "false"), "while_loop": ("cond", "body"), "scan": ("body",)}


class Region:
    """A closed sub-graph of a control-flow node; ``run(arrays)`` runs it on the static executor."""

    def __init__(self, graph: Graph, label: str, executor=None):
        self.graph = graph
        self.label = label
        self.out_avals = tuple(n.aval for n in graph.outputs)
        self._executor = executor

    def lowered(self, lower) -> Region:
        """The same region run by ``lower(graph)`` (the compiler's lowering) instead of the static executor."""
        return Region(self.graph, self.label, lower(self.graph))

    def run(self, arrays: list) -> list:
        if self._executor is None:
            from tracer.executor import StaticExecutor
            self._executor = StaticExecutor(self.graph)
        # a previous trip's 0-d result may come back as a NumPy scalar; kernels take arrays
        return self._executor.run([np.asarray(a) if isinstance(a, np.generic) else a for a in arrays])

    def fingerprint(self) -> str:
        return self.graph.fingerprint()

    def __repr__(self) -> str:
        return f"<region {self.label}: {len(self.graph.calls)} calls>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Region) and other.label == self.label and other.fingerprint() == self.fingerprint()

    def __hash__(self) -> int:
        return hash((self.label, self.fingerprint()))


@dataclass
class _SubTrace:
    recorder: object
    outputs: list[Tensor]
    single: bool
    what: str


def lower_regions(graph: Graph, lower) -> Graph:
    """A copy of ``graph`` whose control-flow nodes run their regions through ``lower`` (passes and fusion inside
    each region; the branch or the loop itself stays on the host)."""
    from compiler.rewrite import rebuild
    from tracer.ir import map_regions, region_param, regions_of
    if not any(regions_of(n) for n in graph.nodes):
        return graph

    def visit(rb, n):
        if regions_of(n):
            params = {k: map_regions(v, lambda region, _: region.lowered(lower)) if region_param(v) else v
                      for k, v in n.params.items()}
            rb.env[n.id] = rb.new.call(n.op, rb.args(n), params, n.aval, n.source)
        else:
            rb.copy(n)
    return rebuild(graph, visit)


def _sub_trace(outer, fn, example: list[Tensor], op: str, what: str) -> _SubTrace:
    """Run ``fn`` on fresh tensors holding ``example``'s values, under a recorder of its own (the outer one sees
    nothing); refuse what a region cannot hold."""
    from tracer.recorder import Recorder
    inputs = [Tensor._make(t._data, False, None) for t in example]
    nested = Recorder(inputs)
    token = MODE.set(MODE.get()._replace(recorders=(nested,), grad_enabled=False))
    try:
        result = fn(*inputs)
    finally:
        MODE.reset(token)
    if op == "scan":
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ControlFlowError(f"scan: combine_fn must return a pair (new carry, y), got {type(result).__name__}.")
        carry, c_single = flat_tensors(op, "combine_fn's new carry", result[0])
        ys, y_single = flat_tensors(op, "combine_fn's y", result[1])
        outputs, single = carry + ys, (c_single, y_single, len(carry))
    else:
        outputs, single = flat_tensors(op, f"{what}'s result", result)
    for t in outputs:  # an outside tensor returned as is is a capture too (it must not be baked in as a constant)
        nested.vid_after(t)
    _refuse_impure(nested, op, what)
    return _SubTrace(nested, outputs, single, what)


def _refuse_impure(nested, op: str, what: str) -> None:
    tape = nested.tape
    if tape.escapes:
        e = tape.escapes[0]
        raise ControlFlowError(f"{op}: {what} reads a tensor's value in Python at {e.source} ({e.kind}); inside a "
                               "region every decision must stay in the graph: use eager.where, or a nested "
                               "eager.cond / while_loop.")
    from_outside = {id(leaf.tensor) for leaf in tape.leaves.values() if leaf.tensor is not None}  # operands too
    outside = [t for i, t in tape.mutated.items() if i in from_outside]
    if outside:
        raise ControlFlowError(f"{op}: {what} writes in place to a tensor of shape {list(outside[0].shape)} that it "
                               "did not create (an operand or a tensor from outside the region); regions are "
                               "functional: return the new value instead.")
    random = next((c for c in tape.calls if PRIMITIVES[c.op].random), None)
    if random is not None:
        raise ControlFlowError(f"{op}: {what} draws random numbers ({random.op} at {random.source}); random ops "
                               "inside a region are not supported: draw them outside and pass them as operands.")


def _captures(subs: list[_SubTrace]) -> list[Tensor]:
    """The outside tensors the regions read, in first-read order, each once."""
    seen, out = set(), []
    for sub in subs:
        for leaf in sub.recorder.tape.leaves.values():
            if leaf.input_index is None and leaf.tensor is not None and id(leaf.tensor) not in seen:
                seen.add(id(leaf.tensor))
                out.append(leaf.tensor)
    return out


def _build_region(sub: _SubTrace, n_inputs: int, captures: list[Tensor], label: str) -> Region:
    """The sub-trace as a closed graph: inputs, then every capture of the node (all regions take the same)."""
    from tracer.build import _live_calls
    from tracer.recorder import Ref
    rec = sub.recorder
    tape = rec.tape
    g = Graph()
    node_of: dict[int, Node] = {}
    by_input = {leaf.input_index: leaf.vid for leaf in tape.leaves.values() if leaf.input_index is not None}
    for i in range(n_inputs):
        node = g.placeholder(f"in{i}", rec.aval(by_input[i]))
        for leaf in tape.leaves.values():
            if leaf.input_index == i:
                node_of[leaf.vid] = node
    capture_vid = {id(leaf.tensor): leaf.vid for leaf in tape.leaves.values()
                   if leaf.input_index is None and leaf.tensor is not None}
    for k, t in enumerate(captures):
        node = g.placeholder(f"capture{k}", Aval(tuple(t.shape), t.dtype))
        if id(t) in capture_vid:
            node_of[capture_vid[id(t)]] = node
    roots = [rec.vid_after(t) for t in sub.outputs]
    calls, live = _live_calls(tape, roots)
    for vid in sorted(live):
        leaf = tape.leaves.get(vid)
        if vid not in node_of and leaf is not None:
            node_of[vid] = g.constant(tape.arrays[vid])
    for call in calls:
        args = tuple(node_of[a.vid] if isinstance(a, Ref) else a for a in call.args)
        node_of[call.out] = g.call(call.op, args, call.params, rec.aval(call.out), source=call.source)
    g.outputs.extend(node_of[v] for v in roots)
    return Region(g.validate(), label)


# ---------------------------------------------------------------- the three ops, as the recorder records them


def record_control(outer, op: str, **kw):
    """``Recorder.control``: record ``op`` as one node with regions; returns what the eager function returns."""
    return _RECORD[op](outer, **kw)


def _record_cond(outer, pred, fns, operands):
    subs = [_sub_trace(outer, fn, operands, "cond", f"the {label} branch") for fn, label in zip(fns, LABELS["cond"])]
    a, b = ((s.single, avals(s.outputs)) for s in subs)
    check_same("cond", "the true branch", a, "the false branch", b)
    captures = _captures(subs)
    regions = tuple(_build_region(s, len(operands), captures, label) for s, label in zip(subs, LABELS["cond"]))
    taken = subs[0 if bool(pred._data) else 1]
    outs = _emit(outer, COND, [pred, *operands, *captures], {"branches": regions},
                 [t._data for t in taken.outputs])
    return pack(outs, subs[0].single)


def _record_while(outer, fns, operands, single):
    cond_sub = _sub_trace(outer, fns[0], operands, "while_loop", "cond_fn")
    body_sub = _sub_trace(outer, fns[1], operands, "while_loop", "body_fn")
    p = cond_sub.outputs
    if len(p) != 1 or p[0].shape != () or p[0].dtype != np.bool_:
        raise ControlFlowError(f"while_loop: cond_fn must return one 0-d bool tensor, got {avals(p)}.")
    new_carry = (body_sub.single, avals(body_sub.outputs))
    check_same("while_loop", "the carry", (single, avals(operands)), "body_fn", new_carry)
    captures = _captures([cond_sub, body_sub])
    cond_region, body_region = (_build_region(s, len(operands), captures, label)
                                for s, label in zip((cond_sub, body_sub), LABELS["while_loop"]))
    params = {"cond_region": cond_region, "body_region": body_region, "n_carry": len(operands)}
    args = [*operands, *captures]
    values = WHILE_LOOP.impl(np, *[t._data for t in args], **params)
    return pack(_emit(outer, WHILE_LOOP, args, params, list(values)), single)


def _record_scan(outer, fns, operands, n_carry, singles, dim, reverse, length):
    carry, seq = operands[:n_carry], operands[n_carry:]
    first = [s.select(dim, length - 1 if reverse else 0) if length else _zeros_slice(s, dim) for s in seq]
    def step(*flat):  # combine_fn takes (carry, x) as the user passed them, not the flat list a region takes
        return fns[0](pack(list(flat[:n_carry]), singles[0]), pack(list(flat[n_carry:]), singles[1]))
    sub = _sub_trace(outer, step, carry + first, "scan", "combine_fn")
    c_single, y_single, n_out_carry = sub.single
    new_carry = (c_single, avals(sub.outputs[:n_out_carry]))
    check_same("scan", "the carry", (singles[0], avals(carry)), "combine_fn", new_carry)
    captures = _captures([sub])
    body = _build_region(sub, len(operands), captures, "body")
    params = {"body": body, "n_carry": n_carry, "n_xs": len(seq), "dim": dim, "reverse": reverse, "length": length}
    args = [*operands, *captures]
    values = SCAN.impl(np, *[t._data for t in args], **params)
    outs = _emit(outer, SCAN, args, params, list(values))
    return pack(outs[:n_carry], singles[0]), pack(outs[n_carry:], y_single)


def _zeros_slice(s: Tensor, dim: int) -> Tensor:
    shape = list(s.shape)
    del shape[dim]
    return Tensor._make(np.zeros(shape, s.dtype), False, None)


_RECORD = {"cond": _record_cond, "while_loop": _record_while, "scan": _record_scan}


def _emit(outer, prim, args: list[Tensor], params: dict, values: list) -> list[Tensor]:
    """Record ``prim(*args)`` with its several results on the outer tape; return one tensor per result."""
    from tracer.recorder import Call, Ref, _Seen, user_frame
    source = outer.source_hint or user_frame()[0]
    inputs = {id(t._data) for t in args}
    values = [v.copy() if id(v) in inputs else v for v in values]  # results never alias operands (torch.cond's rule)
    packed = tuple(values)
    vid = outer._new_value(packed, index=False)
    outer.calls.append(Call(prim.name, tuple(Ref(outer.vid_of(t)) for t in args), dict(params), vid, source))
    node = _backward_node(prim, args, params, values)
    outs = []
    for i, value in enumerate(values):
        t = Tensor._make(value, node is not None, None)
        if node is not None:
            t.grad_fn = AutogradNode(f"{prim.name.title().replace('_', '')}ResultBackward", _result_vjp,
                                     (_Packed(node),), {"index": i, "n": len(values)})
        rid = outer._new_value(value)
        outer._by_tensor[id(t)] = _Seen(t, value, rid)
        outer.calls.append(Call(RESULT.name, (Ref(vid),), {"index": i}, rid, source))
        outs.append(t)
    return outs


# ---------------------------------------------------------------- gradients: backward regions


class PackedGrad:
    """The cotangents of a control node's results, gathered from its result nodes (None: no gradient yet)."""

    _data = None  # the engine asks who owns a gradient's memory: nobody's

    def __init__(self, items: list):
        self.items = items

    def __add__(self, other: PackedGrad) -> PackedGrad:
        return PackedGrad([a if b is None else b if a is None else a + b for a, b in zip(self.items, other.items)])


class _Packed:
    """The edge from a result node to its control node (an autograd input that is not a tensor)."""

    _requires_grad = True

    def __init__(self, node):
        self.grad_fn = node


def _result_vjp(g, out, packed, index: int, n: int):
    items = [None] * n
    items[index] = g
    return (PackedGrad(items),)


def _backward_node(prim, args: list[Tensor], params: dict, values: list):
    """The autograd node of a traced control node: its backward records a control node of backward regions."""
    if not (MODE.get().grad_enabled and any(t._requires_grad for t in args)):
        return None
    if prim is WHILE_LOOP:
        return AutogradNode("WhileLoopBackward", _no_while_gradient, (), {})
    result_avals = [Aval(tuple(v.shape), v.dtype) for v in values]
    vjp = _cond_vjp if prim is COND else _scan_vjp
    return AutogradNode(f"{prim.name.title().replace('_', '')}Backward", vjp, tuple(args),
                        {"params": params, "result_avals": result_avals})


def _no_while_gradient(g, out, **params):
    from eager.autograd.engine import BackwardError
    raise BackwardError("while_loop is forward only: its trip count is data-dependent, so reverse-mode needs every "
                        "step's carry (as in JAX). Use eager.scan with a fixed number of steps to differentiate.")


def _cotangents(g: PackedGrad, result_avals) -> list[Tensor]:
    import eager
    return [c if c is not None else eager.zeros(a.shape, dtype=a.dtype) for c, a in zip(g.items, result_avals)]


def _replay(region: Region, args: list):
    from tracer.grad import _ReplayRule
    from tracer.interpret import evaluate
    return evaluate(region.graph, list(args), _ReplayRule())


def _leaves(tensors) -> list[Tensor]:
    # new leaves on the same arrays, not detach(): a trace finds their values by the arrays and records no
    # stop_gradient, so a backward region stays differentiable when it is replayed again (second order); it
    # reads each tensor first, so a tensor from outside stays the capture (its gradient reaches it)
    for rec in MODE.get().recorders:
        for t in tensors if hasattr(rec, "vid_of") else ():  # a trace's recorder (not an op counter)
            rec.vid_of(t)
    return [Tensor._make(t._data, t.is_floating_point(), None) for t in tensors]


def _vjp(region: Region, args, cts, wrt_positions) -> list[Tensor]:
    """Gradients of ``region``'s outputs (weighted by ``cts``) w.r.t. its inputs at ``wrt_positions`` (zeros when an
    input does not reach them), by replaying it on fresh leaves under autograd."""
    import eager
    from eager.autograd import enable_grad
    with enable_grad():
        leaves = _leaves(args)
        outs = _replay(region, leaves)
        pairs = [(o, c) for o, c in zip(outs, cts) if o._requires_grad]
        wrt = [leaves[i] for i in wrt_positions]
        grads = eager.autograd.grad([o for o, _ in pairs], wrt, [c for _, c in pairs], allow_unused=True) \
            if pairs and wrt else [None] * len(wrt)
    return [Tensor._make(g._data, False, None) if g is not None else eager.zeros_like(w).detach()
            for g, w in zip(grads, wrt)]


def _cond_vjp(g, out, pred, *args, params, result_avals):
    """d cond = cond(pred, vjp of the true branch, vjp of the false branch): both backward regions in the graph
    (each replays its branch's forward, the residuals are recomputed, not saved)."""
    import eager
    cts = _cotangents(g, result_avals)
    floats = [i for i, a in enumerate(args) if a.is_floating_point()]
    n = len(args)

    def backward_of(region):
        return lambda *xs: tuple(_vjp(region, xs[:n], xs[n:], floats))
    grads = eager.cond(pred, *[backward_of(r) for r in params["branches"]], list(args) + cts)
    out_grads: list = [None] * n
    for i, gi in zip(floats, grads if isinstance(grads, tuple) else (grads,)):
        out_grads[i] = gi
    return (None, *out_grads)


def _scan_vjp(g, out, *args, params, result_avals):
    """d scan = a forward scan that recomputes every step's input carry, then a reverse scan of the step's VJP
    carrying the carry's cotangent and the captures' accumulated gradients (residuals recomputed, not saved)."""
    import eager
    body, n_carry, n_xs = params["body"], params["n_carry"], params["n_xs"]
    dim, reverse = params["dim"], params["reverse"]
    carry0, xs, caps = list(args[:n_carry]), list(args[n_carry:n_carry + n_xs]), list(args[n_carry + n_xs:])
    cts = _cotangents(g, result_avals)
    if not all(t.is_floating_point() for t in carry0):
        raise ControlFlowError("scan backward: every carry must be floating point to differentiate through a traced "
                               "scan (an integer counter in the carry is not supported yet); pass it as xs instead.")
    ct_carry, ct_ys = cts[:n_carry], cts[n_carry:]
    _, carries = eager.scan(lambda c, x: (tuple(_replay(body, list(c) + list(x) + caps)[:n_carry]), c),
                            tuple(carry0), tuple(xs), dim=dim, reverse=reverse)
    cap_pos = [n_carry + n_xs + i for i, c in enumerate(caps) if c.is_floating_point()]
    x_pos = [n_carry + i for i, x in enumerate(xs) if x.is_floating_point()]
    wrt = list(range(n_carry)) + x_pos + cap_pos

    def step_back(carry, x):
        ct_c, acc = list(carry[:n_carry]), list(carry[n_carry:])
        x_t, c_t, ct_y = list(x[:n_xs]), list(x[n_xs:n_xs + n_carry]), list(x[n_xs + n_carry:])
        grads = _vjp(body, c_t + x_t + caps, ct_c + ct_y, wrt)
        g_c, g_x, g_caps = grads[:n_carry], grads[n_carry:n_carry + len(x_pos)], grads[n_carry + len(x_pos):]
        return tuple(g_c) + tuple(a + b for a, b in zip(acc, g_caps)), tuple(g_x) if g_x else (c_t[0] * 0,)
    acc0 = [eager.zeros_like(caps[i - n_carry - n_xs]) for i in cap_pos]
    final, gxs = eager.scan(step_back, tuple(ct_carry) + tuple(acc0), tuple(xs) + tuple(carries) + tuple(ct_ys),
                            dim=dim, reverse=not reverse)
    gxs = gxs if isinstance(gxs, tuple) else (gxs,)
    out_grads: list = [None] * len(args)
    for i in range(n_carry):
        out_grads[i] = final[i]
    for k, i in enumerate(x_pos):
        out_grads[i] = gxs[k]
    for k, i in enumerate(cap_pos):
        out_grads[i] = final[n_carry + k]
    return tuple(out_grads)
