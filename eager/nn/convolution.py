"""Convolutions: ``F.conv1d``/``conv2d``, ``F.conv_transpose1d``/``conv_transpose2d`` and their modules.

PyTorch's layouts and names: input [N, C, *spatial] (or unbatched [C, *spatial]), weight [out_channels,
in_channels / groups, *kernel] (transposed: [in_channels, out_channels / groups, *kernel]), bias [out_channels];
``stride``, ``padding`` (ints, or "same" / "valid"), ``dilation`` and ``groups``. Each is one ``conv`` (or
``conv_transpose``) primitive plus a broadcast bias add, so a state_dict from ``torch.nn.Conv2d`` loads as it is.

    >>> import eager
    >>> from eager import nn
    >>> nn.Conv2d(3, 8, 3, padding="same")(eager.ones(2, 3, 5, 5)).shape
    (2, 8, 5, 5)
"""

from __future__ import annotations

from eager import primitives as P
from eager.creation import empty
from eager.dispatch import apply
from eager.nn import init
from eager.nn.module import Module, Parameter
from eager.primitives import ShapeError
from eager.tensor import Tensor


def _ntuple(op: str, name: str, value, nd: int) -> tuple[int, ...]:
    """``value`` as ``nd`` ints: an int repeats, a sequence must have ``nd`` entries."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * nd
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a tuple of {nd} ints, got {value!r}.") from None
    if len(out) != nd:
        raise ValueError(f"{op}: {name} must be an int or a tuple of {nd} ints, got {value!r}.")
    return out


def _padding_pairs(op: str, padding, kernel, stride, dilation) -> tuple[tuple[int, int], ...]:
    """PyTorch's padding argument as one (low, high) pair per spatial dim. "same" pads d * (k - 1) in all, the odd
    element on the high side (as PyTorch does); "valid" pads nothing."""
    nd = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding != "same":
            raise ValueError(f"{op}: invalid padding string {padding!r}, should be one of {{'valid', 'same'}}.")
        if any(s != 1 for s in stride):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride {stride}); "
                             "give the padding as ints.")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in total)
    pads = _ntuple(op, "padding", padding, nd)
    if any(p < 0 for p in pads):
        raise ValueError(f"{op}: negative padding {pads} is not supported.")
    return tuple((p, p) for p in pads)


def _batched(op: str, input: Tensor, nd: int) -> tuple[Tensor, bool]:
    """(the input with a batch dim, whether it had one): PyTorch takes [C, *spatial] as a batch of one."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor, got {type(input).__name__}.")
    if input.ndim == nd + 2:
        return input, True
    if input.ndim == nd + 1:
        return input.unsqueeze(0), False
    raise ShapeError(f"{op}: expected a {nd + 1}-D (unbatched) or {nd + 2}-D (batched) input, got shape "
                     f"{list(input.shape)}.")


