"""Batch normalisation: ``F.batch_norm`` and ``nn.BatchNorm1d``/``BatchNorm2d`` (PyTorch's semantics and names).

A composite of existing ops (means over the batch and spatial dims, then one elementwise expression), so it fuses like
layer_norm does. In training the batch statistics normalise and the running statistics, buffers of the module, are
updated in place under ``no_grad`` (``running = (1 - momentum) * running + momentum * batch``, the unbiased variance);
a trace records those writes as state updates, so a traced or compiled train step updates them too. In ``eval()``
the running statistics normalise. ``momentum=None`` is PyTorch's cumulative average, 1 / num_batches_tracked,
computed as a tensor (no value leaves the graph).

    >>> import eager
    >>> from eager import nn
    >>> bn = nn.BatchNorm1d(2)
    >>> _ = bn(eager.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> [round(v, 4) for v in bn.running_mean.tolist() + bn.running_var.tolist()], bn.num_batches_tracked.item()
    ([0.1, 0.2, 1.1, 1.1], 1)
"""

from __future__ import annotations

from eager import backend, ops
from eager.autograd.mode import no_grad
from eager.creation import empty, ones, tensor, zeros
from eager.nn import init
from eager.nn.module import Module, Parameter
from eager.primitives import ShapeError
from eager.tensor import Tensor


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    return (1, input.shape[1]) + (1,) * (input.ndim - 2)


def _check_stat(name: str, stat: Tensor | None, channels: int) -> None:
    if stat is not None and tuple(stat.shape) != (channels,):
        raise ShapeError(f"batch_norm: {name} should contain {channels} elements (one per input channel, dim 1 of "
                         f"the input), not {stat.numel()} (shape {list(stat.shape)}).")


def _update(running: Tensor, batch: Tensor, momentum) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` in place; ``momentum`` a float or a 0-d tensor."""
    running.mul_(1.0 - momentum).add_(batch * momentum)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum=0.1, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.batch_norm`` over dim 1 of [N, C, ...]: in training (or without running statistics)
    normalise with the batch's mean and biased variance, and update ``running_mean``/``running_var`` in place when
    given; otherwise normalise with them. Then scale by ``weight`` and shift by ``bias`` (per channel).

        >>> import eager
        >>> batch_norm(eager.tensor([[1.0], [3.0]]), None, None, training=True, eps=0.0).tolist()
        [[-1.0], [1.0]]
    """
    if not isinstance(input, Tensor) or input.ndim < 2:
        raise ShapeError(f"batch_norm: expected an input of at least 2 dims [N, C, ...], got "
                         f"{list(getattr(input, 'shape', []))}.")
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        _check_stat(name, t, channels)
    shape = _channel_shape(input)
    dims = (0,) + tuple(range(2, input.ndim))
    if training or running_mean is None or running_var is None:
        count = input.numel() // channels
        if training and count <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input size "
                             f"{list(input.shape)}.")
        mean = input.mean(dims, keepdim=True)
        centered = input - mean
        var = (centered * centered).mean(dims, keepdim=True)
        if training:
            with no_grad():
                if running_mean is not None:
                    _update(running_mean, mean.detach().reshape(channels), momentum)
                if running_var is not None:
                    _update(running_var, var.detach().reshape(channels) * (count / (count - 1)), momentum)
    else:
        centered = input - running_mean.reshape(shape)
        var = running_var.reshape(shape)
    out = centered * ops.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


class _BatchNorm(Module):
    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(empty(num_features, dtype=dtype, device=device))
            if bias:
                self.bias = Parameter(empty(num_features, dtype=dtype, device=device))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dtype, device=device))
            self.register_buffer("running_var", ones(num_features, dtype=dtype, device=device))
            self.register_buffer("num_batches_tracked", tensor(0, dtype=backend.int64, device=device))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            with no_grad():
                self.running_mean.zero_()
                self.running_var.fill_(1.0)
                self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim not in self._dims:
            want = " or ".join(f"{d}D" for d in self._dims)
            raise ShapeError(f"{type(self).__name__}: expected {want} input (got {input.ndim}D input of shape "
                             f"{list(input.shape)}).")
        if input.shape[1] != self.num_features:
            raise ShapeError(f"{type(self).__name__}: the input of shape {list(input.shape)} has {input.shape[1]} "
                             f"channels in dim 1, but the layer was built for num_features={self.num_features}.")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            with no_grad():
                self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average: 1 / batches so far, as a tensor (no value read back)
                factor = 1.0 / self.num_batches_tracked.to(self.running_mean.dtype)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                          self.weight, self.bias, use_batch, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d`` over [N, C] or [N, C, L]."""

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d`` over [N, C, H, W]: buffers running_mean, running_var and num_batches_tracked.

        >>> BatchNorm2d(8)
        BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """

    _dims = (4,)

