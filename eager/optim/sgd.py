"""Stochastic gradient descent with momentum, dampening, weight decay and Nesterov (PyTorch's algorithm).

    >>> import eager
    >>> w = eager.tensor([1.0], requires_grad=True)
    >>> opt = SGD([w], lr=0.1)
    >>> (w * 3).sum().backward(); opt.step()
    >>> [round(v, 4) for v in w.tolist()]
    [0.7]
"""

from __future__ import annotations

from collections.abc import Iterable

from eager.autograd.mode import no_grad
from eager.optim.optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD: with g = grad + weight_decay * p,
    buf = g (first step) else momentum * buf + (1 - dampening) * g;
    g = g + momentum * buf (nesterov) or buf; p -= lr * g (``maximize`` ascends instead).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        if lr < 0.0:
            raise ValueError(f"SGD: invalid learning rate {lr}; it must be >= 0.")
        if momentum < 0.0:
            raise ValueError(f"SGD: invalid momentum value {momentum}; it must be >= 0.")
        if weight_decay < 0.0:
            raise ValueError(f"SGD: invalid weight_decay value {weight_decay}; it must be >= 0.")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: Nesterov momentum requires a momentum > 0 and zero dampening (got "
                             f"momentum={momentum}, dampening={dampening}).")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def step(self, closure=None):
        loss = self._closure_loss(closure)
        with no_grad():
            for group in self.param_groups:
                lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
                weight_decay, nesterov = group["weight_decay"], group["nesterov"]
                for p, g in self._params_with_grad(group):
                    if weight_decay != 0:
                        g = g + p * weight_decay
                    if momentum != 0:
                        state = self.state.setdefault(p, {})
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = g.clone()
                        else:
                            buf.mul_(momentum).add_(g, alpha=1 - dampening)
                        g = g + buf * momentum if nesterov else buf
                    p.add_(g, alpha=-lr)  # PyTorch's update: one axpy when run eagerly
        return loss
