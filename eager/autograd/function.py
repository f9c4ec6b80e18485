"""Custom autograd functions: user-written forward and backward that count as ONE graph node.

    >>> import eager
    >>> class Square(eager.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return 2 * x * g
    >>> x = eager.tensor(3.0, requires_grad=True)
    >>> y = Square.apply(x)
    >>> y.grad_fn
    <SquareBackward>
    >>> y.backward(); x.grad.item()
    6.0
"""

from __future__ import annotations

import weakref

from eager.autograd.engine import BackwardError, Node
from eager.autograd.mode import MODE, no_grad, user_source


class FunctionCtx:
    """What ``forward`` hands to ``backward``: saved tensors (version-checked) and free attributes."""

    def __init__(self, name: str, needs_input_grad: tuple):
        self._name = name
        self._saved = ()
        self._versions = ()
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *tensors) -> None:
        self._saved = tensors
        self._versions = tuple(getattr(t, "_version", 0) for t in tensors)

    @property
    def saved_tensors(self) -> tuple:
        for i, (t, seen) in enumerate(zip(self._saved, self._versions)):
            live = t.ref() if type(t) is _SavedOutput else t
            if live is not None and live._version != seen:
                raise BackwardError(f"{self._name}: saved tensor {i} (shape {list(live.shape)}) was modified in "
                                    f"place after save_for_backward (version {live._version}, expected {seen}); "
                                    "clone it before modifying it.")
        return tuple(t.unpack() if type(t) is _SavedOutput else t for t in self._saved)


class _SavedOutput:
    """The Function's own output in ``saved_tensors``, held without a strong reference: output -> node ->
    backward -> ctx -> output would be a reference cycle, keeping the graph alive until the garbage collector
    runs. Unpacked, it is a tensor with the same array and the node as ``grad_fn`` (as PyTorch does)."""

    __slots__ = ("data", "ref", "node_ref")

    def __init__(self, out, node):
        self.data, self.ref, self.node_ref = out._data, weakref.ref(out), weakref.ref(node)

    def unpack(self):
        from eager.tensor import Tensor
        return Tensor._make(self.data, True, self.node_ref())


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grads)``; call ``.apply``."""

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("Function subclasses must implement a static forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("Function subclasses must implement a static backward(ctx, *grads)")

    @classmethod
    def apply(cls, *args):
        from eager import primitives as P
        from eager.dispatch import apply
        from eager.tensor import Tensor
        name = f"{cls.__name__}Backward"
        needs = tuple(isinstance(a, Tensor) and a._requires_grad for a in args)
        ctx = FunctionCtx(name, needs)
        with no_grad():
            out = cls.forward(ctx, *args)
            if not isinstance(out, Tensor):
                raise TypeError(f"{cls.__name__}.forward must return one Tensor, got {type(out).__name__}")
            if any(out is a for a in args):  # never re-parent an input: give the output its own identity
                out = apply(P.STOP_GRADIENT, out)
        mode = MODE.get()
        if mode.grad_enabled and any(needs):
            out._requires_grad = True
            # no inputs are checked here: the ctx checks what forward saved (save_for_backward), as PyTorch does
            out.grad_fn = Node(name, _vjp_of(cls, ctx, len(args)), args, {}, (), None,
                               user_source() if mode.anomaly else None)
            if any(t is out for t in ctx._saved):
                ctx._saved = tuple(_SavedOutput(out, out.grad_fn) if t is out else t for t in ctx._saved)
        return out


def _vjp_of(cls, ctx, n_inputs):
    def vjp(g, out, *inputs):
        grads = cls.backward(ctx, g)
        grads = grads if isinstance(grads, tuple) else (grads,)
        if len(grads) != n_inputs:
            raise BackwardError(f"{cls.__name__}.backward returned {len(grads)} gradients, but forward took "
                                f"{n_inputs} inputs; return one per input (None for non-tensors).")
        for i, (x, gx) in enumerate(zip(inputs, grads)):
            if gx is not None and hasattr(x, "shape") and gx.shape != x.shape:
                raise BackwardError(f"{cls.__name__}.backward: gradient {i} has shape {list(gx.shape)}, but "
                                    f"input {i} has shape {list(x.shape)}.")
        return grads
    vjp.user_code = True  # the engine copies what it returns before storing it as a .grad
    return vjp
