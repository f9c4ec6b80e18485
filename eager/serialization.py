"""``eager.save`` / ``eager.load``: tensors, state dicts and optimizer state in a file that cannot run code.

Why not pickle (``torch.save``'s format): unpickling calls whatever the file names, and a restricted unpickler is a
list of allowed callables that must stay right forever. This format has nothing to restrict: a zip archive holding

- ``graphduel.json``: ``{"format": "graphduel.checkpoint", "version": 1, "object": VALUE}``, where VALUE is a JSON
  number, string, boolean or null, or one-key objects: ``{"tensor": i}`` (``"requires_grad"``, ``"parameter"``
  beside it when set), ``{"ndarray": i}``, ``{"float": "inf" | "-inf" | "nan"}``, ``{"list": [...]}``,
  ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}`` (keys of any of these kinds: ints stay ints);
- ``arrays/<i>.npy``: the arrays, read with ``numpy.load(allow_pickle=False)`` (no object arrays).

Loading builds only those values (as ``tracer/serialization.py`` does for graphs); anything else, a pickle (a
``torch.save`` file) included, raises ``LoadError`` saying what it found. A tensor saved twice is stored once and
loads as one tensor; views are saved as their own values (unlike ``torch.save``, storage sharing between different
tensors is not kept).

    >>> import eager, io
    >>> buf = io.BytesIO()
    >>> eager.save({"w": eager.ones(2), "step": 3}, buf)
    >>> _ = buf.seek(0)
    >>> eager.load(buf)["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from typing import Any

import numpy as np

from eager import backend
from eager.tensor import Tensor

FORMAT, VERSION = "graphduel.checkpoint", 1
_INDEX = "graphduel.json"


class LoadError(ValueError):
    """``eager.load`` was given something that is not a graphduel checkpoint (or a corrupt one); nothing ran."""


class _Writer:
    def __init__(self):
        self.arrays: list[np.ndarray] = []
        self.seen: dict[int, int] = {}  # id(tensor or array) -> index: one tensor saved twice is stored once

    def array(self, obj, data) -> int:
        if id(obj) not in self.seen:
            self.seen[id(obj)] = len(self.arrays)
            self.arrays.append(np.asarray(backend.to_numpy(data), order="C"))  # (ascontiguousarray makes 0-d 1-d)
        return self.seen[id(obj)]

    def encode(self, obj, where: str) -> Any:
        from eager.nn.module import Parameter
        if isinstance(obj, Tensor):
            out: dict[str, Any] = {"tensor": self.array(obj, obj._data)}
            if obj.requires_grad:
                out["requires_grad"] = True
            if isinstance(obj, Parameter):
                out["parameter"] = True
            return out
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in "biuf":
                raise TypeError(f"save: {where} is a NumPy array of dtype {obj.dtype}; only numbers and bools are "
                                "saved.")
            return {"ndarray": self.array(obj, obj)}
        if isinstance(obj, np.generic):
            obj = obj.item()
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"float": repr(obj)}
        if isinstance(obj, (list, tuple)) and (type(obj) in (list, tuple) or hasattr(obj, "_fields")):
            tag = "list" if isinstance(obj, list) else "tuple"
            return {tag: [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            return {"dict": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
        raise TypeError(f"save: {where} is a {type(obj).__name__}; a checkpoint holds tensors, NumPy arrays, numbers, "
                        "strings, None and lists, tuples and dicts of them (no Python objects: save their "
                        "state_dict()).")


def save(obj, f) -> None:
    """``torch.save``: write ``obj`` (a tensor, a state dict, an optimizer's state dict, or lists, tuples and dicts
    of tensors, arrays, numbers and strings) to ``f``, a path or a binary file object."""
    writer = _Writer()
    doc = {"format": FORMAT, "version": VERSION, "object": writer.encode(obj, "the object")}
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_INDEX, json.dumps(doc))
        for i, arr in enumerate(writer.arrays):
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            zf.writestr(f"arrays/{i}.npy", buf.getvalue())


class _Reader:
    def __init__(self, zf: zipfile.ZipFile, device, name: str):
        self.zf, self.device, self.name = zf, device, name
        self.tensors: dict[int, Tensor] = {}

    def array(self, i) -> np.ndarray:
        if not isinstance(i, int) or isinstance(i, bool):
            raise LoadError(f"load: {self.name} is corrupt: array index {i!r} is not an int")
        try:
            with self.zf.open(f"arrays/{i}.npy") as fh:
                return np.load(io.BytesIO(fh.read()), allow_pickle=False)
        except KeyError:
            raise LoadError(f"load: {self.name} is corrupt: arrays/{i}.npy is missing") from None
        except ValueError as e:  # an object array: np.load refuses to unpickle it
            raise LoadError(f"load: {self.name}: arrays/{i}.npy is not a plain numeric array ({e})") from None

    def decode(self, obj) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, list):
            raise LoadError(f"load: {self.name} is corrupt: a bare JSON list (lists are {{\"list\": [...]}})")
        if not isinstance(obj, dict) or not obj:
            raise LoadError(f"load: {self.name} is corrupt: unexpected value {obj!r:.60}")
        tag = next(iter(obj))
        body = obj[tag]
        if tag == "tensor":
            return self.tensor(body, obj)
        if tag == "ndarray" and len(obj) == 1:
            return self.array(body)
        if tag == "float" and len(obj) == 1 and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag in ("list", "tuple") and len(obj) == 1 and isinstance(body, list):
            items = [self.decode(v) for v in body]
            return items if tag == "list" else tuple(items)
        if tag == "dict" and len(obj) == 1 and isinstance(body, list) and all(
                isinstance(p, list) and len(p) == 2 for p in body):
            return {_hashable(self.decode(k), self.name): self.decode(v) for k, v in body}
        raise LoadError(f"load: {self.name} holds {json.dumps(obj)[:80]}, which is no value of the checkpoint format "
                        "(tensor, ndarray, float, list, tuple, dict); nothing in it was run.")

    def tensor(self, i, obj: dict) -> Tensor:
        from eager.nn.module import Parameter
        if set(obj) - {"tensor", "requires_grad", "parameter"}:
            raise LoadError(f"load: {self.name} is corrupt: unknown tensor fields {sorted(set(obj) - {'tensor'})}")
        if i not in self.tensors:
            data = backend.to_device(self.array(i), self.device)
            grad = bool(obj.get("requires_grad", False))
            t = Tensor(data, requires_grad=grad)
            self.tensors[i] = Parameter(t, requires_grad=grad) if obj.get("parameter") else t
        return self.tensors[i]


def _hashable(key, name: str):
    try:
        hash(key)
    except TypeError:
        raise LoadError(f"load: {name} is corrupt: a dict key {key!r:.60} is not hashable") from None
    return key


def _describe(head: bytes) -> str:
    if head[:1] == b"\x80":
        return "a pickle (torch.save's legacy format)"
    if head[:2] == b"PK":
        return "a zip archive without graphduel.json (torch.save's format is a zip around a pickle)"
    return f"a file starting with {head[:8]!r}"


def load(f, map_location=None, weights_only: bool | None = True):
    """``torch.load`` for files written by ``eager.save``: returns the saved object, its tensors on
    ``map_location`` (a device name, ``eager.Device``, or None for the CPU). It never unpickles: a pickle (as
    ``torch.save`` writes) or any other file is a ``LoadError``, as PyTorch's ``weights_only=True`` refuses code.
    Convert a PyTorch checkpoint with ``eager.save({k: v.numpy() for k, v in torch.load(p).items()}, q)``."""
    if weights_only is False:
        raise ValueError("load: weights_only=False is not supported: eager.load never unpickles (files hold only "
                         "tensors, numbers, strings and containers, so there is nothing unsafe to allow).")
    if map_location is not None and not isinstance(map_location, (str, backend.Device)):
        raise TypeError(f"load: map_location must be a device ('cpu', 'cuda', an eager.Device) or None, got "
                        f"{type(map_location).__name__} (dicts and functions are not supported).")
    device = backend.canonical_device(map_location)
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else "the file"
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as fh:
            head = fh.read(8)
    else:
        pos = f.tell()
        head = f.read(8)
        f.seek(pos)
    try:
        zf = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        raise LoadError(f"load: {name} is not a graphduel checkpoint: it is {_describe(head)}. eager.load reads only "
                        "files written by eager.save and never unpickles (that would run code).") from None
    with zf:
        try:
            doc = json.loads(zf.read(_INDEX))
        except KeyError:
            raise LoadError(f"load: {name} is not a graphduel checkpoint: it is {_describe(head)}. eager.load never "
                            "unpickles (that would run code).") from None
        except json.JSONDecodeError as e:
            raise LoadError(f"load: {name} is corrupt: {_INDEX} is not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or "object" not in doc:
            raise LoadError(f"load: {name} is not a graphduel checkpoint ({_INDEX} has no format {FORMAT!r}).")
        if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
            raise LoadError(f"load: {name} has checkpoint version {doc.get('version')!r}; this graphduel reads up to "
                            f"version {VERSION}. Upgrade graphduel.")
        return _Reader(zf, device, name).decode(doc["object"])
