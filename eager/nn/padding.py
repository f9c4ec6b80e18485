"""``F.pad``: constant padding (the padding that convolutions and pools read is this op).

    >>> import eager
    >>> pad(eager.ones(2), (0, 1)).tolist()
    [1.0, 1.0, 0.0]
"""

from __future__ import annotations

from eager import primitives as P
from eager.creation import full
from eager.dispatch import apply
from eager.tensor import Tensor


def pad(input: Tensor, pad, mode: str = "constant", value: float | None = None) -> Tensor:
    """``F.pad``: ``pad`` lists (low, high) amounts from the last dim backwards: ``(left, right, top, bottom)`` pads
    the last two dims. Negative amounts crop. Only ``mode="constant"`` (filled with ``value``, default 0).

    The result is one ``index_put`` of the input into a filled tensor, so its gradient is the input's region.

        >>> import eager
        >>> pad(eager.ones(1, 2), (1, 0), value=5.0).tolist()
        [[5.0, 1.0, 1.0]]
    """
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not implemented; only 'constant' (reflect, replicate and "
                                  "circular are not yet).")
    amounts = [int(a) for a in pad]
    if len(amounts) % 2 or len(amounts) // 2 > input.ndim:
        raise ValueError(f"pad: padding length must be even and at most twice the input's dims "
                         f"({input.ndim}), got {len(amounts)} ({list(pad)}).")
    pairs = [(0, 0)] * (input.ndim - len(amounts) // 2) + [(amounts[i], amounts[i + 1])
                                                           for i in range(len(amounts) - 2, -1, -2)]
    if any(size + lo + hi < 0 for (lo, hi), size in zip(pairs, input.shape)):
        raise ValueError(f"pad: padding {list(pad)} of the input of shape {list(input.shape)} gives a negative size.")
    crop = tuple(slice(min(max(-lo, 0), size), max(size - max(-hi, 0), 0))
                 for (lo, hi), size in zip(pairs, input.shape))
    if any(s.start or s.stop != size for s, size in zip(crop, input.shape)):
        input = input[crop]
    shape = tuple(size + max(lo, 0) + max(hi, 0) for (lo, hi), size in zip(pairs, input.shape))
    if shape == tuple(input.shape):
        return input
    filled = full(shape, 0.0 if value is None else value, dtype=input.dtype, device=input.device)
    key = tuple(slice(max(lo, 0), max(lo, 0) + size) for (lo, _), size in zip(pairs, input.shape))
    return apply(P.INDEX_PUT, filled, input, key=key)
