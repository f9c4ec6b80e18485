"""Pooling: ``F.max_pool1d``/``2d``, ``F.avg_pool1d``/``2d``, ``F.adaptive_avg_pool1d``/``2d`` and their modules.

Composites of existing rows, so every mode and every gradient order gets them without new code: the input is padded
(``F.pad``), its windows are ``unfold`` views (their backward adds up where windows overlap), and then

- max pooling takes each window's ``argmax`` and ``gather``s it: the gradient goes to that one element, the first
  maximum in the window's row-major order, as PyTorch picks it (``amax`` would share it between ties);
- average pooling sums each window and divides by PyTorch's count (padding included or not, ``ceil_mode``'s
  overhang never, or ``divisor_override``);
- adaptive average pooling is two products with constant averaging matrices (PyTorch's windows
  [floor(i * n / out), ceil((i + 1) * n / out))), which handles windows of unequal sizes exactly.

    >>> import eager
    >>> from eager.nn import functional as F
    >>> F.max_pool2d(eager.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[[[5.0, 7.0], [13.0, 15.0]]]]
"""

from __future__ import annotations

import math

import numpy as np

from eager.creation import tensor
from eager.nn.convolution import _ntuple
from eager.nn.module import Module
from eager.nn.padding import pad
from eager.primitives import ShapeError
from eager.tensor import Tensor


def _check_input(op: str, input: Tensor, nd: int) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(input).__name__}.")
    if input.ndim not in (nd + 1, nd + 2):
        raise ShapeError(f"{op}: expected a {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input, got shape "
                         f"{list(input.shape)}.")
    if not input.is_floating_point():
        raise TypeError(f"{op}: expects a floating-point input, got {input.dtype}; call .float() first.")


def _out_size(op: str, shape, size, kernel, stride, pad, dilation, ceil_mode) -> int:
    """PyTorch's pooling_output_shape: with ``ceil_mode`` the last window may start inside the high padding, but
    never beyond it."""
    span = dilation * (kernel - 1) + 1
    num = size + 2 * pad - span
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    if num < 0 or out < 1:
        raise ShapeError(f"{op}: given input size {list(shape)}, kernel {kernel}, stride {stride}, padding {pad} and "
                         f"dilation {dilation}, the calculated output size is {max(out, 0)}: output size is too small.")
    return out


def _args(op: str, input, nd, kernel_size, stride, padding, dilation, ceil_mode, max_pad):
    """The pooling arguments as tuples, checked, and the output spatial shape."""
    _check_input(op, input, nd)
    kernel = _ntuple(op, "kernel_size", kernel_size, nd)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else \
        _ntuple(op, "stride", stride, nd)
    padding, dilation = _ntuple(op, "padding", padding, nd), _ntuple(op, "dilation", dilation, nd)
    if any(v <= 0 for v in kernel + stride + dilation):
        raise ValueError(f"{op}: kernel_size {kernel}, stride {stride} and dilation {dilation} must be positive.")
    for p, k, d in zip(padding, kernel, dilation):
        if p < 0 or p > max_pad(k, d):
            raise ValueError(f"{op}: pad should be at most half of the (effective) kernel size, but got pad={p}, "
                             f"kernel_size={k} and dilation={d}.")
    spatial = input.shape[input.ndim - nd:]
    out = tuple(_out_size(op, input.shape, n, k, s, p, d, ceil_mode)
                for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation))
    return kernel, stride, padding, dilation, out


def _windows(input: Tensor, kernel, stride, padding, dilation, out, fill) -> Tensor:
    """[..., *out, K]: every pooling window of the last ``len(kernel)`` dims (K = its elements, row-major), read
    from the input padded with ``fill`` (high padding only as far as the last window reaches)."""
    nd = len(kernel)
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    spatial = input.shape[input.ndim - nd:]
    highs = [max(0, (o - 1) * s + span - n - p) for o, s, span, n, p in zip(out, stride, spans, spatial, padding)]
    flat = [v for p, h in zip(reversed(padding), reversed(highs)) for v in (p, h)]
    x = pad(input, flat, value=fill) if any(flat) else input
    for i, (span, s) in enumerate(zip(spans, stride)):
        x = x.unfold(input.ndim - nd + i, span, s)  # [..., count, ..., span]: windows stay in the last dims
    if any(d != 1 for d in dilation):
        x = x[(Ellipsis,) + tuple(slice(None, None, d) for d in dilation)]
    return x.reshape(*x.shape[:x.ndim - nd], math.prod(kernel))


