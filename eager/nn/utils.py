"""Gradient utilities: ``clip_grad_norm_`` and ``clip_grad_value_`` (PyTorch's semantics).

Written with eager ops under ``no_grad`` and without reading values back, so a tracer records the clipping
as part of a training step (no data-dependent Python branch).

    >>> import eager
    >>> w = eager.tensor([3.0, 4.0], requires_grad=True)
    >>> w.grad = eager.tensor([3.0, 4.0])
    >>> clip_grad_norm_([w], max_norm=1.0).item()
    5.0
    >>> [round(v, 4) for v in w.grad.tolist()]
    [0.6, 0.8]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from eager import ops
from eager.autograd.mode import no_grad
from eager.tensor import Tensor


def _grads(parameters) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in params if p._grad is not None]


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients together so their joint ``norm_type``-norm is at most ``max_norm``.

    Returns the total norm before clipping. As in PyTorch the scale is ``max_norm / (norm + 1e-6)`` clamped
    to 1, applied unconditionally (a multiply by 1 when the norm is already small).
    """
    params = _grads(parameters)
    if not params:
        from eager.creation import tensor
        return tensor(0.0)
    with no_grad():
        grads = [p._grad for p in params]
        if norm_type == math.inf:
            norms = [g.abs().amax() for g in grads]
            total = ops.stack(norms).amax() if len(norms) > 1 else norms[0]
        else:
            norms = [ops.norm(g, norm_type) for g in grads]
            total = ops.norm(ops.stack(norms), norm_type) if len(norms) > 1 else norms[0]
        if error_if_nonfinite and not math.isfinite(total.item()):
            raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                               f"{total.item()}, so they cannot be clipped; set error_if_nonfinite=False to "
                               "clip anyway, or find the NaN/Inf with eager.autograd.detect_anomaly().")
        coef = ops.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:  # in place: a tracer sees the .grad tensors mutated, as in PyTorch
            g.mul_(coef.to(g.dtype))
    return total


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value]."""
    with no_grad():
        for p in _grads(parameters):
            p._grad.clamp_(-clip_value, clip_value)
