"""Tensor: an array (NumPy or CuPy) plus the autograd attributes PyTorch users know.

Operators and methods only forward to ``eager.ops`` (which forwards to ``apply``); the class itself owns
storage, autograd bookkeeping (grad, grad_fn, hooks, version counter) and conversions.

A tensor owns its array or is a view of a base tensor's memory (``eager.storage``): in-place ops (``add_``,
``x[i] = v``, optimizer updates) write that memory, so the base and every view see them, and bump the storage's
version counter, which backward checks for the tensors a VJP reads (as PyTorch does).

    >>> import eager
    >>> w = eager.tensor([1.0], requires_grad=True)
    >>> y = (w * 3).sum()
    >>> y.grad_fn
    <SumBackward>
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np

from eager import backend
from eager.autograd.mode import MODE
from eager.storage import Version


class Tensor:
    __slots__ = ("_data", "_requires_grad", "_grad", "grad_fn", "_vc", "_hooks", "_retains_grad", "_base",
                 "_view_ops", "_view_version", "__weakref__")
    __array_priority__ = 1000  # numpy_scalar * tensor -> Tensor.__rmul__, not an object array

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data._data
        self._data = data
        self._requires_grad = False
        self._grad = None
        self.grad_fn = None
        self._vc = Version()
        self._hooks = None
        self._retains_grad = False
        self._base = None
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data, requires_grad, grad_fn):
        t = object.__new__(Tensor)
        t._data = data
        t._requires_grad = requires_grad
        t._grad = None
        t.grad_fn = grad_fn
        t._vc = Version()
        t._hooks = None
        t._retains_grad = False
        t._base = None
        return t

    @property
    def _version(self) -> int:
        """The version of this tensor's storage: bumped by every in-place write to it or to a view of it."""
        return self._vc.value

    @_version.setter
    def _version(self, value: int) -> None:
        self._vc.value = value

    # ------------------------------------------------------------ metadata
    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def device(self) -> backend.Device:
        return backend.device_of(self._data)

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def dim(self) -> int:
        return self._data.ndim

    def size(self, dim: int | None = None):
        return self._data.shape if dim is None else self._data.shape[dim]

    def numel(self) -> int:
        return int(self._data.size)

    def _xp(self):
        return backend.namespace_of(self._data)

    @property
    def is_cuda(self) -> bool:
        return self.device == backend.CUDA

    def is_floating_point(self) -> bool:
        return self._data.dtype.kind == "f"

    # ------------------------------------------------------------ autograd attributes
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self._data.dtype.kind != "f":
            raise TypeError(f"requires_grad: only floating-point tensors can require gradients, this one is "
                            f"{backend.short_name(self.dtype)}{list(self.shape)}; convert it first with "
                            ".float() (or create it with dtype=eager.float32).")
        if not requires_grad and self.grad_fn is not None:
            raise RuntimeError("requires_grad_(False): you can only change requires_grad of leaf tensors; "
                               "use .detach() to get a tensor that does not require grad.")
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def grad(self) -> Tensor | None:
        if self.grad_fn is not None and not self._retains_grad:
            warnings.warn("The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its "
                          ".grad will not be populated during backward(). Call .retain_grad() on it before "
                          "backward() if you want its gradient, or read the gradient of a leaf instead.",
                          UserWarning, stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if value is not None and value.shape != self.shape:
            raise ValueError(f"grad: assigned gradient of shape {list(value.shape)} to a tensor of shape "
                             f"{list(self.shape)}; they must match.")
        self._grad = value

    @property
    def data(self) -> Tensor:
        """This tensor's memory without autograd history: in-place writes to it are seen here (``p.data.mul_(0.5)``).

        Unlike PyTorch, ``.data`` shares the version counter: a tensor that backward saved and that was changed
        through ``.data`` makes backward raise instead of silently using the new values.
        """
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        # rebinding gives this tensor new memory (views taken before keep the old one, as in PyTorch)
        self._data = value._data if isinstance(value, Tensor) else value
        self._base = None
        self._vc = Version(self._vc.value + 1)

    def retain_grad(self) -> None:
        """Keep ``.grad`` of this non-leaf tensor after backward."""
        if self.grad_fn is None:
            return
        if self._retains_grad:
            return
        self._retains_grad = True
        ref = weakref.ref(self)

        def keep(g):
            t = ref()
            if t is not None:  # its own copy: the gradient flows on, and a leaf's .grad may accumulate into it
                t._grad = _ops.clone(g) if t._grad is None else t._grad + g
        keep.retains_grad = True  # runs after every hook, as in PyTorch (register_hook inserts before it)
        self.grad_fn.register_prehook(keep)

    def register_hook(self, hook) -> _HookHandle:
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned tensor replaces it."""
        if not self._requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that does not require grad.")
        if self.grad_fn is None:
            if self._hooks is None:
                self._hooks = []
            self._hooks.append(hook)
            return _HookHandle(self._hooks, hook)
        self.grad_fn.register_prehook(hook)
        hooks = self.grad_fn.pre_hooks
        for i, h in enumerate(hooks):  # keep retain_grad's hook last, so .grad holds the hooked gradient
            if getattr(h, "retains_grad", False):
                hooks.insert(i, hooks.pop())
                break
        return _HookHandle(hooks, hook)

    def backward(self, gradient: Tensor | None = None, retain_graph: bool | None = None,
                 create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        from eager.autograd.functional import backward
        backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph)

    def detach(self) -> Tensor:
        return _ops.detach(self)

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self._requires_grad = False
        return self

    # ------------------------------------------------------------ conversions (values leave the graph)
    def _escape(self, kind: str, value):
        for recorder in MODE.get().recorders:
            recorder.escape(self, kind, value)
        return value

    def numpy(self) -> np.ndarray:
        if self._requires_grad:
            raise RuntimeError("numpy(): can't call numpy() on a tensor that requires grad; use "
                               "tensor.detach().numpy().")
        return self._escape("numpy", backend.to_numpy(self._data))

    def __array__(self, dtype=None, copy=None):
        arr = backend.to_numpy(self._data)
        return self._escape("numpy", arr if dtype is None else arr.astype(dtype))

    def item(self):
        if self._data.size != 1:
            raise ValueError(f"item: only one-element tensors can be converted to Python scalars; this "
                             f"tensor has shape {list(self.shape)}. Index or reduce it first.")
        return self._escape("item", backend.to_numpy(self._data).reshape(()).item())

    def tolist(self):
        return self._escape("tolist", backend.to_numpy(self._data).tolist())

    def __bool__(self) -> bool:
        if self._data.size != 1:
            raise ValueError(f"bool: the truth value of a tensor with {self._data.size} elements (shape "
                             f"{list(self.shape)}) is ambiguous; use .any() or .all().")
        return self._escape("bool", bool(backend.to_numpy(self._data).reshape(())))

    def __float__(self) -> float:
        return self._escape("float", float(self.item()))

    def __int__(self) -> int:
        return self._escape("int", int(self.item()))

    def __index__(self) -> int:
        if self._data.dtype.kind not in "iu":
            raise TypeError(f"only integer tensors can be used as an index, got {self.dtype}")
        return self._escape("int", int(self.item()))

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def to(self, *args, **kwargs) -> Tensor:
        """``to(device)``, ``to(dtype)`` or ``to(device, dtype)``, as in PyTorch."""
        return _ops.to(self, *args, **kwargs)

    def cpu(self) -> Tensor:
        return _ops.to(self, "cpu")

    def cuda(self) -> Tensor:
        return _ops.to(self, "cuda")

    def float(self) -> Tensor:
        return _ops.to(self, backend.float32)

    def double(self) -> Tensor:
        return _ops.to(self, backend.float64)

    def long(self) -> Tensor:
        return _ops.to(self, backend.int64)

    def int(self) -> Tensor:
        return _ops.to(self, backend.int32)

    def bool(self) -> Tensor:
        return _ops.to(self, backend.bool_)

    def type_as(self, other: Tensor) -> Tensor:
        return _ops.to(self, other.dtype)

    def __repr__(self) -> str:
        arr = backend.to_numpy(self._data)
        body = np.array2string(arr, separator=", ", precision=4, prefix="tensor(")
        extras = []
        if arr.dtype not in (backend.float32, backend.int64, backend.bool_):
            extras.append(f"dtype=eager.{arr.dtype}")
        if self.device != backend.CPU:
            extras.append(f"device='{self.device}'")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self._requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    def __format__(self, spec: str) -> str:
        if self._data.ndim == 0 and spec:
            return format(self.item(), spec)
        return repr(self)

    __hash__ = object.__hash__

    # ------------------------------------------------------------ operators
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __pow__(self, other): return _ops.pow(self, other)
    def __rpow__(self, other): return _ops.pow(other, self)
    def __floordiv__(self, other): return _ops.floor_divide(self, other)
    def __rfloordiv__(self, other): return _ops.floor_divide(other, self)
    def __mod__(self, other): return _ops.remainder(self, other)
    def __rmod__(self, other): return _ops.remainder(other, self)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __neg__(self): return _ops.neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops.abs(self)
    # bitwise on integer tensors, logical on bool ones (as in PyTorch)
    def __invert__(self): return _ops.invert(self)
    def __and__(self, other): return _ops.bitwise_and(self, other)
    def __rand__(self, other): return _ops.bitwise_and(other, self)
    def __or__(self, other): return _ops.bitwise_or(self, other)
    def __ror__(self, other): return _ops.bitwise_or(other, self)
    def __xor__(self, other): return _ops.bitwise_xor(self, other)
    def __rxor__(self, other): return _ops.bitwise_xor(other, self)
    def __lt__(self, other): return _ops.lt(self, other)
    def __le__(self, other): return _ops.le(self, other)
    def __gt__(self, other): return _ops.gt(self, other)
    def __ge__(self, other): return _ops.ge(self, other)
    def __eq__(self, other): return _ops.eq(self, other)  # noqa: E704
    def __ne__(self, other): return _ops.ne(self, other)
    def __getitem__(self, key): return _ops.getitem(self, key)
    def __setitem__(self, key, value): _ops.setitem(self, key, value)

    # in place: compute out of place, then rebind (see module docstring)
    def __iadd__(self, other): return _ops.inplace(self, _ops.add, other)
    def __isub__(self, other): return _ops.inplace(self, _ops.sub, other)
    def __imul__(self, other): return _ops.inplace(self, _ops.mul, other)
    def __itruediv__(self, other): return _ops.inplace(self, _ops.div, other)
    def __ifloordiv__(self, other): return _ops.inplace(self, _ops.floor_divide, other)
    def __imod__(self, other): return _ops.inplace(self, _ops.remainder, other)
    def __iand__(self, other): return _ops.inplace(self, _ops.bitwise_and, other)
    def __ior__(self, other): return _ops.inplace(self, _ops.bitwise_or, other)
    def __ixor__(self, other): return _ops.inplace(self, _ops.bitwise_xor, other)

    def add_(self, other, alpha=1):
        return _ops.add_scaled_(self, other, alpha)

    def sub_(self, other, alpha=1):
        return _ops.inplace(self, _ops.sub, other if alpha == 1 else other * alpha)

    def mul_(self, other): return _ops.inplace(self, _ops.mul, other)
    def div_(self, other, *, rounding_mode=None):
        return _ops.inplace(self, lambda x, o: _ops.divide(x, o, rounding_mode=rounding_mode), other)

    def floor_divide_(self, other): return _ops.inplace(self, _ops.floor_divide, other)
    def floor_(self): return _ops.inplace(self, _ops.floor)
    def ceil_(self): return _ops.inplace(self, _ops.ceil)
    def trunc_(self): return _ops.inplace(self, _ops.trunc)
    def round_(self): return _ops.inplace(self, _ops.round)
    def remainder_(self, other): return _ops.inplace(self, _ops.remainder, other)
    def tril_(self, diagonal=0): return _ops.inplace(self, _ops.tril, diagonal)
    def triu_(self, diagonal=0): return _ops.inplace(self, _ops.triu, diagonal)
    def cumsum_(self, dim): return _ops.inplace(self, _ops.cumsum, dim)
    def cumprod_(self, dim): return _ops.inplace(self, _ops.cumprod, dim)
    def clamp_(self, min=None, max=None): return _ops.inplace(self, _ops.clamp, min, max)
    def copy_(self, src): return _ops.inplace(self, _ops.copy_from, src)
    def zero_(self): return _ops.inplace(self, _ops.full_like, 0)
    def fill_(self, value): return _ops.inplace(self, _ops.full_like, value)
    def masked_fill_(self, mask, value): return _ops.inplace(self, lambda x, v: _ops.where(mask, v, x), value)

    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Tensor:
        """Fill with N(mean, std^2) draws from the default generator, in place (a trace records the draw)."""
        from eager.creation import randn
        return self.copy_(randn(*self.shape, dtype=self.dtype, device=self.device) * std + mean)

    def uniform_(self, a: float = 0.0, b: float = 1.0) -> Tensor:
        """Fill with U(a, b) draws from the default generator, in place."""
        from eager.creation import rand
        return self.copy_(rand(*self.shape, dtype=self.dtype, device=self.device) * (b - a) + a)
    def bitwise_and_(self, other): return _ops.inplace(self, _ops.bitwise_and, other)
    def bitwise_or_(self, other): return _ops.inplace(self, _ops.bitwise_or, other)
    def bitwise_xor_(self, other): return _ops.inplace(self, _ops.bitwise_xor, other)
    def bitwise_not_(self): return _ops.inplace(self, _ops.bitwise_not)

    # ------------------------------------------------------------ methods (all forward to eager.ops)
    # exp, log, erf, ... and their in-place forms (exp_, ...) come from the op table: see _add_table_methods
    def rsqrt(self): return _ops.rsqrt(self)
    def relu(self): return _ops.relu(self)
    def square(self): return _ops.mul(self, self)
    def reciprocal(self): return _ops.div(1.0, self)
    def pow(self, exponent): return _ops.pow(self, exponent)
    def clamp(self, min=None, max=None): return _ops.clamp(self, min, max)
    clip = clamp
    def maximum(self, other): return _ops.maximum(self, other)
    def minimum(self, other): return _ops.minimum(self, other)
    def where(self, condition, other): return _ops.where(condition, self, other)
    def clone(self): return _ops.clone(self)
    def contiguous(self): return self
    def add(self, other): return _ops.add(self, other)
    def sub(self, other): return _ops.sub(self, other)
    def mul(self, other): return _ops.mul(self, other)
    def div(self, other, *, rounding_mode=None): return _ops.divide(self, other, rounding_mode=rounding_mode)
    divide = div
    def true_divide(self, other): return _ops.div(self, other)
    def floor_divide(self, other): return _ops.floor_divide(self, other)
    def floor(self): return _ops.floor(self)
    def ceil(self): return _ops.ceil(self)
    def trunc(self): return _ops.trunc(self)
    def round(self): return _ops.round(self)
    def remainder(self, other): return _ops.remainder(self, other)
    def matmul(self, other): return _ops.matmul(self, other)
    def mm(self, other): return _ops.matmul(self, other)
    def bmm(self, other): return _ops.bmm(self, other)
    def outer(self, other): return _ops.outer(self, other)
    def tril(self, diagonal=0): return _ops.tril(self, diagonal)
    def triu(self, diagonal=0): return _ops.triu(self, diagonal)
    def cumsum(self, dim, dtype=None): return _ops.cumsum(self, dim, dtype)
    def cumprod(self, dim, dtype=None): return _ops.cumprod(self, dim, dtype)

    def sort(self, dim=-1, descending=False, stable=False):
        return _ops.sort(self, dim, descending, stable)

    def argsort(self, dim=-1, descending=False, stable=False):
        return _ops.argsort(self, dim, descending, stable)

    def topk(self, k, dim=-1, largest=True, sorted=True): return _ops.topk(self, k, dim, largest, sorted)
    def repeat(self, *sizes): return _ops.repeat(self, *sizes)
    def flip(self, *dims): return _ops.flip(self, dims[0] if len(dims) == 1 else dims)
    def fliplr(self): return _ops.fliplr(self)
    def flipud(self): return _ops.flipud(self)
    def roll(self, shifts, dims=None): return _ops.roll(self, shifts, dims)
    def unbind(self, dim=0): return _ops.unbind(self, dim)
    def eq(self, other): return _ops.eq(self, other)
    def ne(self, other): return _ops.ne(self, other)
    def lt(self, other): return _ops.lt(self, other)
    def le(self, other): return _ops.le(self, other)
    def gt(self, other): return _ops.gt(self, other)
    def ge(self, other): return _ops.ge(self, other)
    def logsumexp(self, dim, keepdim=False): return _ops.logsumexp(self, dim, keepdim)
    def bitwise_and(self, other): return _ops.bitwise_and(self, other)
    def bitwise_or(self, other): return _ops.bitwise_or(self, other)
    def bitwise_xor(self, other): return _ops.bitwise_xor(self, other)
    def bitwise_not(self): return _ops.bitwise_not(self)
    def logical_and(self, other): return _ops.logical_and(self, other)
    def logical_or(self, other): return _ops.logical_or(self, other)
    def logical_xor(self, other): return _ops.logical_xor(self, other)
    def logical_not(self): return _ops.logical_not(self)

    def sum(self, dim=None, keepdim=False, dtype=None): return _ops.sum(self, dim, keepdim, dtype)
    def mean(self, dim=None, keepdim=False): return _ops.mean(self, dim, keepdim)
    def max(self, dim=None, keepdim=False): return _ops.max(self, dim, keepdim)
    def min(self, dim=None, keepdim=False): return _ops.min(self, dim, keepdim)
    def amax(self, dim=None, keepdim=False): return _ops.amax(self, dim, keepdim)
    def amin(self, dim=None, keepdim=False): return _ops.amin(self, dim, keepdim)
    def argmax(self, dim=None, keepdim=False): return _ops.argmax(self, dim, keepdim)
    def argmin(self, dim=None, keepdim=False): return _ops.argmin(self, dim, keepdim)
    def all(self, dim=None, keepdim=False): return _ops.all(self, dim, keepdim)
    def any(self, dim=None, keepdim=False): return _ops.any(self, dim, keepdim)

    def var(self, dim=None, unbiased=True, keepdim=False, correction=None):
        return _ops.var(self, dim, unbiased, keepdim, correction)

    def std(self, dim=None, unbiased=True, keepdim=False, correction=None):
        return _ops.std(self, dim, unbiased, keepdim, correction)

    def norm(self, p=2, dim=None, keepdim=False): return _ops.norm(self, p, dim, keepdim)
    def softmax(self, dim): return _ops.softmax(self, dim)
    def log_softmax(self, dim): return _ops.log_softmax(self, dim)

    def reshape(self, *shape): return _ops.reshape(self, *shape)
    def view(self, *shape): return _ops.reshape(self, *shape)
    def view_as(self, other): return _ops.reshape(self, other.shape)
    def reshape_as(self, other): return _ops.reshape(self, other.shape)
    def flatten(self, start_dim=0, end_dim=-1): return _ops.flatten(self, start_dim, end_dim)
    def squeeze(self, dim=None): return _ops.squeeze(self, dim)
    def unsqueeze(self, dim): return _ops.unsqueeze(self, dim)
    def transpose(self, dim0, dim1): return _ops.transpose(self, dim0, dim1)
    def t(self): return _ops.transpose(self, 0, 1) if self.ndim == 2 else self
    def permute(self, *dims): return _ops.permute(self, *dims)
    def expand(self, *sizes): return _ops.expand(self, *sizes)
    def expand_as(self, other): return _ops.expand(self, *other.shape)
    def split(self, split_size_or_sections, dim=0): return _ops.split(self, split_size_or_sections, dim)
    def chunk(self, chunks, dim=0): return _ops.chunk(self, chunks, dim)
    def masked_fill(self, mask, value): return _ops.where(mask, value, self)
    def diagonal(self, offset=0, dim1=0, dim2=1): return _ops.diagonal(self, offset, dim1, dim2)
    def unfold(self, dimension, size, step): return _ops.unfold(self, dimension, size, step)
    def gather(self, dim, index): return _ops.gather(self, dim, index)
    def index_select(self, dim, index): return _ops.index_select(self, dim, index)
    def scatter(self, dim, index, src=None, *, value=None): return _ops.scatter(self, dim, index, src, value=value)
    def scatter_add(self, dim, index, src): return _ops.scatter_add(self, dim, index, src)

    def index_add(self, dim, index, source, *, alpha=1):
        return _ops.index_add(self, dim, index, source, alpha=alpha)

    def scatter_(self, dim, index, src=None, *, value=None):
        return _ops.inplace(self, lambda x, s: _ops.scatter(x, dim, index, s, value=value), src)

    def scatter_add_(self, dim, index, src): return _ops.inplace(self, _ops.scatter_add, dim, index, src)

    def index_add_(self, dim, index, source, *, alpha=1):
        return _ops.inplace(self, lambda x, s: _ops.index_add(x, dim, index, s, alpha=alpha), source)

    # ------------------------------------------------------------ new tensors like this one (dtype and device)
    def new_zeros(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.new_full(_ops._shape_arg(size), 0, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.new_full(_ops._shape_arg(size), 1, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.new_full(_ops._shape_arg(size), 0, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_full(self, size, fill_value, *, dtype=None, device=None, requires_grad=False) -> Tensor:
        """A tensor of ``size`` filled with ``fill_value``, with this tensor's dtype and device unless given."""
        from eager.creation import full
        return full(tuple(size), fill_value, dtype=dtype or self.dtype, device=device or self.device,
                    requires_grad=requires_grad)

    def new_tensor(self, data, *, dtype=None, device=None, requires_grad=False) -> Tensor:
        from eager.creation import tensor
        return tensor(data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def narrow(self, dim: int, start: int, length: int) -> Tensor:
        """``length`` entries of ``dim`` from ``start``: a view."""
        dim = dim % self.ndim
        return _ops.getitem(self, (slice(None),) * dim + (slice(start, start + length),))

    def select(self, dim: int, index: int) -> Tensor:
        """Entry ``index`` of ``dim``, the dim removed: a view."""
        dim = dim % self.ndim
        return _ops.getitem(self, (slice(None),) * dim + (index,))

    @property
    def T(self) -> Tensor:
        return _ops.permute(self, *reversed(range(self.ndim)))

    @property
    def mT(self) -> Tensor:
        return _ops.transpose(self, -2, -1)


class _HookHandle:
    __slots__ = ("_hooks", "_hook")

    def __init__(self, hooks, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


from eager import ops as _ops  # noqa: E402  (ops needs Tensor defined first)


def _add_table_methods() -> None:
    """``Tensor.exp`` and ``Tensor.exp_`` for every row of the op table with an ``api`` (``ops.TABLE_FUNCTIONS``)."""
    for name, fn in _ops.TABLE_FUNCTIONS.items():
        def in_place(self, fn=fn):
            return _ops.inplace(self, fn)
        in_place.__name__ = in_place.__qualname__ = f"{name}_"
        in_place.__doc__ = f"In-place ``{name}``: ``x.{name}_()`` makes x hold ``x.{name}()``."
        for attr in (name, f"{name}_"):  # a hand-written method of the same name would be silently replaced
            if attr in Tensor.__dict__:
                raise TypeError(f"Tensor.{attr} is written by hand and generated from the op table: keep one")
        setattr(Tensor, name, fn)
        setattr(Tensor, f"{name}_", in_place)


_add_table_methods()
