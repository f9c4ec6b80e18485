"""Adam and AdamW (PyTorch's algorithms: bias correction, L2 or decoupled weight decay, AMSGrad).

The step count is a float64 eager Tensor per parameter. Under a tracer the bias corrections are computed
from it with tensor ops, so a traced training step replays with the right correction at every step (a Python
float would be baked into the trace), like PyTorch's ``capturable=True``. Run eagerly, the step reads the count
as a Python float and updates each parameter with a few in-place array calls (``out=``, one scratch buffer), as
PyTorch's default path does; the two paths compute the same operations in the same order (tests check they
agree bit for bit).

    >>> import eager
    >>> w = eager.tensor([1.0], requires_grad=True)
    >>> opt = Adam([w], lr=0.1)
    >>> (w * 3).sum().backward(); opt.step()
    >>> [round(v, 4) for v in w.tolist()]          # the first Adam step moves by lr
    [0.9]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from eager.autograd.mode import MODE, no_grad
from eager.backend import float64
from eager.creation import full
from eager.ops import inplace, maximum, zeros_like
from eager.optim.optimizer import Optimizer


class Adam(Optimizer):
    """m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).

    ``weight_decay`` adds ``wd * p`` to g (L2), unless ``decoupled_weight_decay`` (AdamW), which first
    shrinks p by ``1 - lr * wd``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        name = type(self).__name__
        if lr < 0.0:
            raise ValueError(f"{name}: invalid learning rate {lr}; it must be >= 0.")
        if eps < 0.0:
            raise ValueError(f"{name}: invalid epsilon value {eps}; it must be >= 0.")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name}: invalid beta parameter at index {i}: {beta}; it must be in [0, 1).")
        if weight_decay < 0.0:
            raise ValueError(f"{name}: invalid weight_decay value {weight_decay}; it must be >= 0.")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _init_state(self, p, amsgrad: bool) -> dict:
        state = {"step": full((), 0.0, dtype=float64, device=p.device),
                 "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}
        if amsgrad:
            state["max_exp_avg_sq"] = zeros_like(p)
        return state

    def step(self, closure=None):
        loss = self._closure_loss(closure)
        update = self._update_tensors if MODE.get().recorders else self._update_arrays
        with no_grad():
            for group in self.param_groups:
                for p, g in self._params_with_grad(group):
                    state = self.state.get(p)
                    if state is None:
                        state = self.state[p] = self._init_state(p, group["amsgrad"])
                    update(p, g, state, group)
        return loss

    @staticmethod
    def _update_tensors(p, g, state, group) -> None:
        """One parameter's update in tensor ops: what a trace records (the step count stays a tensor)."""
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        step.add_(1.0)
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1.0 - lr * weight_decay)
            else:
                g = g + p * weight_decay
        exp_avg.add_((g - exp_avg) * (1.0 - beta1))  # lerp, as torch.lerp_ computes it
        exp_avg_sq.mul_(beta2).add_(g * g * (1.0 - beta2))
        # bias corrections in float64 from the step tensor, then cast to the parameter's dtype
        step_size = (lr / (1.0 - beta1 ** step)).to(p.dtype)
        bias_correction2_sqrt = (1.0 - beta2 ** step).sqrt().to(p.dtype)
        second = exp_avg_sq
        if group["amsgrad"]:
            second = inplace(state["max_exp_avg_sq"], maximum, exp_avg_sq)
        denom = second.sqrt() / bias_correction2_sqrt + eps
        p.sub_(exp_avg / denom * step_size)

    @staticmethod
    def _update_arrays(p, g, state, group) -> None:
        """``_update_tensors`` as in-place array calls on the memory of p and its moments (no trace to see it):
        the same operations in the same order, with the bias corrections as Python floats."""
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        step, m, v = state["step"], state["exp_avg"]._data, state["exp_avg_sq"]._data
        data, grad = p._data, g._data
        xp = p._xp()
        step._data += 1.0
        # powers of the betas by the array pow the tensor path uses (libm's pow can differ in the last bit)
        power1, power2 = (float(xp.power(beta, step._data)) for beta in (beta1, beta2))
        scratch = xp.empty_like(data)
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                data *= 1.0 - lr * weight_decay
            else:
                grad = grad + data * weight_decay
        xp.subtract(grad, m, out=scratch)
        scratch *= 1.0 - beta1
        m += scratch
        v *= beta2
        xp.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - beta2
        v += scratch
        second = v
        if group["amsgrad"]:
            second = state["max_exp_avg_sq"]._data
            xp.maximum(second, v, out=second)
            state["max_exp_avg_sq"]._vc.value += 1
        xp.sqrt(second, out=scratch)
        scratch /= data.dtype.type(math.sqrt(1.0 - power2))
        scratch += eps
        xp.divide(m, scratch, out=scratch)
        scratch *= data.dtype.type(lr / (1.0 - power1))
        data -= scratch
        for tensor in (p, step, state["exp_avg"], state["exp_avg_sq"]):
            tensor._vc.value += 1


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay before the step."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
