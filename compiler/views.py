"""Affine index views: how a fused kernel reads a value through reshape, permute and broadcasting.

A kernel loops over a *domain* (a shape). Every value it touches is read at an index that is a linear
function of the domain index: ``node_index = A @ domain_index``. ``A`` (one row per node dim, one column per
domain dim) is a ``View``. Movement ops never run inside a kernel; they only change the view of their source.

    >>> v = identity(2)                        # a [2, 3] node read at the domain index itself
    >>> permute_source(v, (1, 0))              # its source, of shape [3, 2], is read transposed
    ((0, 1), (1, 0))
    >>> linear_form(((0, 1), (1, 0)), (3, 2), 2)  # memory offset of that read: 1*i0 + 2*i1
    (1, 2)
"""

from __future__ import annotations

View = tuple[tuple[int, ...], ...]


def identity(ndim: int) -> View:
    return tuple(tuple(int(i == j) for j in range(ndim)) for i in range(ndim))


def zeros(rows: int, cols: int) -> View:
    return tuple((0,) * cols for _ in range(rows))


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def broadcast_source(view: View, out_shape, src_shape, cols: int) -> View:
    """The view of ``src`` when ``out`` (read through ``view``) is ``src`` broadcast numpy-style."""
    lead = len(out_shape) - len(src_shape)
    return tuple((0,) * cols if d == 1 else view[k + lead] for k, d in enumerate(src_shape))


def permute_source(view: View, axes) -> View:
    """``out = permute(src, axes)``: out dim k is src dim axes[k]."""
    rows = [None] * len(axes)
    for k, a in enumerate(axes):
        rows[a] = view[k]
    return tuple(rows)


def reshape_source(view: View, out_shape, src_shape, domain) -> View | None:
    """``out = reshape(src)``; None when the source index is not affine in the domain index (then the caller
    materialises the reshape instead)."""
    cols = len(domain)
    if 0 in tuple(src_shape) or 0 in tuple(out_shape):  # no element is ever read (and the strides would be 0)
        return tuple((0,) * cols for _ in src_shape)
    # an empty domain dim never varies, but the rest of the domain may (a row kernel whose reduced dim is empty
    # still writes its kept elements): treat it as size 1
    domain = tuple(max(d, 1) for d in domain)
    flat = [sum(s * row[d] for s, row in zip(contiguous_strides(out_shape), view)) for d in range(cols)]
    rows = []
    for stride, size in zip(contiguous_strides(src_shape), src_shape):
        if size <= 1:  # one element, or none (then no index is ever read)
            rows.append((0,) * cols)
            continue
        row, low, top = [0] * cols, 0, 0
        for d in range(cols):
            f, extent = flat[d], domain[d] - 1
            if f == 0 or extent == 0 or f % (stride * size) == 0:
                continue
            if f % stride == 0:
                row[d] = f // stride
                top += row[d] * extent
            else:
                low += f * extent
        if low >= stride or top >= size:
            return None
        rows.append(tuple(row))
    return tuple(rows)


def reduced_view(domain, axes, out_shape) -> View:
    """The view of a reduction's output from its input domain: kept dims in order, reduced dims at 0."""
    kept = [d for d in range(len(domain)) if d not in axes]
    keepdims = len(out_shape) == len(domain)
    rows, it = [], iter(kept)
    for k in range(len(out_shape)):
        if keepdims and k in axes:
            rows.append((0,) * len(domain))
        else:
            d = next(it)
            rows.append(tuple(int(j == d) for j in range(len(domain))))
    return tuple(rows)


def compose(view: View, inner: View, cols: int) -> View:
    """``view`` is over domain X, ``inner`` maps domain Y (``cols`` dims) to X: the result is over Y."""
    return tuple(tuple(sum(row[x] * inner[x][y] for x in range(len(row))) for y in range(cols)) for row in view)


def linear_form(view: View, shape, cols: int) -> tuple[int, ...]:
    """Memory offset (in elements) of the read, per domain dim, for a C-contiguous buffer of ``shape``."""
    strides = contiguous_strides(shape)
    return tuple(sum(s * row[d] for s, row in zip(strides, view)) for d in range(cols))


def depends_on(view: View, dims) -> bool:
    return any(row[d] for row in view for d in dims)
