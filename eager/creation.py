"""Creating tensors: from data, filled, ranges and random draws (PyTorch's names and defaults).

Filled and random tensors are made by primitives (``full``, ``uniform``, ``normal``), so a trace records
them as nodes rather than baking their values in.

    >>> import eager
    >>> eager.zeros(2, 3).shape
    (2, 3)
"""

from __future__ import annotations

import numpy as np

from eager import backend
from eager import primitives as P
from eager.dispatch import apply
from eager.random import Generator
from eager.tensor import Tensor


def _infer_dtype(arr: np.ndarray, data) -> np.dtype:
    if isinstance(data, np.ndarray) or isinstance(data, np.generic):
        return backend.canonical_dtype(arr.dtype) if arr.dtype.kind != "f" or arr.dtype.itemsize >= 4 else \
            backend.float32
    if arr.dtype.kind == "f":
        return backend.default_float
    if arr.dtype.kind in "iu":
        return backend.int64
    if arr.dtype.kind == "b":
        return backend.bool_
    raise TypeError(f"tensor: cannot make a tensor from data of type {arr.dtype}; use numbers or bools")


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new leaf tensor holding a copy of ``data`` (number, nested list, NumPy or CuPy array, Tensor).

    Python floats become float32 and ints int64 (PyTorch's defaults); NumPy arrays keep their dtype.
    """
    if isinstance(data, Tensor):  # the values leave the graph: a trace must be told, or it bakes them in
        data = data._escape("tensor", backend.to_numpy(data._data))
    device = backend.canonical_device(device)
    if hasattr(data, "__cuda_array_interface__"):
        data = backend.to_numpy(data)
    arr = np.array(data)
    dtype = backend.canonical_dtype(dtype) or _infer_dtype(arr, data)
    arr = backend.to_device(np.array(arr, dtype=dtype, order="C"), device)  # ascontiguousarray makes 0-d 1-d
    return Tensor(arr, requires_grad=requires_grad)


as_tensor = tensor


def from_numpy(array: np.ndarray) -> Tensor:
    return Tensor(array)


def _size(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(s) for s in size)


def full(size, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if dtype is None:
        dtype = backend.bool_ if isinstance(fill_value, bool) else (
            backend.int64 if isinstance(fill_value, int) else backend.default_float)
    out = apply(P.FULL, shape=_size((size,) if isinstance(size, int) else tuple(size)), fill_value=fill_value,
                dtype=backend.canonical_dtype(dtype), device=backend.canonical_device(device))
    return out.requires_grad_(True) if requires_grad else out


def zeros(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return full(_size(size), 0.0, dtype or backend.default_float, device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return full(_size(size), 1.0, dtype or backend.default_float, device, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return zeros(*size, dtype=dtype, device=device, requires_grad=requires_grad)


def _like(x: Tensor, fill, dtype, device, requires_grad):
    return full(x.shape, fill, dtype or x.dtype, device or x.device, requires_grad)


def zeros_like(x: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(x, 0, dtype, device, requires_grad)


def ones_like(x: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(x, 1, dtype, device, requires_grad)


def full_like(x: Tensor, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(x, fill_value, dtype, device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = backend.default_float if any(isinstance(v, float) for v in (start, end, step)) else backend.int64
    return tensor(np.arange(start, end, step), dtype=dtype, device=device, requires_grad=requires_grad)


def linspace(start, end, steps: int, dtype=None, device=None) -> Tensor:
    return tensor(np.linspace(start, end, steps), dtype=dtype or backend.default_float, device=device)


def eye(n: int, m: int | None = None, dtype=None, device=None) -> Tensor:
    return tensor(np.eye(n, m), dtype=dtype or backend.default_float, device=device)


def _random(prim, draw, size, dtype, device, generator, requires_grad):
    dtype = backend.canonical_dtype(dtype) or backend.default_float
    if dtype.kind != "f":
        raise TypeError(f"{prim.name}: random floats need a floating dtype, got {dtype}")
    device = backend.canonical_device(device if generator is None else generator.device)
    shape = _size(size)
    if generator is None:
        out = apply(prim, shape=shape, dtype=dtype, device=device)
    else:  # an explicit generator is user state: its draw enters a trace as a constant
        out = Tensor(draw(generator, shape, dtype))
    return out.requires_grad_(True) if requires_grad else out


def randn(*size, dtype=None, device=None, generator: Generator | None = None,
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples."""
    return _random(P.NORMAL, Generator.standard_normal, size, dtype, device, generator, requires_grad)


def rand(*size, dtype=None, device=None, generator: Generator | None = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    return _random(P.UNIFORM, Generator.random, size, dtype, device, generator, requires_grad)


def randn_like(x: Tensor, dtype=None) -> Tensor:
    return randn(*x.shape, dtype=dtype or x.dtype, device=x.device)


def rand_like(x: Tensor, dtype=None) -> Tensor:
    return rand(*x.shape, dtype=dtype or x.dtype, device=x.device)


def randint(low, high=None, size=(), dtype=None, device=None, generator: Generator | None = None) -> Tensor:
    """Integers in [low, high); ``randint(high, size)`` as in PyTorch."""
    if high is None:
        low, high = 0, low
    dtype = backend.canonical_dtype(dtype) or backend.int64
    if generator is None:  # a primitive: a trace records the draw, so each replay draws anew
        return apply(P.RANDINT, low=int(low), high=int(high), shape=_size(tuple(size)), dtype=dtype,
                     device=backend.canonical_device(device))
    return tensor(backend.to_numpy(generator.integers(low, high, tuple(size))), dtype=dtype, device=device)


def randperm(n: int, device=None, generator: Generator | None = None) -> Tensor:
    if generator is None:
        return apply(P.RANDPERM, n=int(n), device=backend.canonical_device(device))
    return tensor(backend.to_numpy(generator.permutation(n)), device=device)
