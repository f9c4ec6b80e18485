"""Finite-difference gradient checking (float64), as ``torch.autograd.gradcheck``."""

from __future__ import annotations

import numpy as np


class GradcheckError(AssertionError):
    """Analytical and numerical gradients disagree; the message names the input and element."""


def _outputs(fn, inputs):
    out = fn(*inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def numerical_jacobians(fn, inputs, eps: float = 1e-6):
    """d(flattened outputs)/d(flattened input) for each differentiable input, by central differences."""
    from eager.autograd.mode import no_grad
    from eager.backend import to_numpy
    jacobians = []
    with no_grad():
        for x in inputs:
            if not getattr(x, "requires_grad", False):
                jacobians.append(None)
                continue
            base = x._data.copy()
            flat = base.reshape(-1)
            columns = []
            for j in range(flat.size):
                plus, minus = flat.copy(), flat.copy()
                plus[j] += eps
                minus[j] -= eps
                x._data = plus.reshape(base.shape)
                f_plus = np.concatenate([to_numpy(o._data).reshape(-1) for o in _outputs(fn, inputs)])
                x._data = minus.reshape(base.shape)
                f_minus = np.concatenate([to_numpy(o._data).reshape(-1) for o in _outputs(fn, inputs)])
                columns.append((f_plus - f_minus) / (2 * eps))
            x._data = base
            jacobians.append(np.stack(columns, axis=1) if columns else None)
    return jacobians


def analytical_jacobians(fn, inputs):
    """The same Jacobians from autograd, one backward pass per output element."""
    from eager.autograd.functional import grad
    from eager.backend import to_numpy
    from eager.creation import full_like
    from eager.ops import setitem
    outs = _outputs(fn, inputs)
    wrt = [x for x in inputs if getattr(x, "requires_grad", False)]
    rows = {id(x): [] for x in wrt}
    for out in outs:
        for k in range(out.numel()):
            seed = full_like(out, 0.0)
            setitem(seed, np.unravel_index(k, out.shape) if out.ndim else (), 1.0)
            gs = grad([out], wrt, grad_outputs=[seed], retain_graph=True, allow_unused=True)
            for x, g in zip(wrt, gs):
                rows[id(x)].append(np.zeros(x.numel()) if g is None else to_numpy(g._data).reshape(-1))
    return [np.stack(rows[id(x)], axis=0) if getattr(x, "requires_grad", False) and rows[id(x)] else None
            for x in inputs]


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True) -> bool:
    """Check autograd against central finite differences; inputs that require grad must be float64.

        >>> import eager
        >>> x = eager.tensor([1.0, 2.0], dtype=eager.float64, requires_grad=True)
        >>> gradcheck(lambda t: (t * t).sum(), (x,))
        True
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    for i, x in enumerate(inputs):
        if getattr(x, "requires_grad", False) and x.dtype != np.float64:
            raise GradcheckError(f"gradcheck: input {i} is {x.dtype}; finite differences need float64 inputs "
                                 "(create them with dtype=eager.float64).")
    numeric = numerical_jacobians(fn, inputs, eps)
    analytic = analytical_jacobians(fn, inputs)
    for i, (n, a) in enumerate(zip(numeric, analytic)):
        if n is None:
            continue
        if not np.allclose(a, n, atol=atol, rtol=rtol):
            idx = np.unravel_index(np.argmax(np.abs(a - n)), a.shape)
            msg = (f"gradcheck: Jacobian mismatch for input {i} (shape {list(inputs[i].shape)}) at "
                   f"(output element {idx[0]}, input element {idx[1]}): analytical {a[idx]:.6g}, numerical "
                   f"{n[idx]:.6g}; max abs difference {np.abs(a - n).max():.3g} (atol={atol}, rtol={rtol}).")
            if raise_exception:
                raise GradcheckError(msg)
            return False
    return True
