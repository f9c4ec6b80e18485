"""``Module`` and ``Parameter``: PyTorch's container for layers, weights and buffers.

A Module registers what is assigned to it: a ``Parameter`` becomes a parameter, a ``Module`` a child, and
``register_buffer`` adds non-learned state (running statistics, loss weights). Registered values are also kept
in the instance ``__dict__``, so ``self.weight`` is a plain attribute read (no ``__getattr__`` on the hot path).

    >>> import eager
    >>> from eager import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(3, 2)
    ...     def forward(self, x):
    ...         return self.fc(x)
    >>> [name for name, _ in Net().named_parameters()]
    ['fc.weight', 'fc.bias']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from eager import backend
from eager.autograd.mode import no_grad
from eager.dispatch import OpError
from eager.primitives import ShapeError
from eager.tensor import Tensor


class Parameter(Tensor):
    """A leaf Tensor that a Module registers as learnable (``requires_grad=True`` by default).

        >>> import eager
        >>> p = Parameter(eager.zeros(2))
        >>> p.requires_grad, p.is_leaf
        (True, True)
    """

    __slots__ = ()

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            from eager.creation import empty
            data = empty(0)
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter: expected a Tensor, got {type(data).__name__}; wrap it with eager.tensor().")
        super().__init__(data._data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(RuntimeError):
    """``load_state_dict`` found missing, unexpected or mis-shaped keys; the message lists them all."""


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def _shape(t) -> list[int]:
    return list(getattr(t, "shape", ()))


def _add_indent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    return lines[0] if len(lines) == 1 else lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class Module:
    """Base class of every layer and model: subclass it, assign layers in ``__init__``, write ``forward``."""

    training: bool

    def __init__(self) -> None:
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = {}
        d["_buffers"] = {}
        d["_non_persistent"] = set()
        d["_modules"] = {}

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define forward(self, ...) in the "
                                  "subclass.")

    def __call__(self, *args, **kwargs):
        try:
            return self.forward(*args, **kwargs)
        except (ShapeError, OpError) as e:
            _annotate(e, self)
            raise

    # ------------------------------------------------------------ registration
    def _store(self, kind: str, name: str, value) -> None:
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"cannot assign {kind} '{name}' before Module.__init__() is called; call "
                                 "super().__init__() first in your __init__.")
        for other in ("_parameters", "_buffers", "_modules"):
            if other != kind:  # reassigning within the same kind keeps its place (state_dict order)
                d[other].pop(name, None)
        d[kind][name] = value
        d[name] = value

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if isinstance(value, Parameter):
            self._store("_parameters", name, value)
        elif isinstance(value, Module):
            self._store("_modules", name, value)
        elif name in d.get("_parameters", ()):
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter '{name}' of "
                                f"{type(self).__name__}: use nn.Parameter(tensor) or None.")
            self._store("_parameters", name, None)
        elif name in d.get("_modules", ()):
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module '{name}' of "
                                f"{type(self).__name__}: use a Module or None.")
            self._store("_modules", name, None)
        elif name in d.get("_buffers", ()):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer '{name}' of "
                                f"{type(self).__name__}: use a Tensor or None.")
            self._store("_buffers", name, value)
        else:
            object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for kind in ("_parameters", "_buffers", "_modules"):
            d.get(kind, {}).pop(name, None)
        d.get("_non_persistent", set()).discard(name)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter('{name}'): expected a Parameter or None, got "
                            f"{type(param).__name__}; wrap the tensor with nn.Parameter(...).")
        self._store("_parameters", name, param)

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register non-learned state saved in ``state_dict`` (unless ``persistent=False``) and moved by ``to``."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer('{name}'): expected a Tensor or None, got {type(tensor).__name__}.")
        self._store("_buffers", name, tensor)
        (self._non_persistent.discard if persistent else self._non_persistent.add)(name)

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module('{name}'): {type(module).__name__} is not a Module.")
        self._store("_modules", name, module)

    register_module = add_module

    # ------------------------------------------------------------ traversal
    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        memo = set() if memo is None else memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, kind: str, prefix: str, recurse: bool, remove_duplicate: bool = True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, kind).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, each shared parameter once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> Module:
        mod = self
        for part in target.split(".") if target else []:
            child = mod._modules.get(part)
            if child is None:
                raise AttributeError(f"get_submodule('{target}'): {type(mod).__name__} has no child '{part}' "
                                     f"(children: {list(mod._modules)}).")
            mod = child
        return mod

    def apply(self, fn: Callable[[Module], None]) -> Module:
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------ modes and gradients
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad`` (to None, or to zeros with ``set_to_none=False``)."""
        for p in self.parameters():
            if p._grad is not None:
                if set_to_none:
                    p._grad = None
                else:
                    with no_grad():
                        p._grad = p._grad.detach().zero_()

    # ------------------------------------------------------------ devices and dtypes
    def to(self, *args, **kwargs) -> Module:
        """Move (and for floating point, cast) every parameter, gradient and buffer in place.

            >>> import eager
            >>> from eager import nn
            >>> nn.Linear(2, 2).to(eager.float64).weight.dtype
            dtype('float64')
        """
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"Module.to: unexpected arguments {sorted(kwargs)}; use to(device), to(dtype) or both.")
        for arg in args:
            if isinstance(arg, Tensor):
                device, dtype = arg.device, arg.dtype
            elif isinstance(arg, str):
                device = arg
            else:
                dtype = arg
        device = None if device is None else backend.canonical_device(device)
        dtype = backend.canonical_dtype(dtype)
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to only accepts floating point dtypes, got {dtype}.")

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        with no_grad():
            for t in list(self.parameters()) + list(self.buffers()):
                new = move(t.detach())
                if new._data is not t._data:
                    t.data = new
                if t._grad is not None:
                    t._grad = move(t._grad)
        return self

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    def float(self) -> Module:
        return self.to(backend.float32)

    def double(self) -> Module:
        return self.to(backend.float64)

    # ------------------------------------------------------------ state
    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> dict[str, Tensor]:
        """Parameters and persistent buffers by dotted name, detached: they share memory with the module, so
        later training shows in a state_dict already taken (as in PyTorch; ``deepcopy`` it to keep a snapshot).
        """
        out: dict[str, Tensor] = {}
        for mod_prefix, mod in self.named_modules(prefix=prefix):
            head = f"{mod_prefix}." if mod_prefix else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    out[head + name] = p if keep_vars else p.detach()
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    out[head + name] = b if keep_vars else b.detach()
        return out

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values into the parameters and buffers (in place; they keep their identity).

        Every problem is reported at once: missing keys, unexpected keys (both only when ``strict``) and
        shape mismatches (always), each with its shapes.
        """
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [k for k in own if k in state_dict and _shape(state_dict[k]) != _shape(own[k])]
        problems = []
        if strict and missing:
            problems.append("Missing key(s) in state_dict: " +
                            ", ".join(f'"{k}" (expected shape {_shape(own[k])})' for k in missing) + ".")
        if strict and unexpected:
            problems.append("Unexpected key(s) in state_dict: " +
                            ", ".join(f'"{k}" (shape {_shape(state_dict[k])})' for k in unexpected) + ".")
        for k in mismatched:
            problems.append(f"size mismatch for {k}: copying a param with shape {_shape(state_dict[k])} from "
                            f"checkpoint, the shape in current model is {_shape(own[k])}.")
        if problems:
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" +
                                 "\n\t".join(problems) + "\nCheck that the checkpoint was saved from the same "
                                 "architecture, or pass strict=False to skip missing/unexpected keys.")
        with no_grad():
            for k, target in own.items():
                if k in state_dict:
                    value = state_dict[k]
                    if not isinstance(value, Tensor):
                        from eager.creation import tensor
                        value = tensor(value)
                    target.copy_(value)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _add_indent(repr(m), 2) for name, m in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if lines:
            body = extra_lines[0] if len(extra_lines) == 1 and not child_lines else \
                "\n  " + "\n  ".join(lines) + "\n"
        return f"{self._get_name()}({body})"


def _annotate(error: Exception, module: Module) -> None:
    """Append the module path where a shape/op error was raised (``DynamicNet.layers.1 = Linear(...)``).

    Each Module.__call__ on the way out rewrites the note, so the outermost call leaves the full path.
    """
    chain = error.__dict__.setdefault("_graphduel_modules", [])
    if not chain:
        error.__dict__["_graphduel_message"] = str(error)
    chain.append(module)
    parts = [type(chain[-1]).__name__]
    for outer, inner in zip(reversed(chain), list(reversed(chain))[1:]):
        name = next((n for n, m in outer.named_modules() if m is inner), None)
        parts.append(name if name else f"<{type(inner).__name__}>")
    inner = chain[0]
    where = ".".join(parts)
    error.args = (f"{error.__dict__['_graphduel_message']}\n  (raised in module {where}: "
                  f"{_add_indent(repr(inner), 4) if not inner._modules else type(inner).__name__})",)
