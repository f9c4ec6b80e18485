"""``backward`` and ``grad``: the user-facing entry points of the reverse walk in ``engine``."""

from __future__ import annotations

from eager.autograd.engine import BackwardError, run_backward


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _seed_gradients(outputs, grad_outputs, what):
    from eager.creation import full_like
    grads = []
    for i, (out, g) in enumerate(zip(outputs, grad_outputs)):
        if not out.requires_grad:
            raise BackwardError(f"{what}: element {i} of tensors does not require grad and does not have a "
                                "grad_fn; make sure a leaf it depends on was created with requires_grad=True "
                                "and that it was not computed under no_grad().")
        if g is None:
            if out.numel() != 1:
                raise BackwardError(f"{what}: grad can be implicitly created only for scalar outputs, but this "
                                    f"output has shape {list(out.shape)}; pass gradient= (a tensor of that "
                                    "shape, e.g. ones_like(out)) or reduce it first (out.sum()).")
            g = full_like(out, 1.0)
        elif g.shape != out.shape:
            raise BackwardError(f"{what}: gradient has shape {list(g.shape)} but the output has shape "
                                f"{list(out.shape)}; they must match.")
        grads.append(g)
    return grads


def backward(tensors, grad_tensors=None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of every leaf they depend on."""
    tensors = _as_list(tensors)
    grads = _seed_gradients(tensors, _as_list(grad_tensors) if grad_tensors is not None else [None] * len(tensors),
                            "backward")
    run_backward(tensors, grads, retain_graph=create_graph if retain_graph is None else retain_graph,
                 create_graph=create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool = False) -> tuple:
    """Gradients of ``outputs`` with respect to ``inputs``, returned (``.grad`` is left alone).

        >>> import eager
        >>> x = eager.tensor(3.0, requires_grad=True)
        >>> (dx,) = eager.autograd.grad(x * x, x)
        >>> dx.item()
        6.0
    """
    outputs, inputs = _as_list(outputs), _as_list(inputs)
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            raise BackwardError(f"grad: input {i} (shape {list(x.shape)}) does not require grad; create it "
                                "with requires_grad=True.")
    seeds = _seed_gradients(outputs, _as_list(grad_outputs) if grad_outputs is not None else [None] * len(outputs),
                            "grad")
    captured = run_backward(outputs, seeds, retain_graph=create_graph if retain_graph is None else retain_graph,
                            create_graph=create_graph, inputs=inputs)
    result = tuple(captured[id(x)] for x in inputs)
    for i, (x, g) in enumerate(zip(inputs, result)):
        if g is None and not allow_unused:
            raise BackwardError(f"grad: input {i} (shape {list(x.shape)}) was not used to compute the outputs, "
                                "so it has no gradient; pass allow_unused=True to get None for it.")
    return result


