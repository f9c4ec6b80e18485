"""``eager.nn.functional`` (imported as ``F``): activations, losses and layers as plain functions.

Every function is a composite of existing eager ops: no new primitive and no NumPy on the data, so each
gets gradients, tracing and fusion for free (random draws, e.g. dropout's mask, go through ``eager.rand``
so a trace records them).

    >>> import eager
    >>> from eager.nn import functional as F
    >>> F.relu(eager.tensor([-1.0, 2.0])).tolist()
    [0.0, 2.0]
"""

from __future__ import annotations

import math
import warnings

from eager import ops
from eager import primitives as P
from eager.creation import arange, rand
from eager.dispatch import OpError, apply
from eager.primitives import ShapeError
from eager.tensor import Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_TINY = 1e-44  # below exp(-100), still representable (subnormal) in float32


def _reduce(op: str, loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _maybe_inplace(x: Tensor, fn, inplace: bool) -> Tensor:
    return ops.inplace(x, fn) if inplace else fn(x)


# ---------------------------------------------------------------- activations


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """max(x, 0); the gradient at 0 is 0, as in PyTorch."""
    return _maybe_inplace(input, ops.relu, inplace)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    return _maybe_inplace(input, lambda x: ops.where(x > 0, x, x * negative_slope), inplace)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x): exact with erf (``approximate='none'``) or the tanh approximation (``'tanh'``).

        >>> import eager
        >>> round(gelu(eager.tensor([1.0])).item(), 4)
        0.8413
    """
    if approximate == "none":
        return input * 0.5 * (1.0 + ops.erf(input * _INV_SQRT_2))
    if approximate == "tanh":
        inner = (input + 0.044715 * input * input * input) * _SQRT_2_OVER_PI
        return input * 0.5 * (1.0 + ops.tanh(inner))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}.")


def sigmoid(input: Tensor) -> Tensor:
    return ops.sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    return ops.tanh(input)


def silu(input: Tensor) -> Tensor:
    """x * sigmoid(x) (a.k.a. swish)."""
    return input * ops.sigmoid(input)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, linear above ``threshold`` (PyTorch's rule)."""
    bx = input * beta
    # clamp before exp: the unused branch of where must not overflow (0 * inf would poison the gradient)
    soft = ops.log(1.0 + ops.exp(ops.clamp(bx, max=threshold))) / beta
    return ops.where(bx > threshold, input, soft)


def logsigmoid(input: Tensor) -> Tensor:
    return -softplus(-input)