def _positions(spatial, kernel, stride, padding, dilation, out) -> np.ndarray:
    """[*out, K] int64: the flat index (row-major over the input's spatial dims) of each window element."""
    flat = np.zeros(tuple(out) + (math.prod(kernel),), np.int64)
    strides = [math.prod(spatial[i + 1:]) for i in range(len(spatial))]
    for i, (o, k, s, p, d) in enumerate(zip(out, kernel, stride, padding, dilation)):
        pos = np.arange(o)[:, None] * s - p + np.arange(k)[None, :] * d  # [o, k] along dim i
        shape = [1] * (2 * len(out))
        shape[i], shape[len(out) + i] = o, k
        grid = np.broadcast_to(pos.reshape(shape), tuple(out) + tuple(kernel))
        flat += (grid * strides[i]).reshape(flat.shape)
    return flat


def _max_pool(nd, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    op = f"max_pool{nd}d"
    kernel, stride, padding, dilation, out = _args(op, input, nd, kernel_size, stride, padding, dilation, ceil_mode,
                                                   lambda k, d: (d * (k - 1) + 1) // 2)
    windows = _windows(input, kernel, stride, padding, dilation, out, -math.inf)
    picked = windows.argmax(-1, keepdim=True)  # the first maximum, in the order PyTorch scans a window
    values = windows.gather(-1, picked).squeeze(-1)
    if not return_indices:
        return values
    spatial = input.shape[input.ndim - nd:]
    positions = tensor(_positions(spatial, kernel, stride, padding, dilation, out), device=input.device)
    return values, positions.expand(*windows.shape).gather(-1, picked).squeeze(-1)


def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """``torch.nn.functional.max_pool1d`` over the last dim of [N, C, L] (or [C, L])."""
    return _max_pool(1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """``torch.nn.functional.max_pool2d`` over the last two dims of [N, C, H, W] (or [C, H, W]); with
    ``return_indices`` also each maximum's flat index into H * W. The gradient goes to each window's first
    maximum (adding up where windows overlap).

        >>> import eager
        >>> max_pool2d(eager.tensor([[[[1.0, 3.0], [3.0, 2.0]]]]), 2, return_indices=True)[1].tolist()
        [[[[1]]]]
    """
    return _max_pool(2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _avg_divisor(spatial, kernel, stride, padding, out, count_include_pad) -> np.ndarray:
    """[*out]: PyTorch's count per window: the padded extent (``count_include_pad``) or the input elements only,
    never the part of a ``ceil_mode`` window past the high padding."""
    counts = []
    for n, k, s, p, o in zip(spatial, kernel, stride, padding, out):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        counts.append(end - start if count_include_pad else np.minimum(end, n) - np.maximum(start, 0))
    total = counts[0]
    for c in counts[1:]:
        total = np.multiply.outer(total, c)
    return total


def _avg_pool(nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    op = f"avg_pool{nd}d"
    kernel, stride, padding, dilation, out = _args(op, input, nd, kernel_size, stride, padding, 1, ceil_mode,
                                                   lambda k, d: k // 2)
    sums = _windows(input, kernel, stride, padding, dilation, out, 0.0).sum(-1)
    if divisor_override is not None:
        if divisor_override == 0:
            raise ValueError(f"{op}: divisor_override must be non-zero.")
        return sums / divisor_override
    divisor = _avg_divisor(input.shape[input.ndim - nd:], kernel, stride, padding, out, count_include_pad)
    if np.all(divisor == divisor.flat[0]):
        return sums / float(divisor.flat[0])
    return sums / tensor(divisor, dtype=input.dtype, device=input.device)


def avg_pool1d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """``torch.nn.functional.avg_pool1d`` over the last dim of [N, C, L] (or [C, L])."""
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` over the last two dims of [N, C, H, W] (or [C, H, W]).

        >>> import eager
        >>> avg_pool2d(eager.ones(1, 1, 3, 3), 2, padding=1, count_include_pad=False).tolist()
        [[[[1.0, 1.0], [1.0, 1.0]]]]
    """
    return _avg_pool(2, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _averaging(n: int, out: int) -> np.ndarray:
    """[out, n]: row i averages PyTorch's adaptive window [floor(i * n / out), ceil((i + 1) * n / out))."""
    m = np.zeros((out, n))
    for i in range(out):
        start, end = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _adaptive_avg_pool(nd: int, input: Tensor, output_size) -> Tensor:
    op = f"adaptive_avg_pool{nd}d"
    _check_input(op, input, nd)
    sizes = (output_size,) * nd if isinstance(output_size, int) or output_size is None else tuple(output_size)
    if len(sizes) != nd:
        raise ValueError(f"{op}: output_size must be an int or {nd} values, got {output_size!r}.")
    spatial = input.shape[input.ndim - nd:]
    sizes = tuple(n if s is None else int(s) for s, n in zip(sizes, spatial))
    if any(s <= 0 for s in sizes) or any(n <= 0 for n in spatial):
        raise ShapeError(f"{op}: output_size {sizes} and the input's spatial sizes {list(spatial)} must be positive.")
    out = input
    for i, (n, s) in enumerate(zip(spatial, sizes)):
        if n == s:
            continue
        m = tensor(_averaging(n, s), dtype=input.dtype, device=input.device)
        dim = input.ndim - nd + i
        moved = out.transpose(dim, -1) if dim != input.ndim - 1 else out
        pooled = moved @ m.T  # averaged along the last dim
        out = pooled.transpose(dim, -1) if dim != input.ndim - 1 else pooled
    return out


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool1d``: the last dim averaged down (or up) to ``output_size``."""
    return _adaptive_avg_pool(1, input, output_size)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d``: the last two dims averaged to ``output_size`` (an int, a pair,
    None keeping a size); ``(1, 1)`` is a global average pool.

        >>> import eager
        >>> adaptive_avg_pool2d(eager.arange(6.0).reshape(1, 2, 3), 1).tolist()
        [[[2.5]]]
    """
    return _adaptive_avg_pool(2, input, output_size)


# ---------------------------------------------------------------- modules


class _MaxPoolNd(Module):
    _nd = 0

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input: Tensor):
        return _max_pool(self._nd, input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                         self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool1d(_MaxPoolNd):
    _nd = 1


class MaxPool2d(_MaxPoolNd):
    """``torch.nn.MaxPool2d``; ``stride`` defaults to ``kernel_size``.

        >>> MaxPool2d(2)
        MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    """

    _nd = 2


class _AvgPoolNd(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.ceil_mode, self.count_include_pad = padding, ceil_mode, count_include_pad

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool1d(_AvgPoolNd):
    """``torch.nn.AvgPool1d`` (which, unlike the 2-D one, keeps its arguments as 1-tuples)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(_ntuple("AvgPool1d", "kernel_size", kernel_size, 1),
                         None if stride is None else _ntuple("AvgPool1d", "stride", stride, 1),
                         _ntuple("AvgPool1d", "padding", padding, 1), ceil_mode, count_include_pad)

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)


class AvgPool2d(_AvgPoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                          self.divisor_override)


class AdaptiveAvgPool1d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool1d(input, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(AdaptiveAvgPool1d):
    """``torch.nn.AdaptiveAvgPool2d``: ``AdaptiveAvgPool2d(1)`` is the global average pool of a ResNet head."""

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool2d(input, self.output_size)
