"""``tracer.grad``: a static backward graph derived from a traced forward graph, with the same VJP rules.

The forward graph is replayed through eager ops (``apply``) on leaves that require grad, inside a new trace,
and ``eager.autograd.grad`` walks the replay backwards; every VJP rule is written with Tensor ops, so the
backward pass is recorded too. The result is one static graph (forward + backward) that a call runs without
any eager autograd.

    >>> import eager
    >>> dx = grad(lambda x: (x * x).sum(), eager.ones(3))
    >>> dx(eager.tensor([1.0, 2.0, 3.0])).tolist()
    [2.0, 4.0, 6.0]
"""

from __future__ import annotations

import inspect

from eager.autograd.functional import grad as autograd_grad
from eager.autograd.mode import MODE, enable_grad
from eager.dispatch import apply
from eager.ops import zeros_like
from eager.primitives import PRIMITIVES, STOP_GRADIENT
from eager.tensor import Tensor
from tracer.interpret import Rule, evaluate
from tracer.ir import Node
from tracer.signature import signature_of
from tracer.traced import Traced, trace


def grad(fn, *example_inputs, argnums: int | tuple[int, ...] = 0, wrt_params: bool = False,
         return_value: bool = False) -> Traced:
    """Trace the gradient of ``fn``'s scalar output with respect to the tensor arguments in ``argnums``.

    ``fn`` may be a function, a Module or an existing ``Traced``. The returned ``Traced`` gives the gradient
    (a tensor, or a tuple for several ``argnums``); with ``wrt_params=True`` it gives ``(input grads...,
    {param name: grad})``; with ``return_value=True`` it gives ``(value, grads)``.
    """
    forward = fn if isinstance(fn, Traced) else trace(fn, *example_inputs)
    entry = forward.entry_for(*example_inputs)
    graph = entry.graph
    if graph.updates or entry.plan.extra_slots:
        changed = [p.name for p, _ in graph.updates] + [s.name for s in entry.plan.extra_slots]
        raise ValueError(f"tracer.grad: {forward.name} changes state ({', '.join(changed)}); grad needs a pure "
                         "function of its inputs (trace the forward alone, without backward() or an optimizer).")
    out = graph.outputs[0] if graph.outputs else None
    if out is None or out.shape not in ((), (1,)) or out.dtype.kind != "f" or entry.plan.conversions[0] is not None:
        what = "nothing" if out is None else f"{out.aval}"
        raise ValueError(f"tracer.grad: {forward.name} must return a scalar floating-point tensor first (a loss); "
                         f"it returns {what}. Reduce it first (e.g. .sum() or .mean()).")
    wanted = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    leaves, _ = signature_of(example_inputs, {})
    leaf_of_arg = _leaf_index_of_args(example_inputs)
    for i in wanted:
        if not (0 <= i < len(example_inputs)) or leaf_of_arg[i] is None:
            raise ValueError(f"tracer.grad: argnums={argnums} names argument {i}, which is not a tensor argument "
                             f"of {forward.name} (it takes {len(example_inputs)} arguments).")
        if example_inputs[i].dtype.kind != "f":
            raise ValueError(f"tracer.grad: argument {i} is {example_inputs[i].dtype}; only floating-point "
                             "inputs have gradients.")
    wanted_leaves = {leaf_of_arg[i] for i in wanted}
    inputs = graph.inputs_with_role("input")
    others = [n for n in graph.placeholders if n.role != "input"]
    slots = dict(zip((n.id for n in others), entry.plan.readers))
    param_names = {n.id: n.name for n in others}

    def backward_program(*args):
        args_leaves, _ = signature_of(args, {})
        env = {}
        xs = []
        with enable_grad():
            for i, (node, t) in enumerate(zip(inputs, args_leaves)):
                if i in wanted_leaves:
                    t = apply(STOP_GRADIENT, t).requires_grad_(True)
                    xs.append(t)
                env[node.id] = t
            params = {}
            for node in others:
                env[node.id] = slots[node.id].get()
                if env[node.id]._requires_grad:
                    params[param_names[node.id]] = env[node.id]
            value = evaluate(graph, [env[n.id] for n in graph.placeholders], _ReplayRule())[0]
            wrt = xs + (list(params.values()) if wrt_params else [])
            grads = autograd_grad(value.sum() if value.shape else value, wrt, allow_unused=True)
        grads = [zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
        result = tuple(grads[:len(xs)])
        if wrt_params:
            result = result + (dict(zip(params, grads[len(xs):])),)
        elif len(result) == 1 and isinstance(argnums, int):
            result = result[0]
        return (value, result) if return_value else result

    try:  # the backward program takes the forward's arguments: name them alike in graphs and messages
        backward_program.__signature__ = inspect.signature(getattr(forward.fn, "forward", forward.fn))
    except (TypeError, ValueError):
        pass
    traced = Traced(backward_program, name=f"grad({forward.name})",
                    extra_params={param_names[n.id]: slots[n.id] for n in others})
    traced.entry_for(*example_inputs)
    return traced


class _ReplayRule(Rule):
    """Replays each node through eager ``apply``, so autograd records it; inside a trace, each recorded call
    keeps the source line of the forward node it replays."""

    def __init__(self):
        self.recorder = MODE.get().recorders[-1] if MODE.get().recorders else None

    def constant(self, node: Node) -> Tensor:
        return Tensor(node.value)

    def call(self, node: Node, args: list) -> Tensor:
        if self.recorder is None:
            return apply(PRIMITIVES[node.op], *args, **node.params)
        self.recorder.source_hint = node.source
        try:
            return apply(PRIMITIVES[node.op], *args, **node.params)
        finally:
            self.recorder.source_hint = None


def _leaf_index_of_args(args) -> list[int | None]:
    out, n = [], 0
    for a in args:
        leaves, _ = signature_of((a,), {})
        out.append(n if isinstance(a, Tensor) else None)
        n += len(leaves)
    return out