def _add_bias(op: str, out: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return out
    channels = out.shape[1]
    if tuple(bias.shape) != (channels,):
        raise ShapeError(f"{op}: bias of shape {list(bias.shape)} must have one entry per output channel: "
                         f"[{channels}].")
    return out + bias.reshape((1, channels) + (1,) * (out.ndim - 2))


def _conv(nd: int, input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    op = f"conv{nd}d"
    x, batched = _batched(op, input, nd)
    if weight.ndim != nd + 2:
        raise ShapeError(f"{op}: weight must be {nd + 2}-D [out_channels, in_channels / groups, *kernel], got shape "
                         f"{list(weight.shape)}.")
    stride, dilation = _ntuple(op, "stride", stride, nd), _ntuple(op, "dilation", dilation, nd)
    pairs = _padding_pairs(op, padding, weight.shape[2:], stride, dilation)
    out = apply(P.CONV, x, weight, stride=stride, padding=pairs, dilation=dilation, groups=int(groups))
    out = _add_bias(op, out, bias)
    return out if batched else out.squeeze(0)


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """``torch.nn.functional.conv1d``: input [N, C, L] (or [C, L]), weight [O, C / groups, k].

        >>> import eager
        >>> conv1d(eager.ones(1, 1, 4), eager.ones(1, 1, 2)).tolist()
        [[[2.0, 2.0, 2.0]]]
    """
    return _conv(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """``torch.nn.functional.conv2d``: input [N, C, H, W] (or [C, H, W]), weight [O, C / groups, kh, kw].

        >>> import eager
        >>> conv2d(eager.ones(1, 1, 3, 3), eager.ones(1, 1, 2, 2), padding=1).shape
        (1, 1, 4, 4)
    """
    return _conv(2, input, weight, bias, stride, padding, dilation, groups)


def _conv_transpose(nd: int, input, weight, bias, stride, padding, output_padding, groups, dilation) -> Tensor:
    op = f"conv_transpose{nd}d"
    x, batched = _batched(op, input, nd)
    if weight.ndim != nd + 2:
        raise ShapeError(f"{op}: weight must be {nd + 2}-D [in_channels, out_channels / groups, *kernel], got shape "
                         f"{list(weight.shape)}.")
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be ints (PyTorch's transposed convolutions take no {padding!r}).")
    stride, dilation = _ntuple(op, "stride", stride, nd), _ntuple(op, "dilation", dilation, nd)
    pads, extra = _ntuple(op, "padding", padding, nd), _ntuple(op, "output_padding", output_padding, nd)
    if any(e < 0 or (e >= s and e >= d) for e, s, d in zip(extra, stride, dilation)):
        raise ValueError(f"{op}: output padding {extra} must be smaller than either stride {stride} or dilation "
                         f"{dilation}.")
    kernel = weight.shape[2:]
    size = tuple((n - 1) * s - 2 * p + d * (k - 1) + e + 1
                 for n, s, p, d, k, e in zip(x.shape[2:], stride, pads, dilation, kernel, extra))
    if any(n <= 0 for n in size):
        raise ShapeError(f"{op}: the input {list(input.shape)} with kernel {list(kernel)}, stride {stride}, padding "
                         f"{pads} and dilation {dilation} gives a non-positive output size {list(size)}.")
    out = apply(P.CONV_TRANSPOSE, x, weight, stride=stride, padding=tuple((p, p) for p in pads), dilation=dilation,
                groups=int(groups), size=size)
    out = _add_bias(op, out, bias)
    return out if batched else out.squeeze(0)


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """``torch.nn.functional.conv_transpose1d``: the gradient of conv1d with respect to its input, as a layer;
    weight [in_channels, out_channels / groups, k]."""
    return _conv_transpose(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """``torch.nn.functional.conv_transpose2d``: weight [in_channels, out_channels / groups, kh, kw]; the output is
    (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1 along each spatial dim.

        >>> import eager
        >>> conv_transpose2d(eager.ones(1, 1, 2, 2), eager.ones(1, 1, 2, 2), stride=2).shape
        (1, 1, 4, 4)
    """
    return _conv_transpose(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


# ---------------------------------------------------------------- modules


class _ConvNd(Module):
    _nd = 0
    _transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 output_padding=0):
        super().__init__()
        name, nd = type(self).__name__, self._nd
        if groups <= 0:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups}.")
        if in_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) must be divisible by groups ({groups}).")
        if out_channels % groups:
            raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by groups ({groups}).")
        if padding_mode != "zeros":
            raise NotImplementedError(f"{name}: padding_mode {padding_mode!r} is not implemented; only 'zeros'.")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ntuple(name, "kernel_size", kernel_size, nd)
        self.stride = _ntuple(name, "stride", stride, nd)
        self.dilation = _ntuple(name, "dilation", dilation, nd)
        if isinstance(padding, str):
            _padding_pairs(name, padding, self.kernel_size, self.stride, self.dilation)  # checks it now, as PyTorch
            self.padding = padding
        else:
            self.padding = _ntuple(name, "padding", padding, nd)
        self.output_padding = _ntuple(name, "output_padding", output_padding, nd)
        self.padding_mode = padding_mode
        shape = (in_channels, out_channels // groups) if self._transposed else (out_channels, in_channels // groups)
        self.weight = Parameter(empty(*shape, *self.kernel_size, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_channels, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.layer_default_(self.weight, self.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding}"  # a string unquoted, as PyTorch prints it
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * self._nd:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv1d(_ConvNd):
    """``torch.nn.Conv1d``: weight [out_channels, in_channels / groups, k], bias [out_channels]."""

    _nd = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(_ConvNd):
    """``torch.nn.Conv2d``: weight [out_channels, in_channels / groups, kh, kw], bias [out_channels].

        >>> Conv2d(3, 8, kernel_size=3, stride=2)
        Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2))
    """

    _nd = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _ConvTransposeNd(_ConvNd):
    _transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None,
                 dtype=None):
        if isinstance(padding, str):
            raise ValueError(f"{type(self).__name__}: padding must be ints, got {padding!r}.")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype, output_padding)

    def forward(self, input: Tensor) -> Tensor:
        fn = conv_transpose1d if self._nd == 1 else conv_transpose2d
        return fn(input, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.groups,
                  self.dilation)


class ConvTranspose1d(_ConvTransposeNd):
    """``torch.nn.ConvTranspose1d``: weight [in_channels, out_channels / groups, k]."""

    _nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """``torch.nn.ConvTranspose2d``: weight [in_channels, out_channels / groups, kh, kw]."""

    _nd = 2
