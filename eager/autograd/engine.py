"""The autograd graph (one ``Node`` per recorded op) and the reverse walk over it.

A node keeps what its VJP needs: the op's inputs (tensors and Python scalars), its static params, the
versions of the inputs whose values the VJP reads (the primitive's ``reads``; only those are checked, as PyTorch
checks only saved tensors), and the output's array when the VJP reads the output. It holds no strong
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
from eager.storage import memory_owner, overlapping, writeable


class BackwardError(RuntimeError):
    """backward() cannot run: graph freed, tensor modified in place, bad gradient argument, ..."""


class AnomalyError(RuntimeError):
    """detect_anomaly() found a NaN or Inf gradient; the message names the forward op and its source line."""


class Node:
    """One recorded op in the autograd graph (``tensor.grad_fn``)."""

    __slots__ = ("_name", "vjp", "inputs", "params", "saved", "edges", "out_data", "out_ref", "out_version",
                 "pre_hooks", "source", "__weakref__")

    def __init__(self, name, vjp, inputs, params, saved=(), out=None, source=None, edges=None):
        self._name = name
        self.vjp = vjp
        self.inputs = inputs
        self.params = params
        self.saved = saved  # (input position, its version when recorded) for each input the VJP reads
        # where each input's gradient goes, fixed now: a later in-place op gives the input tensor a new history,
        # which gradients of this (earlier) op must not flow into
        self.edges = [_edge(x) for x in inputs] if edges is None else edges
        self.pre_hooks = None
        self.source = source
        if out is not None:  # the VJP reads the output: keep its array and watch its version
            self.out_data = out._data
            self.out_ref = weakref.ref(out)
            self.out_version = out._version
        else:
            self.out_data = self.out_ref = self.out_version = None

    def __repr__(self) -> str:
        return f"<{self._name}>"

    def name(self) -> str:
        """The node's name, as PyTorch's ``grad_fn.name()``: ``MulBackward``."""
        return self._name

    @property
    def next_functions(self) -> tuple:
        """The nodes feeding this one, as in PyTorch: ``(grad_fn or None, index)`` per input tensor."""
        from eager.tensor import Tensor
        return tuple((e if isinstance(e, Node) else None, 0) for x, e in zip(self.inputs or (), self.edges or ())
                     if isinstance(x, Tensor))

    def register_prehook(self, hook) -> None:
        if self.pre_hooks is None:
            self.pre_hooks = []
        self.pre_hooks.append(hook)

    def _check_alive(self):
        if self.inputs is None:
            raise BackwardError(
                f"Trying to backward through the graph a second time ({self._name} was already freed). "
                "Pass retain_graph=True to the first backward() if you need to run backward twice.")
        for i, seen in self.saved:
            x = self.inputs[i]
            if x._version != seen:
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
        self.inputs = self.out_data = self.out_ref = self.edges = None


def _edge(x):
    """An input's gradient destination: its grad_fn, the tensor itself for a leaf that requires grad, or None."""
    if getattr(x, "_requires_grad", False):
        return x.grad_fn if x.grad_fn is not None else x
    return None


