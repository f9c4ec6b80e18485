"""Conversions: a Python value read out of a tensor and returned by the traced function.

When the function returns ``float(t)``, ``t.item()`` or ``t.tolist()``, the graph outputs the tensor and each
call converts the output array back with the same conversion, so the value is recomputed, not frozen. This
table is the one list of those conversions: the tracer records them (``tracer.build``), a call applies them
(``tracer.traced``), a saved graph names them and loading accepts only these (``tracer.serialization``).

    >>> import numpy as np
    >>> convert(np.array([2.5], np.float32), "float"), convert(np.array([[1, 2]]), "tolist")
    (2.5, [[1, 2]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eager.backend import to_numpy


def _scalar(to: Callable) -> Callable:
    return lambda value: to(value.reshape(()).item())


# conversion name (the escape kind that produced it) -> host array -> Python value
CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "item": _scalar(lambda v: v),
    "float": _scalar(float),
    "int": _scalar(int),
    "bool": _scalar(bool),
    "tolist": lambda value: value.tolist(),
}


def convert(array, kind: str):
    """The Python value conversion ``kind`` makes of ``array`` (on any device)."""
    return CONVERSIONS[kind](to_numpy(array))


def conversion_for(value) -> str:
    """The conversion that gives back a Python value of ``value``'s type (``tolist`` for a list)."""
    return "tolist" if type(value) is list else type(value).__name__
