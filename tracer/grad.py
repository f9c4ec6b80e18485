"""``tracer.grad``: a static backward graph derived from a traced forward graph, with the same VJP rules.

The forward graph is replayed through eager ops (``apply``) on leaves that require grad, inside a new trace,
and ``eager.autograd.grad`` walks the replay backwards; every VJP rule is written with Tensor ops, so the
backward pass is recorded too. The result is one static graph (forward + backward) that a call runs without
any eager autograd.

A control-flow node replays through eager's own op (``eager.cond`` / ``scan`` / ``while_loop``) with functions
that replay its regions, so the backward is the one a traced train step records (``tracer.regions``): a cond of
the branches' VJPs, a recomputing scan then a reverse scan of the step's VJP; while_loop has no reverse-mode
gradient (use scan), as in JAX. The backward regions stay differentiable, so a gradient of a gradient works too.

The forward's guards are the gradient's: each value that left the forward graph to decide control flow is
escaped again from the replay, so the backward graph outputs it too and each call compares it with what
tracing saw (``tracer.traced``). A call that takes another path runs the gradient program traced for it, or
traces one from the forward program for that path (the forward's trace tree), or, past ``cache_size``
programs, differentiates the forward's Python eagerly; ``guards="raise"`` raises ``GuardError`` naming the line.

    >>> import eager
    >>> dx = grad(lambda x: (x * x).sum(), eager.ones(3))
    >>> dx(eager.tensor([1.0, 2.0, 3.0])).tolist()
    [2.0, 4.0, 6.0]
"""

from __future__ import annotations

import contextlib
import inspect

from eager.autograd.functional import grad as autograd_grad
from eager.autograd.mode import MODE, enable_grad
from eager.control import CONTROL_OPS, RESULT, cond, scan, while_loop
from eager.dispatch import apply
from eager.ops import zeros_like
from eager.primitives import PRIMITIVES, STOP_GRADIENT
from eager.tensor import Tensor
from tracer.conversions import CONVERSIONS, convert
from tracer.interpret import Rule, evaluate
from tracer.ir import Graph, Node
from tracer.pytree import flatten
from tracer.recorder import Escape
from tracer.regions import _replay as _replay_region  # a region replayed with _ReplayRule
from tracer.signature import signature_of
from tracer.slots import Slot
from tracer.traced import Entry, Traced, _alias_key, trace
from tracer.world import World


def grad(fn, *example_inputs, argnums: int | tuple[int, ...] = 0, wrt_params: bool = False,
         return_value: bool = False, guards: str | None = None) -> Traced:
    """Trace the gradient of ``fn``'s scalar output with respect to the tensor arguments in ``argnums``.

    ``fn`` may be a function, a Module or an existing ``Traced``. The returned ``Traced`` gives the gradient
    (a tensor, or a tuple for several ``argnums``); with ``wrt_params=True`` it gives ``(input grads...,
    {param name: grad})``; with ``return_value=True`` it gives ``(value, grads)``. ``guards`` (default: the
    forward ``Traced``'s, else ``"retrace"``): a call whose input takes another branch than tracing saw gets
    the gradient of that branch (``"retrace"``), raises ``GuardError`` naming the line (``"raise"``), or gets
    the traced branch's (``"off"``).

        >>> import eager, warnings
        >>> def f(x):
        ...     return (x * x).sum() if x.sum() > 0 else (x * 3).sum()
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # the TracerWarning names the branch's line
        ...     df = grad(f, eager.ones(2))
        ...     df(-eager.ones(2)).tolist(), df.retrace_count
        ([3.0, 3.0], 1)
    """
    forward = fn if isinstance(fn, Traced) else trace(fn, *example_inputs, guards=guards or "retrace")
    entry = forward.entry_for(*example_inputs)
    _require_pure_loss(forward, entry)
    backward = _Backward(forward, _wanted_leaves(forward, example_inputs, argnums), wrt_params, return_value,
                         single=isinstance(argnums, int))
    backward.remember(entry)
    traced = Traced(backward, name=f"grad({forward.name})", extra_params=backward.extra,
                    cache_size=forward.cache_size, guards=guards or forward.guards)
    traced.entry_for(*example_inputs)
    return traced


