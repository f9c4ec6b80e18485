"""A CPU stand-in for CuPy, for tests only: the GPU code paths of graphduel run on a machine without a GPU.

Put ``tests/fakegpu`` first on ``PYTHONPATH`` and ``import cupy`` finds this package. Arrays live in NumPy
memory; the generated CUDA kernels run under graphduel's SIMT emulator. It mirrors the CuPy rules that code
written only against NumPy gets wrong:

- no implicit mixing: a NumPy array passed where a device array is expected, or ``numpy.asarray`` of a device
  array, is a ``TypeError`` (cross with ``cupy.asarray`` and ``.get()``);
- fresh memory (``cupy.empty``) holds garbage (NaN bytes), not zeros;
- graph capture records work instead of running it (results are garbage until ``graph.launch()``),
  host synchronisation while capturing is an error, and launching a graph after memory it writes was
  released (no array holds it, so CuPy's pool may hand it out again) is an error.

What it cannot show: anything about CuPy itself, NVRTC, the GPU's math library or speed.
"""

from __future__ import annotations

import operator
import types

import numpy as _np

from cupy import _device
from cupy._device import Memory

__version__ = "0.0-fake"
IS_FAKE = True
_HOST_OK = {"array", "asarray", "asanyarray"}  # functions that copy host data to the device
_CUBLAS = {"matmul", "dot", "vdot", "inner", "outer", "tensordot", "einsum"}  # float products go to cuBLAS
_DATA_SIZED = {"nonzero", "flatnonzero", "argwhere", "unique", "extract", "compress"}  # result size needs a sync
_INPLACE_METHODS = {"fill", "sort", "put", "partition", "resize", "itemset"}
_INPLACE_FUNCTIONS = {"copyto", "put", "place", "putmask", "fill_diagonal", "put_along_axis"}
_SYNC_METHODS = {"get", "item", "tolist", "tobytes", "__float__", "__int__", "__bool__", "__complex__"}


def _root(a: _np.ndarray) -> _np.ndarray:
    while isinstance(a.base, _np.ndarray):
        a = a.base
    return a


class _Unwrap:
    """Turns arguments into NumPy ones, remembering the device arrays met (a result that is a view of one of
    them shares its memory)."""

    def __init__(self, allow_host: bool = False):
        self.allow_host = allow_host
        self.arrays: list[ndarray] = []

    def __call__(self, x):
        if isinstance(x, ndarray):
            self.arrays.append(x)
            return x._a
        if isinstance(x, _np.ndarray):
            if not self.allow_host:
                raise TypeError(f"Unsupported type {type(x)} (a NumPy array where a CuPy array is expected: "
                                "move it with cupy.asarray)")
            _device.check_no_transfer("H2D")
            return x
        if isinstance(x, (list, tuple)):
            return type(x)(self(v) for v in x)
        if isinstance(x, dict):
            return {k: self(v) for k, v in x.items()}
        return x

    def memory_of(self, result: _np.ndarray) -> Memory | None:
        root = _root(result)
        for x in self.arrays:
            if _root(x._a) is root:
                return x._mem
        return None


def _wrap(result, unwrap: _Unwrap, fresh: list):
    """Device arrays for NumPy results; ``fresh`` collects the ones with memory of their own."""
    if isinstance(result, _np.generic):
        result = _np.asarray(result)
    if isinstance(result, _np.ndarray):
        mem = unwrap.memory_of(result)
        if mem is None:
            fresh.append(result)
        return ndarray._of(result, mem)
    if isinstance(result, tuple):
        return tuple(_wrap(r, unwrap, fresh) for r in result)
    if isinstance(result, list) and result and isinstance(result[0], _np.ndarray):
        return [_wrap(r, unwrap, fresh) for r in result]
    return result


