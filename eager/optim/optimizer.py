"""``Optimizer``: parameter groups, per-parameter state, ``zero_grad``, and state_dict save/load.

Subclasses write ``step`` with eager Tensor ops and in-place methods under ``no_grad``: the update is then a
sequence of primitives a tracer can record, and the state (momentum buffers, Adam moments, step counts) is
held in eager Tensors that a trace sees as mutable state.

    >>> import eager
    >>> from eager import nn, optim
    >>> opt = optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    >>> len(opt.param_groups[0]["params"]), opt.param_groups[0]["lr"]
    (2, 0.1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from eager.autograd.mode import enable_grad
from eager.tensor import Tensor


class Optimizer:
    """Base class: holds ``param_groups`` (dicts of hyper-parameters plus ``params``) and ``state``."""

    def __init__(self, params: Iterable, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params should be an iterable of Tensors or dicts, but got a "
                            f"Tensor of shape {list(params.shape)}; pass [tensor] or model.parameters().")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; did the model register its "
                             "parameters (assign nn.Parameter / submodules as attributes)?")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyper-parameters (missing ones take the defaults)."""
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        name = type(self).__name__
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name} can only optimize Tensors, but parameter {i} of group "
                                f"{len(self.param_groups)} is a {type(p).__name__}.")
            if p.grad_fn is not None:
                raise ValueError(f"{name} can't optimize a non-leaf Tensor (parameter {i}: shape {list(p.shape)}, "
                                 f"grad_fn=<{p.grad_fn.name()}>): its .grad is never filled. Pass leaf tensors "
                                 "(model.parameters(), or x.detach().requires_grad_()).")
            if not p.is_floating_point():
                raise TypeError(f"{name} can only optimize floating-point tensors, parameter {i} is {p.dtype}.")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError(f"{name}: some parameters appear more than once (in this group or in an earlier one); "
                             "each parameter must belong to exactly one group.")
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        group["params"] = params
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: to None (default, as PyTorch 2) or to zeros with ``set_to_none=False``."""
        for group in self.param_groups:
            for p in group["params"]:
                if p._grad is not None:
                    if set_to_none:
                        p._grad = None
                    else:
                        p._grad.zero_()

    def step(self, closure: Callable[[], Tensor] | None = None):
        raise NotImplementedError(f"{type(self).__name__} does not implement step().")

    @staticmethod
    def _params_with_grad(group: dict):
        """(parameter, gradient to descend) for each parameter of ``group`` that has a gradient."""
        for p in group["params"]:
            g = p._grad
            if g is not None:
                yield p, (-g if group["maximize"] else g)

    def _closure_loss(self, closure):
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}`` as in PyTorch.

        Parameters are numbered in group order; tensors in the state are detached snapshots.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: v.detach() if isinstance(v, Tensor) else v
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyper-parameters and state saved by ``state_dict`` (tensors move to each parameter's device)."""
        name = type(self).__name__
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved)} parameter groups, this "
                             f"optimizer has {len(self.param_groups)}.")
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in saved]
        if sizes != saved_sizes:
            raise ValueError(f"{name}.load_state_dict: the saved groups hold {saved_sizes} parameters, this "
                             f"optimizer's groups hold {sizes}; load it into an optimizer built the same way.")
        by_index = {}
        for group, saved_group in zip(self.param_groups, saved):
            for p, i in zip(group["params"], saved_group["params"]):
                by_index[i] = p
        self.state = {}
        for i, entries in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: _restore(k, v, p) for k, v in entries.items()}
        for group, saved_group in zip(self.param_groups, saved):
            group.update({k: v for k, v in saved_group.items() if k != "params"})

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {group[k]}" for k in sorted(group) if k != "params")
        return "\n".join(lines) + "\n)"


def _restore(key: str, value, param: Tensor):
    if not isinstance(value, Tensor):
        return value
    # moments follow the parameter's dtype; step counts keep their own (float64) dtype
    dtype = param.dtype if value.is_floating_point() and key != "step" else None
    return value.to(device=param.device, dtype=dtype).clone()