def _require_pure_loss(forward: Traced, entry: Entry) -> None:
    """grad differentiates a pure function whose first output is a floating-point scalar."""
    graph = entry.graph
    if graph.updates or entry.plan.extra_slots or entry.state_changes:
        changed = [p.name for p, _ in graph.updates] + [s.name for s in entry.plan.extra_slots] + \
            [f"Python state {c.name} (at {c.source})" for c in entry.state_changes]
        raise ValueError(f"tracer.grad: {forward.name} changes state ({', '.join(changed)}); grad needs a pure "
                         "function of its inputs (trace the forward alone, without backward() or an optimizer).")
    out = graph.outputs[0] if graph.outputs else None
    if out is None or out.shape not in ((), (1,)) or out.dtype.kind != "f" or entry.plan.conversions[0] is not None:
        what = "nothing" if out is None else f"{out.aval}"
        raise ValueError(f"tracer.grad: {forward.name} must return a scalar floating-point tensor first (a loss); "
                         f"it returns {what}. Reduce it first (e.g. .sum() or .mean()).")


def _wanted_leaves(forward: Traced, example_inputs: tuple, argnums) -> dict[int, int]:
    """The tensor leaves (input placeholders) of the arguments named by ``argnums``, checked: leaf -> argument."""
    wanted = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    leaf_of_arg = _leaf_index_of_args(example_inputs)
    for i in wanted:
        if not (0 <= i < len(example_inputs)) or leaf_of_arg[i] is None:
            raise ValueError(f"tracer.grad: argnums={argnums} names argument {i}, which is not a tensor argument "
                             f"of {forward.name} (it takes {len(example_inputs)} arguments).")
        if example_inputs[i].dtype.kind != "f":
            raise ValueError(f"tracer.grad: argument {i} is {example_inputs[i].dtype}; only floating-point "
                             "inputs have gradients.")
    return {leaf_of_arg[i]: i for i in wanted}