def _implicit_dim(op: str, ndim: int) -> int:
    warnings.warn(f"Implicit dimension choice for {op} has been deprecated. Change the call to include dim=X "
                  "as an argument.", UserWarning, stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:
    input = input if dtype is None else input.to(dtype)
    return ops.softmax(input, _implicit_dim("softmax", input.ndim) if dim is None else dim)


def log_softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:
    input = input if dtype is None else input.to(dtype)
    return ops.log_softmax(input, _implicit_dim("log_softmax", input.ndim) if dim is None else dim)


# ---------------------------------------------------------------- layers


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """input @ weight.T + bias, with weight of shape [out_features, in_features].

    A wrong feature size is a ``ShapeError`` naming both shapes and the layer's ``in_features``.

        >>> import eager
        >>> linear(eager.ones(1, 2), eager.ones(3, 2)).shape
        (1, 3)
    """
    if weight.ndim != 2:
        raise ShapeError(f"linear: weight must be 2-D [out_features, in_features], got shape {list(weight.shape)}.")
    in_features = weight.shape[1]
    if input.ndim == 0 or input.shape[-1] != in_features:
        got = input.shape[-1] if input.ndim else "no"
        raise ShapeError(
            f"linear: input of shape {list(input.shape)} has {got} features in its last dim, but the layer "
            f"expects in_features={in_features} (weight shape {list(weight.shape)} = [out_features, "
            f"in_features]). Make the previous layer output {in_features} features, or build this layer "
            f"with in_features={got}.")
    if bias is not None and tuple(bias.shape) not in ((weight.shape[0],), ()):
        raise ShapeError(f"linear: bias of shape {list(bias.shape)} does not fit out_features={weight.shape[0]} "
                         f"(weight shape {list(weight.shape)}); it must have shape [{weight.shape[0]}].")
    if input.ndim == 2 and input.dtype == weight.dtype and input.is_floating_point() and \
            (bias is None or (bias.ndim == 1 and bias.dtype == weight.dtype)):  # one fused row in eager
        return apply(P.LINEAR, input, weight, *(() if bias is None else (bias,)))
    out = ops.matmul(input, weight.T)
    return out if bias is None else out + bias


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims (biased variance), then scale and shift."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if tuple(input.shape[input.ndim - k:]) != shape or input.ndim < k:
        raise ShapeError(f"layer_norm: input of shape {list(input.shape)} does not end with normalized_shape "
                         f"{list(shape)}; the last {k} dim(s) must match exactly.")
    dims = tuple(range(-k, 0))
    centered = input - input.mean(dims, keepdim=True)
    var = (centered * centered).mean(dims, keepdim=True)
    out = centered * ops.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (identity when not training).

    The mask comes from ``eager.rand`` (the default generator), so ``manual_seed`` reproduces it and a trace
    records the draw instead of baking one mask in.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p}.")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return _maybe_inplace(input, lambda x: x * 0.0, inplace)
    scale = 1.0 / (1.0 - p)

    def drop(x):
        keep = rand(*x.shape, dtype=x.dtype, device=x.device) >= p
        return ops.where(keep, x * scale, 0.0)
    return _maybe_inplace(input, drop, inplace)


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` picked by integer ``input``; the ``padding_idx`` row gets no gradient."""
    if input.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be an integer tensor, got {input.dtype} of shape "
                        f"{list(input.shape)}; convert with .long().")
    if weight.ndim != 2:
        raise ShapeError(f"embedding: weight must be 2-D [num_embeddings, embedding_dim], got {list(weight.shape)}.")
    try:
        out = weight[input]
    except OpError as e:
        raise ShapeError(f"embedding: an index in input (shape {list(input.shape)}) is out of range for "
                         f"num_embeddings={weight.shape[0]} ({e}).") from None
    if padding_idx is not None:
        pad = padding_idx % weight.shape[0]
        out = ops.where((input != pad).unsqueeze(-1), out, out.detach())
    return out


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding along a new last dim (``num_classes=-1`` reads the max, leaving the graph)."""
    if num_classes < 0:
        num_classes = int(tensor.max()) + 1
    return (tensor.unsqueeze(-1) == arange(num_classes, device=tensor.device)).long()


# ---------------------------------------------------------------- losses


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error. Different shapes broadcast with a warning, as in PyTorch (usually a bug)."""
    if tuple(input.shape) != tuple(target.shape):
        warnings.warn(f"mse_loss: using a target size ({list(target.shape)}) that is different to the input size "
                      f"({list(input.shape)}); this will likely lead to incorrect results due to broadcasting. "
                      "Please ensure they have the same size.", UserWarning, stacklevel=2)
    diff = input - target
    return _reduce("mse_loss", diff * diff, reduction)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices, given log-probabilities ``input`` [N, C, ...]."""
    return _class_index_loss("nll_loss", input, target, weight, ignore_index, reduction, 0.0)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits [N, C, ...] (or [C]) against class indices [N, ...] or class probabilities.

    Class indices are gathered with advanced indexing: ``log_softmax(input)[arange(N), target]``.

        >>> import eager
        >>> round(cross_entropy(eager.zeros(1, 4), eager.tensor([2])).item(), 4)   # log(4)
        1.3863
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}.")
    if target.is_floating_point():
        return _probability_loss(input, target, weight, reduction, label_smoothing)
    if input.ndim == 2 and weight is None and label_smoothing == 0.0 and input.is_floating_point() and \
            target.dtype.kind in "iu" and tuple(target.shape) == tuple(input.shape[:1]) and \
            reduction in ("mean", "sum", "none"):  # the common case: one fused row in eager (a trace sees the ops)
        return apply(P.CROSS_ENTROPY, input, target, ignore_index=ignore_index, reduction=reduction)
    logp = ops.log_softmax(input, 1 if input.ndim > 1 else 0)
    return _class_index_loss("cross_entropy", logp, target, weight, ignore_index, reduction, label_smoothing)


def _class_index_loss(op, logp, target, weight, ignore_index, reduction, label_smoothing):
    if target.dtype.kind not in "iu":
        raise TypeError(f"{op}: class-index targets must be integers (int64), got {target.dtype}; use "
                        "target.long(), or pass float class probabilities of the input's shape.")
    single = logp.ndim == 1
    if single:  # [C] logits with a 0-d target: a batch of one
        logp, target = logp.unsqueeze(0), target.reshape(1)
    n_classes = logp.shape[1]
    expected = logp.shape[:1] + logp.shape[2:]
    if tuple(target.shape) != tuple(expected):
        raise ShapeError(f"{op}: input of shape {list(logp.shape)} needs a target of shape {list(expected)} "
                         f"(one class index per sample), got {list(target.shape)}.")
    if weight is not None and tuple(weight.shape) != (n_classes,):
        raise ShapeError(f"{op}: weight must have one entry per class ({n_classes}), got {list(weight.shape)}.")
    if logp.ndim > 2:  # [N, C, d1..] -> [N*d1*.., C]
        logp = logp.permute(0, *range(2, logp.ndim), 1).reshape(-1, n_classes)
    flat = target.reshape(-1)
    valid = flat != ignore_index
    safe = ops.where(valid, flat, 0)
    picked = logp[arange(flat.shape[0], device=logp.device), safe]
    mask = valid.to(logp.dtype)
    w = mask if weight is None else weight[safe] * mask
    nll = -(picked * w)
    if reduction == "mean":
        loss = nll.sum() / w.sum()
    elif reduction == "sum":
        loss = nll.sum()
    elif reduction == "none":
        loss = nll.reshape(target.shape)
    else:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if label_smoothing > 0.0:
        per_class = logp if weight is None else logp * weight
        smooth = -(per_class.sum(1) * mask)
        if reduction == "mean":
            smooth = smooth.sum() / w.sum()
        elif reduction == "sum":
            smooth = smooth.sum()
        else:
            smooth = smooth.reshape(target.shape)
        loss = loss * (1.0 - label_smoothing) + smooth * (label_smoothing / n_classes)
    return loss.reshape(()) if single and reduction == "none" else loss


def _probability_loss(input, target, weight, reduction, label_smoothing):
    if tuple(target.shape) != tuple(input.shape):
        raise ShapeError(f"cross_entropy: probability targets must have the input's shape {list(input.shape)}, "
                         f"got {list(target.shape)}.")
    dim = 1 if input.ndim > 1 else 0
    n_classes = input.shape[dim]
    if label_smoothing > 0.0:
        target = target * (1.0 - label_smoothing) + label_smoothing / n_classes
    terms = ops.log_softmax(input, dim) * target
    if weight is not None:
        terms = terms * weight.reshape((n_classes,) + (1,) * (input.ndim - dim - 1))
    per_sample = -terms.sum(dim)
    if reduction == "mean":
        return per_sample.sum() / max(input.numel() // n_classes, 1)
    return _reduce("cross_entropy", per_sample, reduction)


def _same_size(op: str, input: Tensor, target: Tensor) -> None:
    if tuple(input.shape) != tuple(target.shape):
        raise ShapeError(f"{op}: target size {list(target.shape)} is different from the input size "
                         f"{list(input.shape)}; make them the same size.")


def _clamped_log(x: Tensor) -> Tensor:
    # PyTorch clamps log at -100; the inner clamp keeps log's input off 0 so a saturated probability gives a
    # zero gradient instead of 0/0 = NaN
    return ops.clamp(ops.log(ops.clamp(x, min=_TINY)), min=-100.0)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """-(t log x + (1-t) log(1-x)) for probabilities ``input``; logs are clamped at -100 as in PyTorch."""
    _same_size("binary_cross_entropy", input, target)
    log_x, log_1mx = _clamped_log(input), _clamped_log(1.0 - input)
    loss = -(target * log_x + (1.0 - target) * log_1mx)
    if weight is not None:
        loss = loss * weight
    return _reduce("binary_cross_entropy", loss, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     reduction: str = "mean", pos_weight: Tensor | None = None) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable expression: (1-t) x + lw * softplus(-x)."""
    _same_size("binary_cross_entropy_with_logits", input, target)
    # softplus(-x) = log(1 + exp(-|x|)) + max(-x, 0): no overflow for any x; maximum splits its tie at 0,
    # so d/dx at x=0 is 0.5 - t, as sigmoid(x) - t is
    sp = ops.log(1.0 + ops.exp(-ops.abs(input))) + ops.maximum(-input, 0.0)
    lw = 1.0 if pos_weight is None else (pos_weight - 1.0) * target + 1.0
    loss = (1.0 - target) * input + lw * sp
    if weight is not None:
        loss = loss * weight
    return _reduce("binary_cross_entropy_with_logits", loss, reduction)


# ---------------------------------------------------------------- convolution, pooling, normalisation (own modules)
# re-exported here, the namespace users call them from (F.conv2d, F.pad, ...)
from eager.nn.batchnorm import batch_norm  # noqa: E402, F401
from eager.nn.convolution import conv1d, conv2d, conv_transpose1d, conv_transpose2d  # noqa: E402, F401
from eager.nn.padding import pad  # noqa: E402, F401
from eager.nn.pooling import (  # noqa: E402, F401
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    avg_pool1d,
    avg_pool2d,
    max_pool1d,
    max_pool2d,
)
