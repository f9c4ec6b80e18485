"""The autograd graph (one ``Node`` per recorded op) and the reverse walk over it.

A node keeps what its VJP needs: the op's inputs (tensors and Python scalars), its static params, the
input versions at record time, and the output's array when the VJP reads the output. It holds no strong
reference to its output tensor, so a graph is freed as soon as the user drops the tensors (no cycles).

    >>> import eager
    >>> x = eager.tensor([1.0, 2.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad.tolist()
    [2.0, 4.0]
"""

from __future__ import annotations

import re
import weakref

from eager.autograd.mode import MODE, no_grad


class BackwardError(RuntimeError):
    """backward() cannot run: graph freed, tensor modified in place, bad gradient argument, ..."""


class AnomalyError(RuntimeError):
    """detect_anomaly() found a NaN or Inf gradient; the message names the forward op and its source line."""


class Node:
    """One recorded op in the autograd graph (``tensor.grad_fn``)."""

    __slots__ = ("name", "vjp", "inputs", "params", "versions", "out_data", "out_ref", "out_version",
                 "pre_hooks", "source", "__weakref__")

    def __init__(self, name, vjp, inputs, params, versions, out=None, source=None):
        self.name = name
        self.vjp = vjp
        self.inputs = inputs
        self.params = params
        self.versions = versions
        self.pre_hooks = None
        self.source = source
        if out is not None:  # the VJP reads the output: keep its array and watch its version
            self.out_data = out._data
            self.out_ref = weakref.ref(out)
            self.out_version = out._version
        else:
            self.out_data = self.out_ref = self.out_version = None

    def __repr__(self) -> str:
        return f"<{self.name}>"

    @property
    def next_functions(self) -> tuple:
        """The nodes feeding this one, as in PyTorch: ``(grad_fn or None, index)`` per input tensor."""
        from eager.tensor import Tensor
        return tuple((x.grad_fn, 0) for x in (self.inputs or ()) if isinstance(x, Tensor))

    def register_prehook(self, hook) -> None:
        if self.pre_hooks is None:
            self.pre_hooks = []
        self.pre_hooks.append(hook)

    def _check_alive(self):
        if self.inputs is None:
            raise BackwardError(
                f"Trying to backward through the graph a second time ({self.name} was already freed). "
                "Pass retain_graph=True to the first backward() if you need to run backward twice.")
        from eager.tensor import Tensor
        for i, (x, seen) in enumerate(zip(self.inputs, self.versions)):
            if isinstance(x, Tensor) and x._version != seen:
                raise BackwardError(_modified_message(self, f"input {i}", x, seen))
        if self.out_ref is not None:
            out = self.out_ref()
            if out is not None and out._version != self.out_version:
                raise BackwardError(_modified_message(self, "its output", out, self.out_version))

    def backward(self, grad):
        """Input gradients for one output gradient (a tuple aligned with ``self.inputs``)."""
        self._check_alive()
        out = None
        if self.out_data is not None:
            from eager.tensor import Tensor
            out = Tensor._make(self.out_data, True, self)
        return self.vjp(grad, out, *self.inputs, **self.params)

    def release(self):
        self.inputs = self.out_data = self.out_ref = None


def _modified_message(node, what, tensor, seen):
    where = f" (created at {node.source})" if node.source else ""
    return (f"one of the tensors needed for gradient computation has been modified by an in-place "
            f"operation: {what} of {node.name}{where}, a tensor of shape {list(tensor.shape)}, is at version "
            f"{tensor._version}; expected version {seen}. Clone it before modifying it in place "
            f"(x = x.clone()), or use the out-of-place op.")


def _topological_order(roots):
    """Nodes reachable from the roots, each after every node that feeds gradients into it.

    Iterative post-order DFS; a node is marked when it is expanded (not when pushed), so a node reached by
    two paths is still finished only after everything below it.
    """
    from eager.tensor import Tensor
    order, visited = [], set()
    stack = [(root, False) for root in roots if root is not None]
    while stack:
        node, finished = stack.pop()
        if finished:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for x in node.inputs or ():
            if isinstance(x, Tensor) and x.grad_fn is not None and id(x.grad_fn) not in visited:
                stack.append((x.grad_fn, False))
    order.reverse()
    return order


def _check_finite(node, index, grad):
    xp = grad._xp()
    if not bool(xp.isfinite(grad._data).all()):
        bad = "nan" if bool(xp.isnan(grad._data).any()) else "inf"
        where = node.source or "<source unknown>"
        op = re.sub(r"(?<!^)(?=[A-Z])", "_", node.name.removesuffix("Backward")).lower()  # IndexAdd -> index_add
        raise AnomalyError(f"Function '{node.name}' returned {bad} values in its {index}th output. "
                           f"The forward op was '{op}', created at {where}. "
                           "Check its inputs there (e.g. log of 0, division by 0, sqrt of a negative).")


def run_backward(roots, grads, retain_graph=False, create_graph=False, inputs=None):
    """Propagate ``grads`` from ``roots`` through the graph.

    With ``inputs=None`` gradients accumulate into leaves' ``.grad``; otherwise the gradients of exactly
    those tensors are returned (``autograd.grad``) and no ``.grad`` is touched.
    """
    from eager.tensor import Tensor
    captured = {id(t): None for t in inputs} if inputs is not None else None
    wanted_nodes = {id(t.grad_fn): t for t in inputs if t.grad_fn is not None} if inputs is not None else {}
    pending = {}
    for root, g in zip(roots, grads):
        if root.grad_fn is None:
            _deliver_leaf(root, g, captured, create_graph)
        else:
            key = id(root.grad_fn)
            pending[key] = g if key not in pending else pending[key] + g
    anomaly = MODE.get().anomaly
    ctx = _null() if create_graph else no_grad()
    with ctx:
        for node in _topological_order([r.grad_fn for r in roots]):
            g = pending.pop(id(node), None)
            if g is None:
                if not retain_graph:
                    node.release()
                continue
            if node.pre_hooks:
                for hook in node.pre_hooks:
                    r = hook(g)
                    g = g if r is None else r
            if id(node) in wanted_nodes:
                target = wanted_nodes[id(node)]
                captured[id(target)] = g
            in_grads = node.backward(g)
            inputs_of = node.inputs
            if not retain_graph:
                node.release()
            for i, (x, gi) in enumerate(zip(inputs_of, in_grads)):
                if gi is None or not isinstance(x, Tensor) or not x._requires_grad:
                    continue
                if anomaly:
                    _check_finite(node, i, gi)
                fn = x.grad_fn
                if fn is None:
                    _deliver_leaf(x, gi, captured, create_graph)
                else:
                    key = id(fn)
                    pending[key] = gi if key not in pending else pending[key] + gi
    return captured


def _deliver_leaf(leaf, g, captured, create_graph):
    if captured is not None and id(leaf) not in captured:
        return  # autograd.grad: a leaf that was not asked for
    if leaf._hooks:  # before capture too: autograd.grad sees hooked gradients, as in PyTorch
        for hook in leaf._hooks:
            r = hook(g)
            g = g if r is None else r
    if captured is not None:
        prev = captured[id(leaf)]
        captured[id(leaf)] = g if prev is None else prev + g
        return
    if not create_graph:
        g = g.detach()
    leaf._grad = g if leaf._grad is None else leaf._grad + g


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
