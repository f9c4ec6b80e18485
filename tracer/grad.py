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
from dataclasses import dataclass

from eager.autograd.functional import grad as autograd_grad
from eager.autograd.mode import MODE, enable_grad
from eager.control import CONTROL_OPS
from eager.dispatch import apply
from eager.ops import zeros_like
from eager.primitives import PRIMITIVES, STOP_GRADIENT
from eager.tensor import Tensor
from tracer.interpret import Rule, evaluate
from tracer.ir import Graph, Node
from tracer.signature import signature_of
from tracer.slots import Slot
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
    _require_pure_loss(forward, entry)
    graph = entry.graph
    others = [n for n in graph.placeholders if n.role != "input"]
    backward = _Backward(graph, _wanted_leaves(forward, example_inputs, argnums),
                         dict(zip((n.id for n in others), entry.plan.readers)),
                         wrt_params, return_value, single=isinstance(argnums, int))

    def backward_program(*args):
        return backward(args)

    try:  # the backward program takes the forward's arguments: name them alike in graphs and messages
        backward_program.__signature__ = inspect.signature(getattr(forward.fn, "forward", forward.fn))
    except (TypeError, ValueError):
        pass
    traced = Traced(backward_program, name=f"grad({forward.name})",
                    extra_params={n.name: backward.slots[n.id] for n in others})
    traced.entry_for(*example_inputs)
    return traced


def _require_pure_loss(forward: Traced, entry) -> None:
    """grad differentiates a pure function whose first output is a floating-point scalar."""
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


def _wanted_leaves(forward: Traced, example_inputs: tuple, argnums) -> set[int]:
    """The tensor leaves (input placeholders) of the arguments named by ``argnums``, checked."""
    wanted = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    leaf_of_arg = _leaf_index_of_args(example_inputs)
    for i in wanted:
        if not (0 <= i < len(example_inputs)) or leaf_of_arg[i] is None:
            raise ValueError(f"tracer.grad: argnums={argnums} names argument {i}, which is not a tensor argument "
                             f"of {forward.name} (it takes {len(example_inputs)} arguments).")
        if example_inputs[i].dtype.kind != "f":
            raise ValueError(f"tracer.grad: argument {i} is {example_inputs[i].dtype}; only floating-point "
                             "inputs have gradients.")
    return {leaf_of_arg[i] for i in wanted}


@dataclass
class _Backward:
    """The program ``grad`` traces: replay the forward graph under autograd, then differentiate it."""

    graph: Graph
    wanted: set[int]              # input leaves to differentiate
    slots: dict[int, Slot]        # param/state placeholder id -> where its tensor is read
    wrt_params: bool
    return_value: bool
    single: bool                  # argnums was one int: give one gradient, not a tuple

    def __call__(self, args: tuple):
        leaves, _ = signature_of(args, {})
        with enable_grad():
            env, xs, params = self._feed(leaves)
            value = evaluate(self.graph, [env[n.id] for n in self.graph.placeholders], _ReplayRule())[0]
            wrt = xs + (list(params.values()) if self.wrt_params else [])
            grads = autograd_grad(value.sum() if value.shape else value, wrt, allow_unused=True)
        grads = [zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
        result = tuple(grads[:len(xs)])
        if self.wrt_params:
            result = result + (dict(zip(params, grads[len(xs):])),)
        elif len(result) == 1 and self.single:
            result = result[0]
        return (value, result) if self.return_value else result

    def _feed(self, leaves: list) -> tuple[dict[int, Tensor], list[Tensor], dict[str, Tensor]]:
        """Each placeholder's tensor; the wanted inputs as fresh leaves that require grad; the trainable params."""
        env: dict[int, Tensor] = {}
        xs: list[Tensor] = []
        for i, (node, t) in enumerate(zip(self.graph.inputs_with_role("input"), leaves)):
            if i in self.wanted:
                t = apply(STOP_GRADIENT, t).requires_grad_(True)
                xs.append(t)
            env[node.id] = t
        params: dict[str, Tensor] = {}
        for node in self.graph.placeholders:
            if node.role != "input":
                t = env[node.id] = self.slots[node.id].get()
                if t._requires_grad:
                    params[node.name] = t
        return env, xs, params


class _ReplayRule(Rule):
    """Replays each node through eager ``apply``, so autograd records it; inside a trace, each recorded call
    keeps the source line of the forward node it replays."""

    def __init__(self):
        self.recorder = MODE.get().recorders[-1] if MODE.get().recorders else None

    def constant(self, node: Node) -> Tensor:
        return Tensor(node.value)

    def call(self, node: Node, args: list) -> Tensor:
        if node.op in CONTROL_OPS:
            raise NotImplementedError(
                f"tracer.grad does not differentiate through a control-flow node yet ({node.format()}); trace the "
                "whole step instead (call loss.backward() inside the traced function: cond and scan differentiate "
                "there), or keep nested control flow out of a region that is differentiated.")
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