def _apply(fn, args: tuple, kwargs: dict, *, writes: bool = False, allow_host: bool = False):
    """Run ``fn`` as device work. ``writes``: it changes its first argument (or ``out=``) in place."""
    _device.check_stream()
    unwrap = _Unwrap(allow_host)
    uargs, ukwargs = unwrap(args), unwrap(kwargs)
    _check_transfers(getattr(fn, "__name__", ""), uargs)
    out = kwargs.get("out")
    writes = writes or out is not None
    cap = _device.capturing()
    if cap is not None and writes:  # recorded, not run
        cap.thunks.append(lambda: fn(*uargs, **ukwargs))
        cap.uses(x._mem for x in unwrap.arrays)
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return None
    result = fn(*uargs, **ukwargs)
    if writes and out is not None:
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out
    fresh: list = []
    wrapped = _wrap(result, unwrap, fresh)
    if cap is not None and fresh:
        # the positions of the fresh results; the thunk holds NumPy arrays only, never the device arrays, whose
        # lifetimes are what tells whether memory the graph writes was released
        flat = result if isinstance(result, (tuple, list)) else (result,)
        slots = [(k, next(f for f in fresh if f is _np.asarray(r) or f is r)) for k, r in enumerate(flat)
                 if any(f is r for f in fresh)]
        if isinstance(result, _np.generic):
            slots = [(0, fresh[0])]

        def rerun():
            again = fn(*uargs, **ukwargs)
            again = again if isinstance(again, (tuple, list)) else (again,)
            for k, target in slots:
                _np.copyto(target, again[k])
        cap.thunks.append(rerun)
        cap.uses(x._mem for x in unwrap.arrays)
        for a in fresh:
            _device.poison(a)
    return wrapped


def _check_transfers(name: str, uargs: tuple) -> None:
    """A result whose size depends on the data waits for the device and copies to the host (always, not only
    while capturing); cuBLAS cannot be called while capturing."""
    if name in _DATA_SIZED or (name == "where" and len(uargs) == 1):
        _device.check_no_transfer("D2H")
    if (_device.capturing() is not None and name in _CUBLAS
            and any(isinstance(a, _np.ndarray) and a.dtype.kind in "fc" for a in uargs)):
        raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")


class _Pointer:
    __slots__ = ("ptr", "mem")

    def __init__(self, ptr: int, mem: Memory):
        self.ptr, self.mem = ptr, mem


