"""Adam and AdamW (PyTorch's algorithms: bias correction, L2 or decoupled weight decay, AMSGrad).

The step count is a float64 eager Tensor per parameter and the bias corrections are computed from it with
tensor ops, so a traced training step replays with the right correction at every step (a Python float would
be baked into the trace).

    >>> import eager
    >>> w = eager.tensor([1.0], requires_grad=True)
    >>> opt = Adam([w], lr=0.1)
    >>> (w * 3).sum().backward(); opt.step()
    >>> [round(v, 4) for v in w.tolist()]          # the first Adam step moves by lr
    [0.9]
"""

from __future__ import annotations

from collections.abc import Iterable

from eager.autograd.mode import no_grad
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
        with no_grad():
            for group in self.param_groups:
                lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
                weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
                for p, g in self._params_with_grad(group):
                    state = self.state.get(p)
                    if state is None:
                        state = self.state[p] = self._init_state(p, amsgrad)
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
                    if amsgrad:
                        second = inplace(state["max_exp_avg_sq"], maximum, exp_avg_sq)
                    denom = second.sqrt() / bias_correction2_sqrt + eps
                    p.sub_(exp_avg / denom * step_size)
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay before the step."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