class _Backward:
    """The program ``grad`` traces: pick the forward program a forward call would run on these arguments, replay
    it under autograd (escaping its guarded values again) and differentiate it.

    ``model`` (the forward's function or Module) is its one public attribute: a trace of this object walks it
    (``tracer.roots``), so the backward program's world is the forward's (its modules' names, and the Python
    state its branches read, guarded on each call)."""

    def __init__(self, forward: Traced, wanted: dict[int, int], wrt_params: bool, return_value: bool, single: bool):
        self.model = forward.fn
        self._forward = forward
        self._wanted = wanted                # input leaf -> its argument's position
        self._wrt_params = wrt_params
        self._return_value = return_value
        self._single = single                # argnums was one int: give one gradient, not a tuple
        self._seen: set[int] = set()         # ids of forward programs checked by ``remember``
        # where the forward programs read each param/state placeholder (the trace names them alike); a dict the
        # Traced reads at each trace, so a forward program found later adds its locations for the next one
        self.extra: dict[str, Slot] = dict(forward._extra_params or {})
        try:  # the backward program takes the forward's arguments: name them alike in graphs and messages
            self.__signature__ = inspect.signature(getattr(forward.fn, "forward", forward.fn))
        except (TypeError, ValueError):
            pass

    def remember(self, entry: Entry) -> None:
        """Check a forward program grad has not used yet, and note where it reads its params and state."""
        if id(entry) in self._seen:
            return
        _require_pure_loss(self._forward, entry)
        self._seen.add(id(entry))
        for node, slot in zip(_others(entry.graph), entry.plan.readers):
            self.extra.setdefault(node.name, slot)

    def __call__(self, *args):
        leaves, key = signature_of(args, {})
        entry = self._forward_entry(args, leaves, key)
        if entry is None:
            return self._eager(args)
        graph = entry.graph
        with enable_grad():
            env, xs, params = self._feed(graph, dict(zip((n.id for n in _others(graph)), entry.plan.readers)),
                                         leaves)
            outs = evaluate(graph, [env[n.id] for n in graph.placeholders], _ReplayRule())
            _escape_guards_again(entry, outs)
            value = outs[0]
            wrt = xs + (list(params.values()) if self._wrt_params else [])
            grads = autograd_grad(value.sum() if value.shape else value, wrt, allow_unused=True)
        return self._result(value, xs, params, grads)

    def _forward_entry(self, args: tuple, leaves: list, key: tuple) -> Entry | None:
        """The forward program a forward call on these arguments runs: its guards checked on them (run, outside
        any trace: which program is a choice, not part of the backward program), traced now when none fits
        (``Traced._call``); None when the forward runs them eagerly (cache_size programs, none fits)."""
        if len(leaves) > 1 and len({id(t) for t in leaves}) != len(leaves):
            key = key + (_alias_key(leaves),)
        with _outside_traces():
            _, entry = self._forward._call(args, {}, leaves, key, None)
        if entry is not None:
            self.remember(entry)
        return entry

    def _feed(self, graph: Graph, slots: dict[int, Slot], leaves: list
              ) -> tuple[dict[int, Tensor], list[Tensor], dict[str, Tensor]]:
        """Each placeholder's tensor; the wanted inputs as fresh leaves that require grad; the trainable params."""
        env: dict[int, Tensor] = {}
        xs: list[Tensor] = []
        for i, (node, t) in enumerate(zip(graph.inputs_with_role("input"), leaves)):
            if i in self._wanted:
                t = apply(STOP_GRADIENT, t).requires_grad_(True)
                xs.append(t)
            env[node.id] = t
        params: dict[str, Tensor] = {}
        for node in _others(graph):
            t = env[node.id] = slots[node.id].get()
            if t._requires_grad:
                params[node.name] = t
        return env, xs, params

    def _eager(self, args: tuple):
        """The gradient by eager autograd through the forward's Python: the forward runs these arguments eagerly
        (it has cache_size programs for their signature and none fits), so there is no program to replay."""
        fn = self._forward.fn
        with enable_grad():
            xs = [apply(STOP_GRADIENT, args[i]).requires_grad_(True) for i in self._wanted.values()]
            call = list(args)
            for i, x in zip(self._wanted.values(), xs):
                call[i] = x
            value = flatten(fn(*call))[0][0]
            params: dict[str, Tensor] = {}
            if self._wrt_params:
                world = World.discover(fn, args, self._forward._extra_params)
                params = {k.name: k.tensor for k in world.known.values()
                          if k.role in ("param", "state") and k.tensor._requires_grad and k.tensor.grad_fn is None}
            grads = autograd_grad(value.sum() if value.shape else value, xs + list(params.values()),
                                  allow_unused=True)
        used = [name for name, g in zip(params, grads[len(xs):]) if g is not None]  # what the run read
        grads = list(grads[:len(xs)]) + [g for g in grads[len(xs):] if g is not None]
        return self._result(value.detach(), xs, {name: params[name] for name in used}, grads)

    def _result(self, value: Tensor, xs: list[Tensor], params: dict[str, Tensor], grads):
        wrt = xs + (list(params.values()) if self._wrt_params else [])
        grads = [zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
        result = tuple(grads[:len(xs)])
        if self._wrt_params:
            result = result + (dict(zip(params, grads[len(xs):])),)
        elif len(result) == 1 and self._single:
            result = result[0]
        return (value, result) if self._return_value else result


def _others(graph: Graph) -> list[Node]:
    """The param/state placeholders (read through slots; the others are the call's input tensors)."""
    return [n for n in graph.placeholders if n.role != "input"]


def _escape_guards_again(entry: Entry, outs: list) -> None:
    """Each value the forward program guards, escaped again from its replay, at the forward's line: the trace
    recording the replay (the backward program's) guards the same values, so a call that would take another
    path retraces (or raises under guards="raise") instead of returning the traced path's gradient."""
    recorders = MODE.get().recorders
    tape = getattr(recorders[-1], "tape", None) if recorders else None
    if tape is None:  # a plain (eager) run: the forward program was picked for these very arguments
        return
    rec = recorders[-1]
    for g in entry.value_guards:
        site = entry.plan.escapes[g.site].escape
        t = outs[g.output]
        value = convert(t._data, g.kind) if g.kind in CONVERSIONS else site.value
        tape.escapes.append(Escape(site.source, site.filename, site.lineno, g.kind, value, rec.vid_of(t)))


@contextlib.contextmanager
def _outside_traces():
    """Ops run here reach no recorder (a trace around this one does not record them)."""
    token = MODE.set(MODE.get()._replace(recorders=()))
    try:
        yield
    finally:
        MODE.reset(token)


class _ReplayRule(Rule):
    """Replays each node through eager ``apply``, so autograd records it; inside a trace, each recorded call
    keeps the source line of the forward node it replays."""

    def __init__(self):
        self.recorder = MODE.get().recorders[-1] if MODE.get().recorders else None

    def constant(self, node: Node) -> Tensor:
        return Tensor(node.value)

    def call(self, node: Node, args: list):
        if node.op == RESULT.name:  # the control node's replay gave all its results at once
            return args[0][node.params["index"]]
        run = _replay_control if node.op in CONTROL_OPS else _replay_primitive
        if self.recorder is None:
            return run(node, args)
        self.recorder.source_hint = node.source
        try:
            return run(node, args)
        finally:
            self.recorder.source_hint = None


def _replay_primitive(node: Node, args: list) -> Tensor:
    return apply(PRIMITIVES[node.op], *args, **node.params)


def _replay_control(node: Node, args: list) -> list[Tensor]:
    """A control node replayed through eager's own op, with functions that replay its regions: under a trace the
    op records the node again, with the backward a traced train step gets (``tracer.regions``: a cond of the
    branches' VJPs, a recomputing scan then a reverse scan of the step's VJP, while_loop refused); run plainly,
    eager runs what the data picks, as it runs the forward's Python. Returns every result (``result`` nodes pick)."""
    p = node.params
    if node.op == "cond":  # operands and captures alike become the replayed node's operands
        branches = [lambda *xs, r=r: tuple(_replay_region(r, list(xs))) for r in p["branches"]]
        return list(cond(args[0], *branches, list(args[1:])))
    if node.op == "scan":
        n_carry, n_xs = p["n_carry"], p["n_xs"]
        caps = list(args[n_carry + n_xs:])

        def step(carry, x):
            out = _replay_region(p["body"], list(carry) + list(x) + caps)
            return tuple(out[:n_carry]), tuple(out[n_carry:])
        carry, ys = scan(step, tuple(args[:n_carry]), tuple(args[n_carry:n_carry + n_xs]), dim=p["dim"],
                         reverse=p["reverse"])
        return list(carry) + list(ys)
    n_carry = p["n_carry"]
    consts = list(args[n_carry:])
    return list(while_loop(lambda *c: _replay_region(p["cond_region"], list(c) + consts)[0],
                           lambda *c: tuple(_replay_region(p["body_region"], list(c) + consts)), tuple(args[:n_carry])))


def _leaf_index_of_args(args) -> list[int | None]:
    out, n = [], 0
    for a in args:
        leaves, _ = signature_of((a,), {})
        out.append(n if isinstance(a, Tensor) else None)
        n += len(leaves)
    return out