class ndarray(_np.lib.mixins.NDArrayOperatorsMixin):
    """A device array: NumPy memory behind CuPy's rules (see the module docstring)."""

    __slots__ = ("_a", "_mem", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, order="C"):
        a = _np.empty(shape, dtype, order=order)
        _device.poison(a)
        self._a, self._mem = a, Memory(a)

    @classmethod
    def _of(cls, a: _np.ndarray, mem: Memory | None = None) -> ndarray:
        obj = cls.__new__(cls)
        obj._a, obj._mem = a, mem if mem is not None else Memory(a)
        return obj

    # --- crossing to the host: explicit only, and a synchronisation
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None) -> _np.ndarray:
        _device.check_no_transfer("D2H")
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None) -> None:
        _apply(_np.copyto, (self, arr), {}, writes=True, allow_host=True)

    def _host(self, what: str):
        _device.check_no_transfer("D2H")
        return self._a

    def item(self, *args):
        return self._host("ndarray.item()").item(*args)

    def tolist(self):
        return self._host("ndarray.tolist()").tolist()

    def __float__(self):
        return float(self._host("float(ndarray)"))

    def __int__(self):
        return int(self._host("int(ndarray)"))

    def __bool__(self):
        return bool(self._host("bool(ndarray)"))

    def __repr__(self):
        return repr(self._host("repr(ndarray)"))

    def __str__(self):
        return str(self._host("str(ndarray)"))

    def __format__(self, spec):
        return format(self._host("format(ndarray)"), spec)

    # --- NumPy protocols: numpy functions on device arrays run as cupy functions
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is _np.add and method == "at":
            return _apply(_add_at, inputs, kwargs, writes=True)
        positional_out = method == "__call__" and len(inputs) > ufunc.nin  # np.multiply(x, 2, out)
        return _apply(ufunc if method == "__call__" else getattr(ufunc, method), inputs, kwargs,
                      writes=method == "at" or positional_out)

    def __array_function__(self, func, types, args, kwargs):
        import cupy
        return getattr(cupy, func.__name__)(*args, **kwargs)

    # --- metadata and views
    @property
    def data(self) -> _Pointer:
        return _Pointer(self._a.ctypes.data, self._mem)

    @property
    def device(self):
        from cupy.cuda import Device
        return Device(0)

    @property
    def base(self):
        return None if _root(self._a) is self._a else ndarray._of(_root(self._a), self._mem)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, key):
        _check_key(key)
        return _apply(_getitem, (self, key), {}, allow_host=True)

    def __setitem__(self, key, value):
        _check_key(key)
        if isinstance(value, _np.ndarray) and value.ndim and not _advanced(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        _apply(_setitem, (self, key, value), {}, writes=True, allow_host=True)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()


def _method(name: str):
    fn = getattr(_np.ndarray, name)

    def method(self, *args, **kwargs):
        return _apply(fn, (self, *args), kwargs, writes=name in _INPLACE_METHODS)
    method.__name__ = name
    return method


def _attribute(name: str):
    def get(self):
        value = getattr(self._a, name)
        return _wrap(value, _single(self), []) if isinstance(value, _np.ndarray) else value
    return property(get)


# every public method and attribute of numpy.ndarray that the class above does not define, as CuPy's ndarray
# has them: methods run as device work, array attributes (T, real, imag) are views
for _name in dir(_np.ndarray):
    if _name.startswith("_") or _name in vars(ndarray) or _name in _SYNC_METHODS or _name in {"ctypes", "base"}:
        continue
    _kind = getattr(_np.ndarray, _name)
    setattr(ndarray, _name, _method(_name) if callable(_kind) else _attribute(_name))


def _astype(self, dtype, order="K", casting=None, subok=None, copy=True):
    if casting is not None or subok is not None:
        raise TypeError("casting and subok are not supported yet (CuPy)")
    return _apply(_np.ndarray.astype, (self, dtype), {"order": order, "copy": copy})


ndarray.astype = _astype


def _single(x: ndarray) -> _Unwrap:
    u = _Unwrap()
    u(x)
    return u


def _parts(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _advanced(key) -> bool:
    return any(isinstance(k, (list, _np.ndarray, ndarray)) for k in _parts(key))


def _wrapped(shape: tuple, key):
    """CuPy wraps an out-of-range integer index array around its dim instead of raising (NumPy raises): so does
    the fake. On NumPy arrays, inside the device work (as CuPy does it in its kernel: no array of its own)."""
    parts = _parts(key)
    masks = [k for k in parts if isinstance(k, _np.ndarray) and k.dtype == bool]
    consumed = sum(1 for k in parts if k is not None and k is not Ellipsis) + sum(m.ndim - 1 for m in masks)
    out, dim = [], 0
    for k in parts:
        if isinstance(k, _np.ndarray) and k.dtype.kind in "iu" and k.size:
            k = k % shape[dim]
        out.append(k)
        if k is Ellipsis:
            dim += len(shape) - consumed
        elif k is not None:
            dim += k.ndim if isinstance(k, _np.ndarray) and k.dtype == bool else 1
    return tuple(out) if isinstance(key, tuple) else out[0]


def _getitem(a, key):
    return a[_wrapped(a.shape, key)]


def _setitem(a, key, value):
    a[_wrapped(a.shape, key)] = value


_ADD_AT_DTYPES = {"int32", "int64", "uint32", "uint64", "float16", "float32", "float64"}


def _add_at(a, key, values):
    if a.dtype.name not in _ADD_AT_DTYPES:
        raise TypeError(f"cupy.add.at does not support dtype {a.dtype} (only {sorted(_ADD_AT_DTYPES)})")
    _np.add.at(a, _wrapped(a.shape, key), values)


def _check_key(key) -> None:
    """A list or host index array is copied to the device (H2D); a boolean mask's result size depends on the
    data (a synchronisation): neither is allowed while capturing."""
    for k in _parts(key):
        if isinstance(k, list):  # (a host index array is counted where it is unwrapped)
            _device.check_no_transfer("H2D")
        if isinstance(k, ndarray) and k.dtype == bool:
            _device.check_no_transfer("D2H")


class _Ufunc:
    """A NumPy ufunc run as device work (``cupy.exp(x)``, ``cupy.add.at(...)``)."""

    def __init__(self, uf: _np.ufunc):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        return _apply(self._uf, args, kwargs, writes=len(args) > self._uf.nin)

    def __getattr__(self, method):
        if self._uf is _np.add and method == "at":
            return lambda *args, **kwargs: _apply(_add_at, args, kwargs, writes=True)
        fn = getattr(self._uf, method)
        if not callable(fn):
            return fn
        return lambda *args, **kwargs: _apply(fn, args, kwargs, writes=method == "at")


def _function(name: str, fn):
    def run(*args, **kwargs):
        if name in _HOST_OK and args and not isinstance(args[0], (ndarray, _np.ndarray)):
            _device.check_no_transfer("H2D")  # a list or a scalar is copied to the device
        if name == "copyto" and isinstance(args[1], _np.ndarray) and args[1].size > 1:
            raise ValueError("cupy.copyto: a NumPy array source of more than one element is not supported")
        return _apply(fn, args, kwargs, allow_host=name in _HOST_OK or name == "copyto",
                      writes=name in _INPLACE_FUNCTIONS)
    run.__name__ = name
    return run


def asarray(a, dtype=None, order=None, *, blocking=False):
    if not isinstance(a, (ndarray, _np.ndarray)):
        _device.check_no_transfer("H2D")  # a list or a scalar is copied to the device
    if isinstance(a, ndarray) and (dtype is None or _np.dtype(dtype) == a.dtype) and order in (None, "K", "A"):
        return a
    return _apply(_np.array, (a,), {"dtype": dtype, "order": order or "K", "copy": True}, allow_host=True)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    import cupy
    return cupy if any(isinstance(a, ndarray) for a in args) else _np


def empty(shape, dtype=float, order="C"):
    return ndarray(shape, dtype, order)


def empty_like(a, dtype=None, order="K", shape=None):
    return ndarray(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


class RawModule:
    """``cupy.RawModule(code=..., options=...)``: the CUDA source built for the SIMT emulator."""

    def __init__(self, code: str | None = None, *, path=None, options: tuple = (), backend: str = "nvrtc",
                 translate_cucomplex: bool = False, jitify: bool = False, name_expressions=None):
        from compiler import nvrtc
        from compiler.runtime.simt import SimtModule
        if code is None:
            raise NotImplementedError("fake cupy: RawModule(path=...) is not supported; pass code=")
        if not isinstance(options, tuple):
            raise TypeError(f"options must be a tuple, not {type(options).__name__} (CuPy)")
        _check_options(options)
        if nvrtc.library() is not None:  # CuPy compiles with NVRTC: so does the fake where it is installed
            nvrtc.compile_ptx(code, options)
        self._module = SimtModule(code)

    def get_function(self, name: str) -> RawKernel:
        return RawKernel._of(self._module.get_function(name))


class RawKernel:
    """A kernel: ``kernel(grid, block, args)``; device arrays only (the fake passes no scalars)."""

    @classmethod
    def _of(cls, fn) -> RawKernel:
        k = cls.__new__(cls)
        k._fn = fn
        return k

    def __call__(self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0, stream=None):
        _device.check_stream()
        arrays = []
        for a in args:
            if isinstance(a, _np.ndarray):
                raise TypeError(f"Unsupported type {type(a)}: a kernel argument must be a CuPy array")
            if not isinstance(a, ndarray):
                raise NotImplementedError(f"fake cupy: kernel argument of type {type(a)}; only arrays are passed")
            arrays.append(a._a)
        grid, block = tuple(grid), tuple(block)
        cap = _device.capturing()
        if cap is not None:
            cap.thunks.append(lambda: self._fn(grid, block, tuple(arrays)))
            cap.uses(a._mem for a in args)
        else:
            self._fn(grid, block, tuple(arrays))


# NVRTC options the fake knows NVRTC accepts; anything else may be a typo that only a GPU run would reveal
_NVRTC_OPTIONS = ("--std=c++11", "--std=c++14", "--std=c++17", "--std=c++20", "--fmad=false", "--fmad=true",
                  "--use_fast_math", "-lineinfo", "--device-debug", "-G")


def _check_options(options) -> None:
    for opt in options:
        if opt not in _NVRTC_OPTIONS and not opt.startswith(("-arch=", "--gpu-architecture=", "-D", "-I",
                                                               "--maxrregcount=")):
            raise ValueError(f"fake cupy: NVRTC option {opt!r} is not one it knows NVRTC accepts")


def __getattr__(name: str):
    attr = getattr(_np, name)
    if isinstance(attr, types.ModuleType):  # numpy.random, numpy.linalg...: not CuPy's; submodules import
        raise AttributeError(f"fake cupy has no {name!r}")
    if isinstance(attr, _np.ufunc):
        return _Ufunc(attr)
    if isinstance(attr, (type, _np.dtype)) or not callable(attr):
        return attr
    return _function(name, attr)


from cupy import cuda, lib, random  # noqa: E402  (submodules use the array type above)

__all__ = ["ndarray", "asarray", "asnumpy", "empty", "empty_like", "RawModule", "RawKernel", "cuda", "lib", "random"]
