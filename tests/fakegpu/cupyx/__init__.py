"""``cupyx`` of the fake CuPy: ``scatter_add`` (repeated indices accumulate)."""

from __future__ import annotations

import numpy as _np
from cupy import _apply


def scatter_add(a, slices, value) -> None:
    _apply(_np.add.at, (a, slices, value), {}, writes=True)
