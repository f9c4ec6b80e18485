"""Array namespaces (NumPy on the CPU, CuPy on CUDA), devices and dtypes.

Importing this module never imports CuPy: it is looked up the first time a CUDA tensor is asked for.

    >>> namespace("cpu").__name__
    'numpy'
"""

from __future__ import annotations

import functools

import numpy as np

float32 = np.dtype("float32")
float64 = np.dtype("float64")
int64 = np.dtype("int64")
int32 = np.dtype("int32")
int8 = np.dtype("int8")
bool_ = np.dtype("bool")
DTYPES = {"float32": float32, "float64": float64, "int64": int64, "int32": int32, "int8": int8, "bool": bool_}
SHORT_NAMES = {float32: "f32", float64: "f64", int64: "i64", int32: "i32", int8: "i8", bool_: "bool"}
default_float = float32


class Device(str):
    """A device name, compared like a string: ``Device("cpu") == "cpu"``; ``.type`` as in PyTorch."""

    __slots__ = ()

    @property
    def type(self) -> str:
        return self.split(":")[0]


CPU = Device("cpu")
CUDA = Device("cuda")


@functools.cache
def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "device='cuda' needs CuPy, which is not installed. Install it with "
            "`pip install graphduel[gpu]` (CUDA 13) or `graphduel[gpu12]` (CUDA 12), or use device='cpu'."
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"device='cuda' was asked for but CUDA reports no usable GPU ({e}); "
                           "use device='cpu'.") from e
    if count == 0:
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'.")
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        _cupy()
    except RuntimeError:
        return False
    return True


def canonical_device(device) -> Device:
    """Normalise ``'cpu'``, ``'cuda'``, ``'cuda:0'`` or a Device; anything else is a clear error."""
    if device is None:
        return CPU
    name = str(device)
    if name == "cpu":
        return CPU
    if name == "cuda" or name == "cuda:0":
        return CUDA
    raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def namespace(device) -> object:
    """The array module for a device: numpy for 'cpu', cupy for 'cuda'."""
    return np if canonical_device(device) == CPU else _cupy()


def namespace_of(array) -> object:
    """The array module an array belongs to."""
    return np if type(array) is np.ndarray else _cupy()


def device_of(array) -> Device:
    return CPU if type(array) is np.ndarray else CUDA


def to_device(array, device: Device):
    """Move an array between NumPy and CuPy (a no-op when it is already there)."""
    if device == CPU:
        return array if type(array) is np.ndarray else _cupy().asnumpy(array)
    return _cupy().asarray(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy array of ``array``'s values (copied from the GPU for a CuPy array; NumPy values pass through)."""
    if isinstance(array, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(array)
    return _cupy().asnumpy(array)


def canonical_dtype(dtype) -> np.dtype:
    """Accept eager dtypes, numpy dtypes, Python types and names; refuse what the engine does not support."""
    if dtype is None:
        return None
    if dtype is float:
        return default_float
    if dtype is int:
        return int64
    if dtype is bool:
        return bool_
    dt = np.dtype(dtype)
    if dt not in SHORT_NAMES:
        raise TypeError(f"dtype {dt} is not supported: use float32, float64, int64, int32, int8 or bool")
    return dt


def is_floating(dtype: np.dtype) -> bool:
    return dtype.kind == "f"


def promote_types(a: np.dtype, b: np.dtype) -> np.dtype:
    """PyTorch's rule for two tensors: floats win over integers, then the wider type wins."""
    if a == b:
        return a
    if a.kind == "f" and b.kind != "f":
        return a
    if b.kind == "f" and a.kind != "f":
        return b
    return np.promote_types(a, b)


def short_name(dtype: np.dtype) -> str:
    """``f32[...]``-style names used by printed graphs and error messages."""
    return SHORT_NAMES.get(dtype, str(dtype))