def _modified_message(node, what, tensor, seen):
    where = f" (created at {node.source})" if node.source else ""
    return (f"one of the tensors needed for gradient computation has been modified by an in-place "
            f"operation: {what} of {node._name}{where}, a tensor of shape {list(tensor.shape)}, is at version "
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
        for e in node.edges or ():
            if e is not None and not isinstance(e, Tensor) and id(e) not in visited:
                stack.append((e, False))
    order.reverse()
    return order


def _check_finite(node, index, grad):
    if not hasattr(grad, "_xp"):  # a control node's packed cotangents (tracer.regions): checked per result
        return
    xp = grad._xp()
    if not bool(xp.isfinite(grad._data).all()):
        bad = "nan" if bool(xp.isnan(grad._data).any()) else "inf"
        where = node.source or "<source unknown>"
        op = re.sub(r"(?<!^)(?=[A-Z])", "_", node._name.removesuffix("Backward")).lower()  # IndexAdd -> index_add
        raise AnomalyError(f"Function '{node._name}' returned {bad} values in its {index}th output. "
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
    # pending keys whose gradient no other destination holds (a VJP's fresh result, or a sum): a VJP may pass such
    # a gradient on (a reshape's or permute's view, add's g itself) to one edge, and a leaf may keep it as .grad
    exclusive: set[int] = set()
    delivered: set = set()  # ids of the arrays owning the memory of the .grad tensors stored in this backward
    for root, g in zip(roots, grads):
        if root.grad_fn is None:  # the caller's own gradient: never stored as .grad itself
            _deliver_leaf(root, g, captured, create_graph, delivered, shared=True)
        else:
            key = id(root.grad_fn)
            pending[key] = g if key not in pending else pending[key] + g
    anomaly = MODE.get().anomaly
    ctx = _null() if create_graph else no_grad()
    with ctx:
        for node in _topological_order([r.grad_fn for r in roots]):
            g = pending.pop(id(node), None)
            owned = id(node) in exclusive
            exclusive.discard(id(node))
            if g is None:
                if not retain_graph:
                    node.release()
                continue
            if node.pre_hooks:
                for hook in node.pre_hooks:
                    r = hook(g)
                    g, owned = (g, owned) if r is None else (r, False)  # the hook's tensor: it may keep it
            if id(node) in wanted_nodes:
                target = wanted_nodes[id(node)]
                captured[id(target)] = g
                owned = False
            in_grads = node.backward(g)
            incoming = memory_owner(g._data)
            user_code = getattr(node.vjp, "user_code", False)  # a Function's backward may return what it keeps
            edges = node.edges
            if not retain_graph:
                node.release()
            owners = [None if gi is None else memory_owner(gi._data) for gi in in_grads]
            uses: dict[int, int] = {}
            for owner in owners:
                uses[id(owner)] = uses.get(id(owner), 0) + 1
            for i, (e, gi) in enumerate(zip(edges, in_grads)):
                if gi is None or e is None:
                    continue
                if anomaly:
                    _check_finite(node, i, gi)
                passed_on = gi is g or owners[i] is incoming  # the VJP handed on (a view of) its incoming gradient
                alone = uses[id(owners[i])] == 1 and owners[i] is not None and not user_code
                sole = alone and (owned or not passed_on)
                if isinstance(e, Tensor):
                    _deliver_leaf(e, gi, captured, create_graph, delivered, shared=not sole)
                else:
                    key = id(e)
                    if key not in pending:
                        pending[key] = gi
                        if sole:
                            exclusive.add(key)
                    else:
                        pending[key] = pending[key] + gi
                        exclusive.add(key)  # a fresh sum
    return captured


def _deliver_leaf(leaf, g, captured, create_graph, delivered: set, shared: bool):
    if captured is not None and id(leaf) not in captured:
        return  # autograd.grad: a leaf that was not asked for
    if leaf._hooks:  # before capture too: autograd.grad sees hooked gradients, as in PyTorch
        for hook in leaf._hooks:
            r = hook(g)
            if r is not None:
                g, shared = r, True  # the hook's own tensor: it may keep it
    if captured is not None:
        prev = captured[id(leaf)]
        captured[id(leaf)] = g if prev is None else prev + g
        return
    if leaf._grad is None:
        leaf._grad = g if create_graph else _owned_gradient(g, leaf, delivered, shared)
    elif create_graph or MODE.get().recorders or not _accumulate_in_place(leaf._grad, g):  # a trace: functional
        leaf._grad = leaf._grad + g if create_graph else (leaf._grad + g).detach()


def _accumulate_in_place(grad, g) -> bool:
    """``.grad += g`` in its memory, as PyTorch accumulates outside create_graph: ``saved = w.grad`` sees later
    backward passes. False where that memory cannot take it (read-only, another shape or dtype)."""
    data = grad._data
    if grad.shape != g.shape or data.dtype != g._data.dtype or not writeable(data) or \
            type(data) is not type(g._data) or overlapping(data):
        return False
    data += g._data
    grad._vc.value += 1
    return True


def _owned_gradient(g, leaf, delivered: set, shared: bool):
    """A first gradient as ``.grad``: its own memory, laid out like the leaf (PyTorch's AccumulateGrad contract).
    A VJP may hand out a view of another gradient (a permute's, an expand's broadcast) or one tensor to two
    leaves (add's): ``w.grad.zero_()`` then must not write another tensor, and the optimizer's in-place
    updates must not mix a transposed gradient with a contiguous parameter (NumPy's slow strided path)."""
    from eager.dispatch import apply
    from eager.primitives import COPY
    from eager.tensor import Tensor
    data, like = g._data, leaf._data
    laid_out = data.flags.c_contiguous or (data.flags.f_contiguous and like.flags.f_contiguous)
    if shared or id(memory_owner(data)) in delivered or not laid_out or not writeable(data):
        g = apply(COPY, g)  # through apply: a trace records the copy like any op
        data = g._data
    delivered.add(id(memory_owner(data)))
    return Tensor._make(data, False, None)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
